import json
import math

import numpy as np
import pytest
import torch
from conftest import FIXTURES, ROOT

from maskgit_cli import checkpoint, config, data, vqgan
from maskgit_cli.errors import CheckpointError, ConfigError

LAB = FIXTURES / "lab"


def tiny_model(**over):
    cfg = config.load(
        ROOT / "configs" / "tiny.yaml", [f"tokenizer.{k}={v}" for k, v in over.items()]
    )
    return vqgan.build(cfg), cfg


@pytest.mark.parametrize("l2", [False, True])
def test_quantizer_ids_in_range_with_shapes(l2):
    model, cfg = tiny_model(l2_codes=l2)
    x = torch.randn(3, 3, 16, 16)
    rec, ids, vq_loss, z = model(x)
    assert (
        rec.shape == x.shape and ids.shape == (3, cfg.grid, cfg.grid) and ids.dtype == torch.int64
    )
    assert ids.min() >= 0 and ids.max() < cfg.tokenizer.codebook_size
    assert torch.equal(model.encode(x), ids)
    assert vq_loss.ndim == 0 and vq_loss >= 0


def test_nearest_code_is_the_true_nearest():
    cb = vqgan.Codebook(16, 4)
    z = torch.randn(50, 4)
    brute = torch.cdist(z, cb.embedding.weight).argmin(1)
    assert torch.equal(cb.nearest(z), brute)


def test_gradients_flow_through_the_straight_through_path():
    model, _ = tiny_model()
    x = torch.randn(2, 3, 16, 16)
    rec, _, vq_loss, _ = model(x)
    (rec.abs().mean()).backward()
    # the reconstruction loss alone reaches the encoder only through the straight-through estimator
    enc_grad = sum(p.grad.abs().sum() for p in model.encoder.parameters() if p.grad is not None)
    assert enc_grad > 0
    assert (
        model.codebook.embedding.weight.grad is None
        or model.codebook.embedding.weight.grad.abs().sum() == 0
    )
    model.zero_grad()
    model(x)[2].backward()  # the codebook term moves the codes
    assert model.codebook.embedding.weight.grad.abs().sum() > 0


def test_decode_ids_matches_forward_reconstruction():
    model, _ = tiny_model()
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        rec, ids, _, _ = model(x)
        assert torch.allclose(model.decode_ids(ids), rec, atol=1e-5)


def test_lab_state_dict_keys_and_shapes_match_the_fixture():
    cfg = config.load(ROOT / "configs" / "lab.yaml")
    sd = vqgan.build(cfg).state_dict()
    ref = json.loads((LAB / "vqgan_state_dict_shapes.json").read_text())
    assert list(sorted(sd)) == list(sorted(ref))
    assert {k: list(v.shape) for k, v in sd.items()} == ref
    assert sum(v.numel() for v in sd.values()) == 70_775_299


def _lab_fill(sd: dict) -> dict:
    out = {}
    for i, k in enumerate(sorted(sd)):
        g = torch.Generator().manual_seed(i)
        shape = sd[k].shape
        if k.endswith("bias"):
            out[k] = 0.1 * torch.randn(shape, generator=g)
        elif k.endswith("gn.weight"):
            out[k] = 1 + 0.1 * torch.randn(shape, generator=g)
        elif k == "codebook.embedding.weight":
            out[k] = torch.randn(shape, generator=g)
        else:
            out[k] = torch.randn(shape, generator=g) * math.sqrt(1 / math.prod(shape[1:]))
    return out


@pytest.mark.slow
def test_lab_vqgan_reproduces_the_synthetic_weight_fixture(tmp_path):
    ref = json.loads((LAB / "vqgan_synthetic_weights_outputs.json").read_text())
    cfg = config.load(ROOT / "configs" / "lab.yaml")
    # a bare state_dict, like the course's VQGAN.pt, loads strictly with --config
    torch.save(_lab_fill(vqgan.build(cfg).state_dict()), tmp_path / "VQGAN.pt")
    model, cfg2, _ = checkpoint.load_tokenizer(tmp_path / "VQGAN.pt", cfg)
    assert tuple(ref["normalize_mean"]) == cfg2.data.mean
    paths = [FIXTURES / "cats64" / f for f in ref["files"]]
    x = data.normalize(data.load_images(paths, 64), cfg2.data)
    with torch.no_grad():
        ids = model.encode(x)
        dec = model.decode_ids(ids)
    assert (ids != torch.tensor(ref["indices"])).sum() <= 2
    assert dec.mean().item() == pytest.approx(ref["decoded_mean_std"][0], abs=1e-3)
    assert dec.std().item() == pytest.approx(ref["decoded_mean_std"][1], abs=1e-3)
    assert torch.allclose(dec[:, :, 0, :4], torch.tensor(ref["decoded_first_pixels"]), atol=1e-3)


def test_bare_state_dict_needs_a_config_and_must_fit(tmp_path):
    model, cfg = tiny_model()
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="pass --config"):
        checkpoint.load_tokenizer(tmp_path / "bare.pt")
    other = config.load(ROOT / "configs" / "tiny.yaml", ["tokenizer.codebook_size=64"])
    with pytest.raises(CheckpointError, match="do not fit.*codebook.embedding.weight"):
        checkpoint.load_tokenizer(tmp_path / "bare.pt", other)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a readable"):
        checkpoint.load_tokenizer(tmp_path / "junk.pt", cfg)


def test_fsq_codes_cover_the_grid_and_round_trip():
    from maskgit_cli.fsq import FSQ

    q = FSQ((8, 5, 5, 5))
    assert q.K == 1000
    codes = q.codes()
    assert (
        codes.shape == (1000, 4) and codes.unique(dim=0).shape[0] == 1000 and codes.abs().max() <= 1
    )
    z = (torch.randn(2, 4, 3, 3) * 2).requires_grad_()
    zq, ids, loss = q(z)
    assert loss.item() == 0 and 0 <= int(ids.min()) and int(ids.max()) < 1000
    assert torch.equal(q.lookup(ids), zq.detach())  # ids and values agree
    assert torch.equal(q.nearest(z.detach().permute(0, 2, 3, 1).reshape(-1, 4)).view(2, 3, 3), ids)
    zq.sum().backward()  # straight-through: rounding passes gradients
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_fsq_tokenizer_trains_and_needs_a_consistent_codebook_size(tiny_data, tmp_path):
    from conftest import TINY

    from maskgit_cli import pipeline

    with pytest.raises(ConfigError, match="must equal the product of tokenizer.fsq_levels"):
        config.load(TINY, ["tokenizer.fsq_levels=[4,4,4]"])  # 64 codes, but codebook_size 32
    # the bundled recipe quantizes by FSQ; the error names the way back to a learned codebook
    assert config.load("cats64").tokenizer.fsq_levels == (8, 8, 8)
    with pytest.raises(ConfigError, match=r"tokenizer.fsq_levels=\[\] for a learned codebook"):
        config.load("cats64", ["tokenizer.codebook_size=256"])
    assert config.load("cats64", ["tokenizer.fsq_levels=[]"]).tokenizer.fsq_levels == ()
    res = pipeline.train(
        TINY,
        "tokenizer",
        tiny_data["train"],
        tmp_path / "r",
        device="cpu",
        overrides=["tokenizer.fsq_levels=[4,4,2]", "tokenizer_train.max_steps=12"],
    )
    assert res.steps == 12 and 0 < res.codebook_usage <= 1 and np.isfinite(res.final_loss)
    model, cfg, _ = checkpoint.load_tokenizer(tmp_path / "r")
    assert model.codebook_size == 32 and not model.learned_codebook


def test_critic_features_end_in_its_logits_and_match_to_zero_on_the_image_itself():
    from maskgit_cli.train.decoder import feature_matching

    torch.manual_seed(0)
    disc = vqgan.PatchDiscriminator()
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    feats = disc.features(real)
    assert len(feats) == 4 and torch.equal(feats[-1], disc(real))  # 3 hidden layers, then logits
    assert feature_matching(feats, disc, real).item() == 0
    rec = (real + 0.3 * torch.randn_like(real)).requires_grad_()
    fm = feature_matching(disc.features(rec), disc, real[:2])  # only the first two have images
    assert fm.item() > 0
    fm.backward()
    assert rec.grad[:2].abs().sum() > 0 and rec.grad[2:].abs().sum() == 0


def test_a_shallower_critic_judges_smaller_patches_and_is_rebuilt_from_its_state():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    deep, shallow = vqgan.PatchDiscriminator(), vqgan.PatchDiscriminator(layers=2)
    # 64 / 2^3 = 8 -> 7x7 logits of 46-pixel patches; 64 / 2^2 = 16 -> 15x15 of 22-pixel ones
    assert deep(x).shape == (2, 1, 7, 7) and shallow(x).shape == (2, 1, 15, 15)
    assert len(shallow.features(x)) == 3  # 2 hidden layers, then the logits
    for critic in (deep, shallow, vqgan.PatchDiscriminator(channels=16, layers=1)):
        again = vqgan.PatchDiscriminator.like(critic.state_dict())
        assert (again.channels, again.layers) == (critic.channels, critic.layers)
        again.load_state_dict(critic.state_dict())
        assert torch.equal(again(x), critic(x))
    # the patch one logit sees (its norms aside, which pool over the whole image): 94 / 46 / 22 / 10
    for layers, side in ((4, 94), (3, 46), (2, 22), (1, 10)):
        critic = vqgan.PatchDiscriminator(layers=layers)
        critic.model = torch.nn.Sequential(
            *(torch.nn.Identity() if isinstance(m, torch.nn.GroupNorm) else m for m in critic.model)
        )
        img = torch.rand(1, 3, 192, 192, requires_grad=True)
        out = critic(img)
        out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
        seen = img.grad.abs().sum(dim=(0, 1)) > 0
        assert seen.any(dim=1).sum() == side and seen.any(dim=0).sum() == side


def test_a_grown_decoder_draws_what_the_old_one_drew_then_trains():
    """decoder_train.add_res_blocks: the deeper decoder starts as the same function (its new
    blocks are the identity), has more weights, and its new blocks get gradients."""
    torch.manual_seed(0)
    old, _ = tiny_model()
    for p in old.parameters():  # weights far from any init, so a copy error would show
        p.data.normal_(0, 0.2)
    new, cfg = tiny_model(decoder_res_blocks=3)
    vqgan.grow_decoder(new, old)
    old.eval(), new.eval()
    ids = torch.randint(0, cfg.tokenizer.codebook_size, (2, 4, 4))
    with torch.no_grad():
        assert torch.allclose(new.decode_ids(ids), old.decode_ids(ids), atol=1e-6)
    assert len(new.decoder) == len(old.decoder) + 2 * len(cfg.tokenizer.channels)
    shared = [k for k in old.state_dict() if not k.startswith("decoder.")]
    assert all(torch.equal(old.state_dict()[k], new.state_dict()[k]) for k in shared)
    new.decode_ids(ids).square().mean().backward()
    added = [m for m in new.decoder if isinstance(m, vqgan.ResidualBlock)][2]  # mid, level 1 x 2
    assert added.block[-1].weight.grad.abs().sum() > 0
    assert torch.equal(added.block[-1].weight, torch.zeros_like(added.block[-1].weight))
    other, _ = tiny_model(channels=[16, 32, 64], decoder_res_blocks=2)
    with pytest.raises(ConfigError, match="cannot grow"):
        vqgan.grow_decoder(other, old)


def test_a_context_decoder_starts_as_the_old_one_and_never_sees_the_hole():
    """tokenizer.context: a tokenizer that gains the branch decodes what it decoded (with or
    without context); once the branch has weights, the known pixels change the output and the
    hole's content does not; no context means nothing known."""
    torch.manual_seed(0)
    old, cfg = tiny_model()
    for p in old.parameters():
        p.data.normal_(0, 0.2)
    new, _ = tiny_model(context=True)
    vqgan.add_context(new, old)
    old.eval(), new.eval()
    x = torch.randn(2, 3, 16, 16)
    missing = torch.zeros(2, 16, 16, dtype=torch.bool)
    missing[:, 4:12, 2:9] = True
    ids = old.encode(x)
    ctx = vqgan.context_input(x, missing)
    with torch.no_grad():
        plain = old.decode_ids(ids)
        assert torch.allclose(new.decode_ids(ids), plain, atol=1e-6)
        assert torch.allclose(new.decode_ids(ids, ctx), plain, atol=1e-6)
        assert torch.equal(old.decode_ids(ids, ctx), plain)  # no branch: context ignored
        for p in new.context.parameters():
            p.data.normal_(0, 0.2)
        seen = new.decode_ids(ids, ctx)
        assert (seen - new.decode_ids(ids)).abs().max() > 1e-3
        other_hole = torch.where(missing.unsqueeze(1), torch.randn_like(x), x)
        assert torch.equal(new.decode_ids(ids, vqgan.context_input(other_hole, missing)), seen)
        other_known = torch.where(missing.unsqueeze(1), x, torch.randn_like(x))
        assert (
            new.decode_ids(ids, vqgan.context_input(other_known, missing)) - seen
        ).abs().max() > 1e-3
        nothing = vqgan.context_input(x, torch.ones_like(missing))
        assert torch.equal(new.decode_ids(ids, nothing), new.decode_ids(ids))
    assert len(new.taps) == len(cfg.tokenizer.channels)
    with pytest.raises(ConfigError, match="cannot add a context"):
        vqgan.add_context(old, new)
    with pytest.raises(ConfigError, match="arch 'vqgan'"):
        config.load(
            ROOT / "configs" / "tiny.yaml", ["tokenizer.arch=lab", "tokenizer.context=true"]
        )


def test_a_hole_critic_counts_only_the_patches_that_touch_the_hole():
    from maskgit_cli.train.tokenizer import patch_mean

    logits = torch.arange(2 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    assert patch_mean(logits).item() == logits.mean().item()
    everywhere = torch.ones(2, 1, 16, 16, dtype=torch.bool)
    assert patch_mean(logits, everywhere).item() == logits.mean().item()
    corner = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    corner[0, 0, 0, 0] = True  # one pixel: patch (0, 0) of image 0
    corner[1, 0, 15, 15] = True  # and patch (3, 3) of image 1
    assert patch_mean(logits, corner).item() == (logits[0, 0, 0, 0] + logits[1, 0, 3, 3]).item() / 2
