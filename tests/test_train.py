"""Training loops through the pipeline: loss goes down, resume is exact, errors are clear."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import TINY, inpaint_args, invoke_json

from maskgit_cli import checkpoint, config, data, pipeline, precision, tokens, vqgan
from maskgit_cli.errors import CheckpointError, ConfigError, DataError


def test_tiny_tokenizer_run_lowers_its_loss(tiny_data, tmp_path):
    res = pipeline.train(
        TINY,
        "tokenizer",
        tiny_data["train"],
        tmp_path / "run",
        val=tiny_data["val"],
        device="cpu",
        overrides=["tokenizer_train.epochs=6"],
    )
    lines = [
        json.loads(x)
        for x in (tmp_path / "run" / "metrics_tokenizer.jsonl").read_text().splitlines()
    ]
    losses = [x["loss"] for x in lines if "loss" in x]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert res.epochs[-1]["val_psnr"] > res.epochs[0]["val_psnr"]
    assert 0 < res.codebook_usage <= 1 and res.val_psnr is not None
    saved = checkpoint.load(tmp_path / "run" / "tokenizer.pt")
    assert saved["kind"] == "tokenizer" and saved["config"]["tokenizer"]["codebook_size"] == 32
    assert (tmp_path / "run" / "config.yaml").exists()


def _interrupt_at(step):
    def on_step(rec):
        if rec["step"] == step:
            raise KeyboardInterrupt

    return on_step


def _losses(path):
    return [round(json.loads(x)["loss"], 6) for x in path.read_text().splitlines() if '"loss"' in x]


def test_tokenizer_resume_equals_an_uninterrupted_run(tiny_data, tmp_path):
    over = [
        "tokenizer_train.max_steps=12",
        "tokenizer_train.restart_every=5",
        "tokenizer_train.ema=0.9",
    ]
    full = _stage1(tmp_path / "a", tiny_data, over)
    cut = _stage1(tmp_path / "b", tiny_data, over, on_step=_interrupt_at(6))
    assert cut.interrupted and cut.steps == 6
    rest = _stage1(tmp_path / "b", tiny_data, over, resume=True)
    assert rest.steps == full.steps == 12
    assert _losses(tmp_path / "b" / "metrics_tokenizer.jsonl") == _losses(
        tmp_path / "a" / "metrics_tokenizer.jsonl"
    )
    ca, cb = checkpoint.load(tmp_path / "a"), checkpoint.load(tmp_path / "b")
    for key in ("model", "ema"):  # the weight average resumes exactly too
        assert all(torch.equal(ca[key][k], cb[key][k]) for k in ca[key])


def test_tokenizer_gan_from_disc_start_trains_the_encoder_and_resumes_exactly(tiny_data, tmp_path):
    """Stage 1 with the patch GAN on from step 4 (adaptive weight, feature matching): the steps
    before it match a run without a GAN, the steps after log the GAN's terms and move the encoder
    elsewhere, and a resume past the start restores the critic exactly."""
    plain = ["tokenizer_train.max_steps=8", "tokenizer_train.restart_every=0"]
    over = [*plain, "tokenizer_train.disc_start=4", "tokenizer_train.feature_weight=1.0"]
    _stage1(tmp_path / "plain", tiny_data, plain)
    _stage1(tmp_path / "a", tiny_data, over)
    rows = [
        json.loads(x)
        for x in (tmp_path / "a" / "metrics_tokenizer.jsonl").read_text().splitlines()
        if '"loss"' in x
    ]
    assert [("gan_weight" in r) for r in rows] == [False] * 4 + [True] * 4
    on = rows[4:]
    assert all(r["gan_weight"] > 0 and r["feature_loss"] > 0 and r["disc_loss"] >= 0 for r in on)
    a, p = (
        _losses(tmp_path / "a" / "metrics_tokenizer.jsonl"),
        _losses(tmp_path / "plain" / "metrics_tokenizer.jsonl"),
    )
    assert a[:4] == p[:4] and a[4:] != p[4:]
    ca, cp = checkpoint.load(tmp_path / "a"), checkpoint.load(tmp_path / "plain")
    assert ca["disc"] is not None and cp["disc"] is None
    enc = [k for k in ca["model"] if k.startswith("encoder.")]
    assert any(not torch.equal(ca["model"][k], cp["model"][k]) for k in enc)

    cut = _stage1(tmp_path / "b", tiny_data, over, on_step=_interrupt_at(6))
    assert cut.interrupted and cut.steps == 6
    _stage1(tmp_path / "b", tiny_data, over, resume=True)
    assert _losses(tmp_path / "b" / "metrics_tokenizer.jsonl") == a
    cb = checkpoint.load(tmp_path / "b")
    assert all(torch.equal(ca["disc"][k], cb["disc"][k]) for k in ca["disc"])


def test_transformer_resume_equals_an_uninterrupted_run(tiny_run, tiny_data, tmp_path):
    """N steps, then N resumed steps, give the losses of 2N uninterrupted steps (EMA, accumulation,
    dropout and data order included)."""
    over = [
        "transformer_train.max_steps=10",
        "transformer_train.ema=0.9",
        "transformer_train.grad_accum=2",
        "transformer.dropout=0.1",
        "transformer_train.mask_mode=mixed",
    ]
    tok = tiny_run / "tokenizer.pt"
    kw = dict(device="cpu", overrides=over, tokenizer=tok, val=tiny_data["val"])
    full = pipeline.train(TINY, "transformer", tiny_data["train"], tmp_path / "a", **kw)
    cut = pipeline.train(
        TINY, "transformer", tiny_data["train"], tmp_path / "b", **kw, on_step=_interrupt_at(5)
    )
    assert cut.interrupted
    rest = pipeline.train(
        TINY, "transformer", tiny_data["train"], tmp_path / "b", **kw, resume=True
    )
    assert rest.steps == full.steps == 10
    a = _losses(tmp_path / "a" / "metrics_transformer.jsonl")
    b = _losses(tmp_path / "b" / "metrics_transformer.jsonl")
    assert a == b and len(a) == 10
    assert rest.val_loss == pytest.approx(full.val_loss, abs=1e-6)


def test_tiny_transformer_run_lowers_val_loss(tiny_run):
    rows = [
        json.loads(x) for x in (tiny_run / "metrics_transformer.jsonl").read_text().splitlines()
    ]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(val) == 3 and val[-1] < val[0]
    assert (tiny_run / "transformer_best.pt").exists()


def test_run_directory_is_self_contained(tiny_run, tiny_data, tmp_path):
    # tokens were cached once; the tokenizer sits beside the transformer
    assert (tiny_run / "tokens_train.npz").exists() and (tiny_run / "tokenizer.pt").exists()
    cached = tokens.load_tokens(tiny_run / "tokens_train.npz")
    assert len(cached.ids) == 2 * 48  # images and their mirror images
    tok, tr, cfg = checkpoint.load_transformer(tiny_run)
    assert tr.K == tok.codebook_size


def test_transformer_trains_from_a_token_file_and_copies_the_tokenizer(
    tiny_run, tiny_data, tmp_path
):
    res = pipeline.encode(tiny_data["train"], tiny_run, tmp_path / "tok.npz", device="cpu")
    out = tmp_path / "run2"
    r = pipeline.train(
        TINY,
        "transformer",
        res.out,
        out,
        tokenizer=tiny_run,
        device="cpu",
        overrides=["transformer_train.max_steps=2"],
    )
    assert r.steps == 2 and (out / "tokenizer.pt").exists()
    assert checkpoint.load(out / "tokenizer.pt")["model_id"] == res.tokenizer_id
    # the loaded config's stage-2 training is the transformer's own, not the tokenizer run's
    assert checkpoint.load_transformer(out)[2].transformer_train.max_steps == 2


def test_token_file_from_another_tokenizer_is_refused(tiny_run, tiny_data, tmp_path):
    other = tmp_path / "other"
    pipeline.train(
        TINY,
        "tokenizer",
        tiny_data["train"],
        other,
        device="cpu",
        seed=5,
        overrides=["tokenizer_train.max_steps=2"],
    )
    enc = pipeline.encode(tiny_data["train"], other, tmp_path / "other.npz", device="cpu")
    with pytest.raises(DataError, match="encoded by tokenizer .* not by the run's tokenizer"):
        pipeline.train(
            TINY,
            "transformer",
            enc.out,
            tmp_path / "x",
            tokenizer=tiny_run,
            device="cpu",
            overrides=["transformer_train.max_steps=1"],
        )


def test_codebook_and_grid_mismatches_are_clear(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="codebook"):
        pipeline.train(
            TINY,
            "transformer",
            tiny_run / "tokens_train.npz",
            tmp_path / "x",
            tokenizer=tiny_run,
            device="cpu",
            overrides=["tokenizer.codebook_size=64"],
        )
    with pytest.raises(ConfigError, match="grid"):
        pipeline.train(
            TINY,
            "transformer",
            tiny_run / "tokens_train.npz",
            tmp_path / "y",
            tokenizer=tiny_run,
            device="cpu",
            overrides=["data.image_size=32"],
        )


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path):
    from maskgit_cli.errors import TrainingDiverged

    over = [
        "tokenizer_train.max_steps=30",
        "tokenizer_train.checkpoint_every=2",
        "tokenizer_train.lr=1e30",
        "tokenizer_train.warmup_steps=0",
        "tokenizer_train.grad_clip=1e30",
    ]
    with pytest.raises(TrainingDiverged, match="loss became .* at step"):
        _stage1(tmp_path / "r", tiny_data, over)


def test_existing_run_needs_resume_or_overwrite(tiny_run, tiny_data):
    with pytest.raises(DataError, match="--resume .* or --overwrite"):
        pipeline.train(TINY, "tokenizer", tiny_data["train"], tiny_run, device="cpu")


def _decoder_run(tiny_run, dest):
    """A run directory holding a copy of the tiny run's stage-1 tokenizer and transformer."""
    dest.mkdir()
    for name in ("tokenizer.pt", "transformer.pt"):
        shutil.copy(tiny_run / name, dest / name)
    return dest


def test_decoder_stage_keeps_the_tokens_and_the_transformer_pairing(tiny_run, tiny_data, tmp_path):
    run = _decoder_run(tiny_run, tmp_path / "run")
    before_ck = checkpoint.load(run / "tokenizer.pt")
    tok0, cfg, id0 = checkpoint.load_tokenizer(run / "tokenizer.pt")
    images, _ = data.load_folder(tiny_data["val"], cfg.data.image_size)
    x = data.normalize(images, cfg.data)
    res = pipeline.train(
        TINY,
        "decoder",
        tiny_data["train"],
        run,
        val=tiny_data["val"],
        device="cpu",
        overrides=[
            "decoder_train.max_steps=6",
            "decoder_train.log_every=1",
            "decoder_train.warmup_steps=0",
            "decoder_train.lr=1e-3",
        ],
    )
    assert res.stage == "decoder" and res.steps == 6
    tok1, _, id1 = checkpoint.load_tokenizer(run / "tokenizer.pt")
    assert id1 == id0  # the id names the tokens, which did not change
    sd0, sd1 = tok0.state_dict(), tok1.state_dict()
    frozen = [k for k in sd0 if not k.startswith(("decoder.", "post_quant_conv."))]
    assert frozen and all(torch.equal(sd0[k], sd1[k]) for k in frozen)
    assert any(not torch.equal(sd0[k], sd1[k]) for k in sd0 if k.startswith("decoder."))
    with torch.no_grad():
        assert torch.equal(tok0.encode(x), tok1.encode(x))
        assert not torch.equal(tok0.decode_ids(tok0.encode(x)), tok1.decode_ids(tok1.encode(x)))
    checkpoint.load_transformer(run)  # the transformer still pairs with the fine-tuned tokenizer
    kept = checkpoint.load(run / "tokenizer_stage1.pt")
    assert all(torch.equal(kept["model"][k], before_ck["model"][k]) for k in before_ck["model"])
    rows = [json.loads(x) for x in (run / "metrics_decoder.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "gan_weight" in r]
    assert len(steps) == 6 and all(r["gan_weight"] > 0 and r["disc_loss"] >= 0 for r in steps)
    assert rows[0]["epoch"] == 0 and "val_psnr" in rows[0]  # the starting PSNR is on record


@pytest.mark.parametrize("generated", [0, 3])
def test_decoder_resume_equals_an_uninterrupted_run(tiny_run, tiny_data, tmp_path, generated):
    over = [
        "decoder_train.max_steps=8",
        "decoder_train.log_every=1",
        "decoder_train.batch_size=8",
        f"decoder_train.generated={generated}",
        "decoder_train.pool=5",
        "decoder_train.ema=0.9",
    ]
    a, b = _decoder_run(tiny_run, tmp_path / "a"), _decoder_run(tiny_run, tmp_path / "b")
    full = pipeline.train(TINY, "decoder", tiny_data["train"], a, device="cpu", overrides=over)
    cut = pipeline.train(
        TINY,
        "decoder",
        tiny_data["train"],
        b,
        device="cpu",
        overrides=over,
        on_step=_interrupt_at(4),
    )
    assert cut.interrupted and cut.steps == 4
    rest = pipeline.train(
        TINY, "decoder", tiny_data["train"], b, device="cpu", overrides=over, resume=True
    )
    assert rest.steps == full.steps == 8
    assert _losses(b / "metrics_decoder.jsonl") == _losses(a / "metrics_decoder.jsonl")
    ca, cb = checkpoint.load(a / "tokenizer.pt"), checkpoint.load(b / "tokenizer.pt")
    for key in ("model", "ema"):
        assert all(torch.equal(ca[key][k], cb[key][k]) for k in ca[key])


def test_decoder_stage_with_feature_matching_logs_and_trains(tiny_run, tiny_data, tmp_path):
    run = _decoder_run(tiny_run, tmp_path / "run")
    before_ck = checkpoint.load(run)
    before = before_ck["model"]
    over = ["decoder_train.max_steps=3", "decoder_train.log_every=1"]
    over += ["decoder_train.feature_weight=1.0", "decoder_train.batch_size=8"]
    over += ["decoder_train.generated=3", "decoder_train.pool=5"]
    pipeline.train(TINY, "decoder", tiny_data["train"], run, device="cpu", overrides=over)
    rows = [json.loads(x) for x in (run / "metrics_decoder.jsonl").read_text().splitlines()]
    fm = [r["feature_loss"] for r in rows if "feature_loss" in r]
    assert len(fm) == 3 and all(v > 0 for v in fm)
    after_ck = checkpoint.load(run)
    after = after_ck["model"]
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    # no --val: stage 1's PSNR described the old decoder, so it is not carried over; the
    # codebook's figures are (the tokens are frozen)
    assert "psnr" in before_ck["metrics"] and "psnr" not in after_ck["metrics"]
    assert after_ck["metrics"]["usage"] == before_ck["metrics"]["usage"]


def test_decoder_stage_can_keep_stage_1s_critic(tiny_run, tiny_data, tmp_path):
    """decoder_train.keep_critic: stage 1b starts from the critic stage 1 trained (here at a
    vanishing learning rate, so it ends where it started); a fresh critic ends elsewhere, and a
    stage 1 without a critic is refused with the fix."""
    from maskgit_cli.errors import ConfigError

    run = tmp_path / "gan"
    stage1 = ["tokenizer_train.max_steps=4", "tokenizer_train.disc_start=0"]
    _stage1(run, tiny_data, stage1)
    critic = checkpoint.load(run / "tokenizer.pt")["disc"]
    over = ["decoder_train.max_steps=2", "decoder_train.disc_lr=1e-12"]

    def ends_with_stage_1s_critic(keep: bool) -> bool:
        res = _stage1b(run, tiny_data, [*over, f"decoder_train.keep_critic={keep}"], overwrite=True)
        assert res.steps == 2
        disc = checkpoint.load(run / "tokenizer.pt")["decoder_train"]["disc"]
        return all(torch.allclose(disc[k], critic[k], atol=1e-6) for k in critic)

    assert ends_with_stage_1s_critic(True)
    assert not ends_with_stage_1s_critic(False)
    plain = _decoder_run(tiny_run, tmp_path / "plain")  # its stage 1 had no critic
    with pytest.raises(ConfigError, match="no critic to keep .* drop decoder_train.keep_critic"):
        _stage1b(plain, tiny_data, [*over, "decoder_train.keep_critic=true"])
    assert not (plain / "tokenizer_stage1.pt").exists()  # nothing written


def test_a_shallower_critic_trains_in_stage_1_and_is_kept_whole_by_stage_1b(tiny_data, tmp_path):
    """tokenizer_train.disc_layers: stage 1's critic has that depth, a resume that changes it is
    refused, and stage 1b keeps the critic it is handed (keep_critic) or builds a fresh one of the
    run's depth."""
    run = tmp_path / "gan2"
    stage1 = ["tokenizer_train.max_steps=2", "tokenizer_train.disc_start=0"]
    stage1 += ["tokenizer_train.disc_layers=2"]
    _stage1(run, tiny_data, stage1)
    critic = checkpoint.load(run / "tokenizer.pt")["disc"]
    assert vqgan.PatchDiscriminator.like(critic).layers == 2
    with pytest.raises(CheckpointError, match="disc_layers"):
        _stage1(run, tiny_data, [*stage1[:-1], "tokenizer_train.disc_layers=3"], resume=True)
    for keep in (True, False):
        over = ["decoder_train.max_steps=1", f"decoder_train.keep_critic={keep}"]
        assert _stage1b(run, tiny_data, over, overwrite=True).steps == 1
        disc = checkpoint.load(run / "tokenizer.pt")["decoder_train"]["disc"]
        assert vqgan.PatchDiscriminator.like(disc).layers == 2
        assert set(disc) == set(critic)


def _stage1(run, tiny_data, overrides, **kw):
    """Stage 1 into `run` on the tiny train images."""
    return pipeline.train(
        TINY, "tokenizer", tiny_data["train"], run, device="cpu", overrides=overrides, **kw
    )


def _stage1b(run, tiny_data, overrides, **kw):
    """Stage 1b over `run` on the tiny train images."""
    return pipeline.train(
        TINY, "decoder", tiny_data["train"], run, device="cpu", overrides=overrides, **kw
    )


def _grow_cut_and_resume(run, tiny_data, over, note):
    """Stage 1b with `over` (4 steps, one of them growing the tokenizer), cut at step 2 and
    resumed: the growth's note comes with the first start only. -> the tokenizer at the cut."""
    cut = _stage1b(run, tiny_data, over, on_step=_interrupt_at(2))
    assert cut.interrupted and any(note in w for w in cut.warnings)
    at_cut = checkpoint.load_tokenizer(run / "tokenizer.pt")
    rest = _stage1b(run, tiny_data, over, resume=True)
    assert rest.steps == 4 and not any(note in w for w in rest.warnings)
    return at_cut


def test_decoder_stage_deepens_the_decoder_and_resumes_at_its_new_depth(
    tiny_run, tiny_data, tmp_path
):
    """decoder_train.add_res_blocks: the run's tokenizer gets a deeper decoder that starts from
    the old one's reconstructions; the tokens, and so the transformer's pairing, stay."""
    run = _decoder_run(tiny_run, tmp_path / "run")
    tok0, cfg0, id0 = checkpoint.load_tokenizer(run / "tokenizer.pt")
    over = ["decoder_train.max_steps=4", "decoder_train.log_every=1"]
    over.append("decoder_train.add_res_blocks=1")
    tok1, cfg1, id1 = _grow_cut_and_resume(run, tiny_data, over, "deepened to 2")
    assert cfg0.tokenizer.decoder_res_blocks == 0 and cfg1.tokenizer.decoder_res_blocks == 2
    assert id1 == id0 and len(tok1.decoder) > len(tok0.decoder)
    tok2, cfg2, _ = checkpoint.load_tokenizer(run / "tokenizer.pt")
    assert cfg2.tokenizer.decoder_res_blocks == 2  # a resume does not deepen it again
    checkpoint.load_transformer(run)
    with pytest.raises(ConfigError, match="arch 'vqgan'"):
        config.load(TINY, ["tokenizer.arch=lab", "decoder_train.add_res_blocks=1"])


def test_decoder_stage_adds_a_context_branch_that_inpainting_uses(
    runner, tiny_run, tiny_data, tmp_path
):
    """decoder_train.add_context: the run's decoder learns to see the known pixels; the tokens
    stay, a resume does not add the branch again, a second one is refused, and `inpaint` hands
    the branch the input (its oracle differs from the decoder's without context)."""
    run = _decoder_run(tiny_run, tmp_path / "run")
    _, _, id0 = checkpoint.load_tokenizer(run / "tokenizer.pt")
    over = ["decoder_train.max_steps=4", "decoder_train.log_every=1"]
    over += ["decoder_train.add_context=true", "decoder_train.context_drop=0.5"]
    with pytest.raises(ConfigError, match="set decoder_train.add_context=true too"):
        _stage1b(run, tiny_data, over[:2] + ["decoder_train.hole_critic=true"])
    over.append("decoder_train.hole_critic=true")
    tok1, cfg1, id1 = _grow_cut_and_resume(run, tiny_data, over, "sees the known pixels")
    assert cfg1.tokenizer.context and tok1.context is not None and id1 == id0
    tok2, _, _ = checkpoint.load_tokenizer(run / "tokenizer.pt")
    proj = tok2.context.proj[0].weight
    assert proj.abs().sum() > 0  # the branch trained
    again = tmp_path / "again"  # its tokenizer as an export hands it on: no training state
    again.mkdir()
    ck = checkpoint.load(run / "tokenizer.pt")
    checkpoint.save(
        again / "tokenizer.pt",
        {k: v for k, v in ck.items() if k not in ("path", "version", "decoder_train")},
    )
    with pytest.raises(ConfigError, match="already sees the known pixels"):
        _stage1b(again, tiny_data, over)
    with pytest.raises(ConfigError, match="add one per run"):
        config.load(TINY, ["decoder_train.add_context=true", "decoder_train.add_res_blocks=1"])
    with pytest.raises(ConfigError, match="cannot be combined"):
        config.load(TINY, ["decoder_train.add_context=true", "decoder_train.generated=2"])

    def oracle(model, out):
        extra = ("--fill", "oracle", "--blend", "none", "--ground-truth", str(tiny_data["test"]))
        return invoke_json(runner, inpaint_args(tiny_data, model, tmp_path / out, *extra))

    seen, plain = oracle(run, "seen"), oracle(tiny_run, "plain")
    assert seen["count"] == plain["count"] == 10
    assert seen["metrics"]["psnr_masked"] != plain["metrics"]["psnr_masked"]


def _stage2(run, tiny_data, overrides):
    """A fresh stage-2 run over `run` (overwrite) on the tiny train images."""
    return pipeline.train(
        TINY,
        "transformer",
        tiny_data["train"],
        run,
        device="cpu",
        overrides=overrides,
        overwrite=True,
    )


def test_transformer_fine_tune_starts_from_the_init_weights(tiny_run, tiny_data, tmp_path):
    """transformer_train.init: a run starts from another transformer's weights (trained on the
    same tokens) with a fresh optimizer; a transformer of other tokens is refused by name."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / "tokenizer.pt", run / "tokenizer.pt")
    init = checkpoint.load(tiny_run / "transformer.pt")
    over = ["transformer_train.max_steps=1", "transformer_train.warmup_steps=0"]
    over += ["transformer_train.lr=1e-9", f"transformer_train.init={tiny_run}"]
    res = pipeline.train(TINY, "transformer", tiny_data["train"], run, device="cpu", overrides=over)
    assert any("started from the weights of" in w for w in res.warnings)
    tuned = checkpoint.load(run / "transformer.pt")["model"]
    start = checkpoint.weights(init)
    assert all(torch.allclose(tuned[k], start[k], atol=1e-6) for k in start)
    fresh = over[:3]
    pipeline.train(
        TINY, "transformer", tiny_data["train"], run, device="cpu", overrides=fresh, overwrite=True
    )
    rand = checkpoint.load(run / "transformer.pt")["model"]
    assert not all(torch.allclose(rand[k], start[k], atol=1e-6) for k in start)

    other = dict(init, tokenizer_id="0123456789abcdef")
    other.pop("path")
    checkpoint.save(tmp_path / "other.pt", other)
    with pytest.raises(CheckpointError, match="other.pt was trained on the tokens of tokenizer"):
        _stage2(run, tiny_data, [*fresh, f"transformer_train.init={tmp_path / 'other.pt'}"])


def test_transformer_fine_tune_adds_layers_that_start_as_the_identity(
    tiny_run, tiny_data, tmp_path
):
    """transformer_train.add_layers: init's transformer, deepened, predicts what it did before its
    first step; the run's config records the new depth, and a resume (with the same overrides or
    the run's own config) neither deepens it again nor refuses it."""
    from maskgit_cli import transformer as transformer_mod

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / "tokenizer.pt", run / "tokenizer.pt")
    over = ["transformer_train.max_steps=1", "transformer_train.warmup_steps=0"]
    over += ["transformer_train.lr=1e-9", f"transformer_train.init={tiny_run}"]
    over += ["transformer_train.add_layers=2"]
    res = pipeline.train(TINY, "transformer", tiny_data["train"], run, device="cpu", overrides=over)
    assert any("deepened from 2 to 4 layers" in w for w in res.warnings)
    ck = checkpoint.load(run / "transformer.pt")
    assert ck["config"]["transformer"]["layers"] == 4
    init = checkpoint.load(tiny_run / "transformer.pt")
    cfg = config.load(TINY)
    old = transformer_mod.build(cfg.transformer, 4, cfg.tokenizer.codebook_size).eval()
    old.load_state_dict(checkpoint.weights(init))
    new = transformer_mod.build(
        dataclasses.replace(cfg.transformer, layers=4), 4, cfg.tokenizer.codebook_size
    ).eval()
    new.load_state_dict(ck["model"])
    ids = torch.randint(0, cfg.tokenizer.codebook_size + 1, (2, 16))
    assert (new(ids) - old(ids)).abs().max() < 1e-4  # one step at lr 1e-9 moves nothing visible

    more = [*over[1:], "transformer_train.max_steps=2"]
    again = pipeline.train(
        TINY, "transformer", tiny_data["train"], run, device="cpu", overrides=more, resume=True
    )
    assert again.steps == 2 and not any("deepened" in w for w in again.warnings)
    assert checkpoint.load(run / "transformer.pt")["config"]["transformer"]["layers"] == 4
    own = pipeline.train(
        run / "config.yaml",
        "transformer",
        tiny_data["train"],
        run,
        device="cpu",
        overrides=["transformer_train.max_steps=3"],
        resume=True,
    )
    assert own.steps == 3
    assert checkpoint.load(run / "transformer.pt")["config"]["transformer"]["layers"] == 4
    with pytest.raises(ConfigError, match="add_layers deepens transformer_train.init"):
        config.load(TINY, ["transformer_train.add_layers=1"])
    with pytest.raises(CheckpointError, match="has 2 layers, but transformer.layers is 3"):
        _stage2(run, tiny_data, [*over, "transformer.layers=3"])

    # the export keeps the grown depth, drops what acted only at the start (init's path of this
    # machine), and predicts what the run does
    pipeline.export(run, tmp_path / "exported", half=False)
    shipped = checkpoint.load(tmp_path / "exported" / "transformer.pt")["config"]
    assert shipped["transformer"]["layers"] == 4
    assert (
        shipped["transformer_train"]["init"] == ""
        and shipped["transformer_train"]["add_layers"] == 0
    )
    assert str(tiny_run) not in str(shipped)
    _, exported, _ = checkpoint.load_transformer(tmp_path / "exported")
    _, trained, _ = checkpoint.load_transformer(run)
    assert torch.equal(exported.eval()(ids), trained.eval()(ids))


def test_decoder_stage_on_the_transformers_fills(tiny_run, tiny_data, tmp_path):
    """decoder_train.generated: part of each batch is the run's transformer's inpainting fills,
    made once (a pool kept in the checkpoint) from holes in train images."""
    from maskgit_cli.inpaint import inpainting_pool

    run = _decoder_run(tiny_run, tmp_path / "run")
    tok, _, cfg = checkpoint.load_transformer(run)
    over = [
        "decoder_train.max_steps=3",
        "decoder_train.batch_size=4",
        "decoder_train.generated=2",
        "decoder_train.pool=6",
        "decoder_train.log_every=1",
    ]
    res = pipeline.train(TINY, "decoder", tiny_data["train"], run, device="cpu", overrides=over)
    assert res.steps == 3
    pool = checkpoint.load(run / "tokenizer.pt")["decoder_train"]["pool"]
    g = cfg.grid
    assert pool["ids"].shape == (6, g, g) and pool["missing"].shape == (6, 16, 16)
    assert pool["missing"].any() and not pool["missing"].all()
    images, _ = data.load_folder(tiny_data["train"], 16)
    cpu = torch.device("cpu")  # made from the seed alone, in the run's precision
    again = inpainting_pool(run, images, 6, 0, cpu, precision.resolve("auto", cpu))
    assert all(torch.equal(again[k], pool[k]) for k in pool)
    # the holes' tokens are the transformer's, not the encoder's tokens of the true images
    truth_ids = tok.encode(data.normalize(images[pool["index"]], cfg.data))
    hole = data.token_mask(pool["missing"], g, cfg.decode.token_mask)
    assert hole.any() and not torch.equal(pool["ids"].long()[hole], truth_ids[hole])
    assert pool["ids"].min() >= 0 and pool["ids"].max() < tok.codebook_size
    checkpoint.load_transformer(run)  # still pairs: the tokens did not change

    with pytest.raises(ConfigError, match=r"decoder_train.generated \(4\) must be less than"):
        pipeline.train(
            TINY,
            "decoder",
            tiny_data["train"],
            run,
            device="cpu",
            overwrite=True,
            overrides=over + ["decoder_train.generated=4"],
        )
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(tiny_run / "tokenizer.pt", lone / "tokenizer.pt")
    from maskgit_cli.errors import CheckpointError

    with pytest.raises(
        CheckpointError, match="decoder_train.generated needs the run's transformer"
    ):
        pipeline.train(TINY, "decoder", tiny_data["train"], lone, device="cpu", overrides=over)


def test_decoder_stage_refuses_what_it_cannot_do(tiny_run, tiny_data, tmp_path):
    from maskgit_cli.errors import CheckpointError

    over = ["decoder_train.max_steps=2"]
    with pytest.raises(
        DataError, match="no tokenizer.pt in .* to fine-tune: train one there first"
    ):
        pipeline.train(
            TINY, "decoder", tiny_data["train"], tmp_path / "empty", device="cpu", overrides=over
        )
    run = _decoder_run(tiny_run, tmp_path / "run")
    with pytest.raises(CheckpointError, match="never fine-tuned, so there is nothing to resume"):
        pipeline.train(
            TINY, "decoder", tiny_data["train"], run, device="cpu", overrides=over, resume=True
        )
    pipeline.train(TINY, "decoder", tiny_data["train"], run, device="cpu", overrides=over)
    with pytest.raises(
        CheckpointError, match=r"already fine-tuned \(2 steps\); continue with --resume"
    ):
        pipeline.train(TINY, "decoder", tiny_data["train"], run, device="cpu", overrides=over)
    with pytest.raises(CheckpointError, match="stage 1 cannot be resumed"):
        _stage1(run, tiny_data, ["tokenizer_train.max_steps=500"], resume=True)
    # --overwrite restarts from the kept stage-1 checkpoint: the same result as the first run
    first = checkpoint.load(run / "tokenizer.pt")["model"]
    again = pipeline.train(
        TINY, "decoder", tiny_data["train"], run, device="cpu", overrides=over, overwrite=True
    )
    assert again.steps == 2
    assert all(
        torch.equal(v, checkpoint.load(run / "tokenizer.pt")["model"][k]) for k, v in first.items()
    )
    # a new stage 1 in the same directory, then a first fine-tune: the kept start is the new stage 1
    pipeline.train(
        TINY,
        "tokenizer",
        tiny_data["train"],
        run,
        device="cpu",
        overwrite=True,
        seed=3,
        overrides=["tokenizer_train.max_steps=2"],
    )
    stage1 = checkpoint.load(run / "tokenizer.pt")["model"]
    pipeline.train(TINY, "decoder", tiny_data["train"], run, device="cpu", overrides=over)
    kept = checkpoint.load(run / "tokenizer_stage1.pt")["model"]
    assert all(torch.equal(v, kept[k]) for k, v in stage1.items())


def test_adaptive_gan_weight_balances_the_gradients():
    from maskgit_cli.train.decoder import adaptive_gan_weight

    w = torch.ones(3, requires_grad=True)
    rec, gan = 2.0 * w.sum(), -8.0 * w.sum()  # gradients (2, 2, 2) and (-8, -8, -8)
    assert adaptive_gan_weight(rec, gan, w, 0.5).item() == pytest.approx(
        0.5 * 2 / (8 + 1e-4 / 3**0.5), rel=1e-4
    )
    assert adaptive_gan_weight(rec, 0.0 * w.sum(), w, 1.0).item() == 1e4  # no GAN gradient: clamped


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(tiny_run, tiny_data, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # the launcher picks its own free port: no race for a port chosen here
        "--nproc_per_node=2",
        "-m",
        "maskgit_cli",
        "train",
        str(TINY),
        "--stage",
        "transformer",
        "--data",
        str(tiny_data["train"]),
        "--tokenizer",
        str(tiny_run),
        "--out",
        str(out),
        "--max-steps",
        "4",
        "--device",
        "cpu",
        "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    payloads = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert payloads and payloads[0]["steps"] == 4
    assert torch.load(out / "transformer.pt", weights_only=True)["step"] == 4


def test_colour_hints_train_decode_and_are_used(tiny_data, tmp_path):
    """transformer.hint: the masked positions see the harmonic colour of the hole. Trained end to
    end on tiny data, the hint projection moves off zero, the logits depend on the hint, and
    inpainting builds the same hint from the masked image."""
    from maskgit_cli import checkpoint, pipeline
    from maskgit_cli.errors import DataError
    from maskgit_cli.mvtm import mvtm_hint

    run = tmp_path / "run"
    pipeline.train(
        TINY,
        "tokenizer",
        tiny_data["train"],
        run,
        device="cpu",
        overrides=["tokenizer_train.max_steps=20"],
    )
    res = pipeline.train(
        TINY,
        "transformer",
        tiny_data["train"],
        run,
        val=tiny_data["val"],
        device="cpu",
        overrides=["transformer.hint=true", "transformer_train.max_steps=30"],
    )
    assert res.val_loss is not None
    _tok, tr, cfg = checkpoint.load_transformer(run)
    assert tr.hint_proj.weight.abs().sum() > 0
    ids = torch.randint(0, tr.K, (2, 16))
    where = torch.zeros(2, 16, dtype=torch.bool)
    where[:, 5:11] = True
    colors = torch.randn(2, 3, 4, 4)
    hint = mvtm_hint(colors, where)
    assert hint.shape == (2, 16, 3)
    with torch.no_grad():
        a = tr(ids.masked_fill(where, tr.mask_id), where, hint=hint)
        b = tr(ids.masked_fill(where, tr.mask_id), where, hint=hint + 1.0)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="colour hints"):
        tr(ids.masked_fill(where, tr.mask_id), where)
    out = pipeline.inpaint(
        tiny_data["masked"],
        tiny_data["masks"],
        tmp_path / "o",
        model=run,
        device="cpu",
        settings={"total_iter": 3},
        ground_truth=tiny_data["test"],
    )
    assert out.count == 10 and out.metrics["psnr_masked"] is not None
    # a token file without colours cannot feed a hinted transformer
    from maskgit_cli import tokens as data_mod

    tokens = data_mod.load_tokens(run / "tokens_train.npz")
    data_mod.save_tokens(
        tmp_path / "bare.npz",
        data_mod.TokenFile(
            ids=tokens.ids,
            files=tokens.files,
            tokenizer_id=tokens.tokenizer_id,
            codebook_size=tokens.codebook_size,
        ),
    )
    with pytest.raises(DataError, match="no token colours"):
        pipeline.train(
            TINY,
            "transformer",
            tmp_path / "bare.npz",
            run,
            device="cpu",
            overwrite=True,
            overrides=["transformer.hint=true", "transformer_train.max_steps=2"],
        )


def test_ctrl_c_while_encoding_tokens_keeps_them_for_the_next_run(
    tiny_run, tiny_data, tmp_path, monkeypatch
):
    """Stage 2 encodes its images chunk by chunk; Ctrl-C keeps the chunks done, and the same
    command continues from there to the same tokens."""
    from maskgit_cli import tokens as tokens_mod

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / "tokenizer.pt", run / "tokenizer.pt")
    monkeypatch.setattr(tokens_mod, "CHUNK", 16)
    real, calls = tokens_mod.encode_images, []

    def stop_after_two(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    def train():
        overrides = ["transformer_train.max_steps=1"]
        pipeline.train(
            TINY, "transformer", tiny_data["train"], run, device="cpu", overrides=overrides
        )

    monkeypatch.setattr(tokens_mod, "encode_images", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        train()
    partial = tokens_mod.load_tokens(run / "tokens_train.partial.npz")
    assert len(partial.files) == 32  # two chunks of 16 of the 96 (48 images and their mirrors)
    monkeypatch.setattr(tokens_mod, "encode_images", real)
    train()
    assert not (run / "tokens_train.partial.npz").exists()
    done = tokens_mod.load_tokens(run / "tokens_train.npz")
    assert torch.equal(done.ids, tokens_mod.load_tokens(tiny_run / "tokens_train.npz").ids)
