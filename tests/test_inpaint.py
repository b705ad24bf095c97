"""Inpainting a folder with the tiny trained model."""

import numpy as np
import pytest
import torch
from PIL import Image

from maskgit_cli import checkpoint, data, pipeline, runtime
from maskgit_cli.errors import CheckpointError, ConfigError, DataError, OutputExistsError
from maskgit_cli.inpaint import InpaintSettings, feather_alpha, paste_back


def _run(tiny_run, tiny_data, out, **kw):
    return pipeline.inpaint(
        tiny_data["masked"], tiny_data["masks"], out, model=tiny_run, device="cpu", **kw
    )


def test_paste_back_leaves_known_pixels_bit_identical(tiny_run, tiny_data, tmp_path):
    res = _run(tiny_run, tiny_data, tmp_path / "out", settings=InpaintSettings(total_iter=4))
    assert res.count == 10 and res.images_per_second > 0
    for p in sorted(tiny_data["masked"].iterdir()):
        inp = np.asarray(Image.open(p).convert("RGB"))
        out = np.asarray(Image.open(tmp_path / "out" / p.name).convert("RGB"))
        known = np.asarray(Image.open(tiny_data["masks"] / p.name)) >= 128
        assert (inp[known] == out[known]).all()
        assert out.shape == inp.shape


def test_same_seed_same_output_and_batch_equals_one_by_one(tiny_run, tiny_data, tmp_path):
    s = InpaintSettings(total_iter=5)
    _run(tiny_run, tiny_data, tmp_path / "a", settings=s, batch_size=10, seed=3)
    _run(tiny_run, tiny_data, tmp_path / "b", settings=s, batch_size=1, seed=3)
    _run(tiny_run, tiny_data, tmp_path / "c", settings=s, batch_size=4, seed=4)
    same = [
        np.array_equal(
            np.asarray(Image.open(tmp_path / "a" / n)), np.asarray(Image.open(tmp_path / "b" / n))
        )
        for n in sorted(x.name for x in (tmp_path / "a").glob("*.png"))
    ]
    assert all(same)
    differs = [
        not np.array_equal(
            np.asarray(Image.open(tmp_path / "a" / n)), np.asarray(Image.open(tmp_path / "c" / n))
        )
        for n in sorted(x.name for x in (tmp_path / "a").glob("*.png"))
    ]
    assert any(differs)


def test_no_paste_back_gives_the_full_reconstruction(tiny_run, tiny_data, tmp_path):
    res = _run(
        tiny_run,
        tiny_data,
        tmp_path / "o",
        settings=InpaintSettings(total_iter=3, paste_back=False),
        ground_truth=tiny_data["test"],
    )
    assert res.metrics is not None and res.metrics["psnr"] < 99


def test_ground_truth_metrics_and_save_steps(tiny_run, tiny_data, tmp_path):
    res = _run(
        tiny_run,
        tiny_data,
        tmp_path / "o",
        settings=InpaintSettings(total_iter=4, sweet_spot=3),
        ground_truth=tiny_data["test"],
        save_steps=True,
    )
    m = res.metrics
    assert set(m) == {"psnr", "ssim", "l1", "psnr_masked", "ssim_masked", "l1_masked"}
    assert m["psnr"] > m["psnr_masked"]  # known pixels are exact, so the whole image scores higher
    figure = Image.open(tmp_path / "o" / "steps" / "000.png")  # labelled: a column per step run
    assert (
        figure.width >= 3 * 96 and figure.height >= 2 * 96
    )  # 3 steps (sweet spot 3), 2 rows, 96 px tiles


def test_nothing_missing_copies_through_and_all_missing_generates(tiny_run, tiny_data, tmp_path):
    masks = tmp_path / "m"
    masks.mkdir()
    names = sorted(p.name for p in tiny_data["test"].iterdir())
    for i, n in enumerate(names):
        Image.fromarray(np.full((16, 16), 255 if i % 2 == 0 else 0, np.uint8)).save(masks / n)
    res = pipeline.inpaint(
        tiny_data["test"],
        masks,
        tmp_path / "o",
        model=tiny_run,
        device="cpu",
        settings=InpaintSettings(total_iter=3),
        ground_truth=tiny_data["test"],
    )
    for r in res.per_image[::2]:
        assert r["masked_tokens"] == 0 and r["psnr"] >= 99  # copied through
    for r in res.per_image[1::2]:
        assert r["masked_tokens"] == 16  # generated from scratch


def test_feather_blends_only_near_the_seam():
    missing = torch.zeros(1, 9, 9, dtype=torch.bool)
    missing[0, 4, 4] = True
    a = feather_alpha(missing, 2)[0, 0]
    assert (
        a[4, 4] == 1
        and a[3, 3] == pytest.approx(2 / 3)
        and a[2, 2] == pytest.approx(1 / 3)
        and a[0, 0] == 0
    )
    gen = torch.ones(1, 3, 9, 9)
    inp = torch.zeros(1, 3, 9, 9, dtype=torch.uint8)
    out = paste_back(gen, inp, missing, feather=2)
    assert out[0, 0, 4, 4] == 255 and out[0, 0, 0, 0] == 0 and 0 < out[0, 0, 3, 3] < 255


def test_error_cases(tiny_run, tiny_data, tmp_path):
    _run(tiny_run, tiny_data, tmp_path / "exists", settings=InpaintSettings(total_iter=2))
    with pytest.raises(OutputExistsError, match="--overwrite"):
        _run(tiny_run, tiny_data, tmp_path / "exists")
    bad = tmp_path / "badmasks"
    bad.mkdir()
    for p in tiny_data["masks"].iterdir():
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(bad / p.name)
    with pytest.raises(DataError, match="mask is 8x8, expected 16x16"):
        pipeline.inpaint(tiny_data["masked"], bad, tmp_path / "o2", model=tiny_run, device="cpu")
    assert not (tmp_path / "o2").exists()  # nothing half-written
    (bad / "000.png").unlink()
    with pytest.raises(DataError, match="no mask .* for: 000.png"):
        pipeline.inpaint(tiny_data["masked"], bad, tmp_path / "o3", model=tiny_run, device="cpu")
    with pytest.raises(ConfigError, match="sweet-spot"):
        _run(
            tiny_run,
            tiny_data,
            tmp_path / "o4",
            settings=InpaintSettings(total_iter=4, sweet_spot=6),
        )
    with pytest.raises(CheckpointError, match="not found"):
        pipeline.inpaint(
            tiny_data["masked"], tiny_data["masks"], tmp_path / "o5", model=tmp_path, device="cpu"
        )


def test_tokenizer_and_transformer_with_different_codebooks(tiny_run, tiny_data, tmp_path):
    import shutil

    from conftest import TINY

    bad = tmp_path / "mixed"
    shutil.copytree(tiny_run, bad)
    pipeline.train(
        TINY,
        "tokenizer",
        tiny_data["train"],
        bad,
        device="cpu",
        overwrite=True,
        overrides=["tokenizer.codebook_size=16", "tokenizer_train.max_steps=1"],
    )
    with pytest.raises(CheckpointError, match="trained on tokenizer|codes"):
        pipeline.inpaint(
            tiny_data["masked"], tiny_data["masks"], tmp_path / "o", model=bad, device="cpu"
        )


def test_harmonic_fill_needs_no_model_and_equals_the_laplace_solution(runner, tiny_data, tmp_path):
    from conftest import invoke_json

    from maskgit_cli.harmonic import harmonic_fill

    out = invoke_json(
        runner,
        [
            "inpaint",
            str(tiny_data["masked"]),
            "--masks",
            str(tiny_data["masks"]),
            "--out",
            str(tmp_path / "h"),
            "--fill",
            "harmonic",
            "--ground-truth",
            str(tiny_data["test"]),
        ],
    )
    assert out["model"] == "none (harmonic fill)" and out["settings"]["fill"] == "harmonic"
    assert out["transformer_passes"] == 0 and out["per_image"][0]["masked_tokens"] is None
    p = sorted(tiny_data["masked"].iterdir())[0]
    missing = data.read_mask(tiny_data["masks"] / p.name, 16).numpy()
    masked = np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1) / 255.0
    expect = (
        np.round(np.clip(harmonic_fill(masked, missing), 0, 1) * 255)
        .astype(np.uint8)
        .transpose(1, 2, 0)
    )
    assert np.array_equal(np.asarray(Image.open(tmp_path / "h" / p.name).convert("RGB")), expect)


def test_oracle_fill_is_the_tokenizers_reconstruction_of_the_truth(tiny_run, tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="--fill oracle needs --ground-truth"):
        _run(tiny_run, tiny_data, tmp_path / "x", settings={"fill": "oracle"})
    oracle = _run(
        tiny_run,
        tiny_data,
        tmp_path / "o",
        settings={"fill": "oracle"},
        ground_truth=tiny_data["test"],
    )
    full = _run(
        tiny_run,
        tiny_data,
        tmp_path / "r",
        settings={"fill": "oracle", "paste_back": False},
        ground_truth=tiny_data["test"],
    )
    # paste-back only changes known pixels: inside the hole both equal decode(encode(truth))
    assert oracle.metrics["psnr_masked"] == pytest.approx(full.metrics["psnr_masked"])
    assert oracle.transformer_passes == 0 and oracle.metrics["psnr"] > full.metrics["psnr"]
    # a tokenizer alone (a run before stage 2) is enough for its oracle row
    import shutil

    tok_only = tmp_path / "tok_only"
    tok_only.mkdir()
    shutil.copy(tiny_run / "tokenizer.pt", tok_only / "tokenizer.pt")
    alone = pipeline.inpaint(
        tiny_data["masked"],
        tiny_data["masks"],
        tmp_path / "a",
        model=tok_only,
        device="cpu",
        settings={"fill": "oracle"},
        ground_truth=tiny_data["test"],
    )
    assert alone.metrics["psnr_masked"] == pytest.approx(oracle.metrics["psnr_masked"])


def test_harmonic_prefill_changes_only_what_the_encoder_sees(tiny_run, tiny_data, tmp_path):
    """The prefill feeds the context encoder; known pixels are still pasted back bit-identically."""
    res = _run(
        tiny_run, tiny_data, tmp_path / "p", settings={"prefill": "harmonic", "total_iter": 3}
    )
    assert res.settings["prefill"] == "harmonic"
    for p in sorted(tiny_data["masked"].iterdir()):
        known = np.asarray(Image.open(tiny_data["masks"] / p.name)) >= 128
        assert (
            np.asarray(Image.open(p).convert("RGB"))[known]
            == np.asarray(Image.open(tmp_path / "p" / p.name).convert("RGB"))[known]
        ).all()
    with pytest.raises(ConfigError, match="--prefill must be one of none, harmonic"):
        _run(tiny_run, tiny_data, tmp_path / "q", settings={"prefill": "gray"})


def _tiny_batch(tiny_data):
    names = sorted(p.name for p in tiny_data["masked"].iterdir())[:6]
    masked = data.load_images([tiny_data["masked"] / n for n in names], 16)
    missing = torch.stack([data.read_mask(tiny_data["masks"] / n, 16) for n in names])
    return masked, missing


def test_candidates_keep_the_fill_that_continues_the_seam_best(tiny_run, tiny_data):
    from maskgit_cli.inpaint import Inpainter, seam_error

    tok, tr, cfg = checkpoint.load_transformer(tiny_run, torch.device("cpu"))
    masked, missing = _tiny_batch(tiny_data)
    assert missing.any() and not missing.all()

    def run(n, rows=slice(None)):
        ip = Inpainter(
            tok,
            tr,
            cfg,
            InpaintSettings(total_iter=4, candidates=n, paste_back=False),
            torch.device("cpu"),
        )
        gens = [runtime.image_generator(7, i) for i in range(6)][rows]
        return ip(masked[rows], missing[rows], gens), ip.transformer_passes

    (one, p1), (three, p3) = run(1), run(3)
    assert p3 == 3 * p1  # every candidate decoded in full
    e1 = seam_error(one.images.float() / 255, masked, missing)
    e3 = seam_error(three.images.float() / 255, masked, missing)
    # The first candidate is the single-candidate fill; the kept one is never worse at the seam
    # (up to the 8-bit rounding of the images measured here), and better somewhere.
    assert (e3 <= e1 + 1e-4).all() and (e3 < e1 - 1e-6).any()
    kept_first = (three.ids == one.ids).flatten(1).all(1)
    assert torch.equal(three.images[kept_first], one.images[kept_first])
    # A batch still decodes exactly as its images would one by one.
    for i in (0, 3):
        alone, _ = run(3, slice(i, i + 1))
        assert torch.equal(alone.ids[0], three.ids[i])


def test_seam_error_sees_only_the_band_around_the_hole():
    from maskgit_cli.inpaint import seam_error

    truth = torch.rand(1, 3, 16, 16)
    missing = torch.zeros(1, 16, 16, dtype=torch.bool)
    missing[:, 6:10, 6:10] = True
    u8 = data.to_uint8(truth)
    exact = u8.float() / 255
    assert seam_error(exact, u8, missing).item() < 1e-12
    wild = exact.clone()
    wild[..., 6:10, 6:10] = 1 - wild[..., 6:10, 6:10]  # the hole itself is not judged
    wild[..., :2, :] = 0  # nor pixels beyond the band (3 px)
    assert seam_error(wild, u8, missing).item() < 1e-12
    shifted = (exact + 0.1).clamp(max=2)
    assert seam_error(shifted, u8, missing).item() == pytest.approx(0.01, rel=1e-4)
    assert (
        seam_error(shifted, u8, missing, centered=True).item() < 1e-10
    )  # a constant offset: none left
