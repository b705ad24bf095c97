"""The benchmark scripts still run against the current models (the timing itself is never
asserted: speed targets live in benchmarks/, not in tests). cats64 is the config with the colour
hint, which a benchmark that builds its own inputs must pass like training and decoding do."""

from __future__ import annotations

import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.mark.parametrize("name", ["tiny", "cats64"])
def test_benchmarks_run_on_each_config(name):
    import bench_inpaint
    import bench_tokenizer
    import bench_transformer
    from common import precisions

    precs = precisions("fp32,bf16")  # bf16 only where this CPU has it
    for tok, tr, inp in zip(
        bench_tokenizer.bench(name, 2, precs, rounds=1),
        bench_transformer.bench(name, 2, precs, rounds=1),
        bench_inpaint.bench(name, 2, 2, 2, precs, rounds=1),
        strict=True,
    ):
        assert tok["train_images_per_second"] > 0 and tok["encode_images_per_second"] > 0
        # cats64's stage 1 turns its critic on partway (disc_start), tiny's has none
        if name == "cats64":
            assert tok["gan_train_images_per_second"] > 0
        else:
            assert tok["gan_train_images_per_second"] is None
        assert tr["tokens_per_second"] > 0 and tr["achieved_flops"] > 0
        assert inp["images_per_second"] > 0 and inp["transformer_achieved_flops"] > 0
        assert tok["precision"] == tr["precision"] == inp["precision"]


def test_floor_splits_the_oracle(tiny_data, tiny_run, tmp_path, monkeypatch):
    """floor.py's oracle from the codes is `--fill oracle` itself (same pixels, same FID); the
    codebook figures count every token of the set."""
    import shutil

    import floor
    from conftest import TinyFeatures

    from maskgit_cli import api, fid_weights, pipeline

    monkeypatch.setattr(fid_weights, "load_inception", lambda *a, **k: TinyFeatures(64))
    val = tmp_path / "val"
    for sub, src in (("images", "test"), ("masked", "masked"), ("masks", "masks")):
        shutil.copytree(tiny_data[src], val / sub)
    stats = tmp_path / "stats.npz"
    pipeline.fid(val / "images", val / "masked", dims=64, save_stats=stats, device="cpu")
    row = floor.measure(str(tiny_run), val, stats, "poisson", batch=4, dims=64)

    out = tmp_path / "oracle"
    res = pipeline.inpaint(
        val / "masked",
        val / "masks",
        out,
        model=tiny_run,
        settings={"fill": "oracle", "blend": "poisson"},
        ground_truth=val / "images",
        device="cpu",
        precision="fp32",
    )
    codes = row["oracle_codes"]
    assert codes["psnr_masked"] == pytest.approx(res.metrics["psnr_masked"], abs=1e-4)
    assert codes["fid"] == pytest.approx(pipeline.fid(out, stats, dims=64, device="cpu").fid)
    grid = api.load_tokenizer_only(tiny_run, device="cpu").config.grid
    assert row["tokens"] == 10 * grid * grid
    assert 0 < row["codes_used"] <= row["codebook_size"]
    assert 1 <= row["perplexity"] <= row["codes_used"] + 1e-3
    assert 0 <= row["latent_gap_median"] and row["oracle_latent"]["psnr_masked"] > 0
