"""The weight average (train/ema.py): its known closed form, the codebook copied rather than
averaged, and a tokenizer run whose users (encode, stage 1b, exports) get the average."""

import math

import pytest
import torch
from conftest import TINY

from maskgit_cli import checkpoint, data, pipeline
from maskgit_cli.train.ema import WeightAverage, decay_at


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(3, 2)
        self.codebook = torch.nn.Embedding(4, 2)
        self.register_buffer("seen", torch.zeros(1))


def test_decay_ramps_up_to_the_configured_value():
    assert decay_at(0.999, 0) == pytest.approx(0.1)
    assert decay_at(0.999, 90) == pytest.approx(0.91)
    assert decay_at(0.9, 10_000) == 0.9
    assert all(decay_at(0.999, s) <= decay_at(0.999, s + 1) for s in range(2_000))


def test_a_constant_model_is_approached_by_the_product_of_the_decays():
    """avg_n = w + (w0 - w) * prod(d_0 .. d_n-1) when the live weights sit still at w."""
    torch.manual_seed(0)
    live = _Toy()
    avg = WeightAverage(live, 0.95, copied=("codebook.",))
    w0 = avg.model.body.weight.clone()
    with torch.no_grad():
        live.body.weight.add_(1.0)
        live.codebook.weight.mul_(-3)
        live.seen.fill_(7)
    for step in range(30):
        avg.update(live, step)
    left = math.prod(decay_at(0.95, s) for s in range(30))
    expected = live.body.weight + (w0 - live.body.weight) * left
    assert torch.allclose(avg.model.body.weight, expected, atol=1e-6)
    assert 0 < left < 0.2  # neither the start nor the live weights
    assert torch.equal(avg.model.codebook.weight, live.codebook.weight)  # copied, not averaged
    assert avg.model.seen.item() == 7
    assert not any(p.requires_grad for p in avg.model.parameters())


def test_tokenizer_users_get_the_weight_average(tiny_data, tmp_path):
    run = tmp_path / "run"
    pipeline.train(
        TINY,
        "tokenizer",
        tiny_data["train"],
        run,
        val=tiny_data["val"],
        device="cpu",
        overrides=["tokenizer_train.max_steps=12", "tokenizer_train.ema=0.8"],
    )
    ck = checkpoint.load(run)
    live, avg = ck["model"], ck["ema"]
    body = [k for k in live if not k.startswith("codebook.")]
    assert any(not torch.equal(live[k], avg[k]) for k in body)  # a real average, not a copy
    codes = [k for k in live if k.startswith("codebook.")]
    assert codes and all(torch.equal(live[k], avg[k]) for k in codes)
    tok, cfg, mid = checkpoint.load_tokenizer(run)
    assert all(torch.equal(v, avg[k]) for k, v in tok.state_dict().items())
    assert mid == checkpoint.model_id(avg)

    # stage 1b starts from the average: with its own average off, the encoder it keeps is the
    # stage-1 average's, the tokens keep their id, and no stale stage-1 average remains
    images, _ = data.load_folder(tiny_data["val"], cfg.data.image_size)
    x = data.normalize(images, cfg.data)
    pipeline.train(
        TINY,
        "decoder",
        tiny_data["train"],
        run,
        device="cpu",
        overrides=["decoder_train.max_steps=3"],
    )
    tuned = checkpoint.load(run)
    assert tuned["ema"] is None and checkpoint.tokens_id(tuned) == mid
    enc = [k for k in avg if k.startswith(("encoder.", "quant_conv.", "codebook."))]
    assert all(torch.equal(tuned["model"][k], avg[k]) for k in enc)
    tok1, _, mid1 = checkpoint.load_tokenizer(run)
    with torch.no_grad():
        assert mid1 == mid and torch.equal(tok1.encode(x), tok.encode(x))
