"""The bundled cats64 model and samples: present, small, of the quality the model card reports,
and used by `maskgit inpaint` / `maskgit demo` when no --model is given."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import invoke_json
from PIL import Image

from maskgit_cli import checkpoint, data, metrics, pairing, pipeline, tokens
from maskgit_cli.train.transformer import evaluate_transformer

SAMPLES = pipeline.SAMPLES


def test_bundle_is_small_and_complete():
    files = list(pipeline.BUNDLED.iterdir())
    assert {f.name for f in files} >= {checkpoint.TOKENIZER, checkpoint.TRANSFORMER}
    assert (pipeline.BUNDLED.parent / "MODEL_CARD.md").is_file()
    assert sum(f.stat().st_size for f in files) <= 30 * 2**20
    n = len(data.list_images(SAMPLES / "masked"))
    assert 8 <= n <= 16 and n == len(data.list_images(SAMPLES / "masks")) == len(
        data.list_images(SAMPLES / "images")
    )


@pytest.fixture(scope="module")
def bundled():
    """The bundled model, loaded once, and the bundled ground-truth cats with their tokens (and
    token colours, which a transformer with hints sees)."""
    tokenizer, tr, cfg = checkpoint.load_transformer(pipeline.BUNDLED, "cpu")
    images = data.load_images(data.list_images(SAMPLES / "images"), cfg.data.image_size)
    with torch.no_grad():
        ids, colors = tokens.encode_images(tokenizer, images, cfg, torch.device("cpu"))
    return tokenizer, tr, cfg, images, ids, colors


def test_bundled_tokenizer_reconstructs_test_cats(bundled):
    """The model card's 21.7 dB val PSNR (8x8 tokens, 512 codes), checked on the 12 bundled
    test-split cats (fp16 weights; they measured 21.7 dB)."""
    tokenizer, _tr, cfg, images, ids, _colors = bundled
    with torch.no_grad():
        rec = data.denormalize(tokenizer.decode_ids(ids), cfg.data)
    assert metrics.psnr(rec, images.float() / 255).mean().item() >= 21.0
    assert (
        ids.shape[1:] == (8, 8) == (cfg.grid, cfg.grid) and int(ids.max()) < tokenizer.codebook_size
    )


def test_bundled_transformer_beats_chance(bundled):
    """Masked-token loss well below the uniform ln(K) and accuracy far above 1/K: it learned
    cats."""
    tokenizer, tr, _cfg, _images, ids, colors = bundled
    ev = evaluate_transformer(tr, ids, (0.5,), torch.device("cpu"), colors=colors)
    K = tokenizer.codebook_size
    assert ev["val_loss"] < np.log(K) - 0.5
    assert ev["accuracy"]["0.5"] > 5 / K


def test_demo_on_bundled_model(runner, tmp_path):
    out = invoke_json(runner, ["demo", "--out", str(tmp_path / "demo"), "--device", "cpu"])
    n = len(data.list_images(SAMPLES / "masked"))
    assert out["count"] == n and out["model"] == str(pipeline.BUNDLED)
    grid = Image.open(tmp_path / "demo" / "grid.png")
    assert grid.width > grid.height  # samples side by side, three to a row: a grid, not a column
    # paste-back: every known pixel of every result equals its input
    for p, m in pairing.pair_masks(SAMPLES / "masked", SAMPLES / "masks").pairs:
        result = np.asarray(
            Image.open(tmp_path / "demo" / "results" / f"{p.stem}.png").convert("RGB")
        )
        known = ~data.read_mask(m, 64).numpy()
        assert (result[known] == np.asarray(Image.open(p).convert("RGB"))[known]).all()
    assert (
        np.isfinite(out["metrics"]["psnr_masked"])
        and out["metrics"]["psnr"] > out["metrics"]["psnr_masked"]
    )


def test_bundled_model_fills_near_interpolation(runner, tmp_path):
    """The model card's promise on the 12 bundled test cats: the model's masked-region PSNR is at
    least the harmonic (Laplace) fill's minus 3 dB (a sampler pays about that against a smooth
    mean)."""

    def masked_psnr(*extra):
        out = invoke_json(
            runner,
            [
                "inpaint",
                str(SAMPLES / "masked"),
                "--masks",
                str(SAMPLES / "masks"),
                "--ground-truth",
                str(SAMPLES / "images"),
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "_".join(("out",) + extra)),
                *extra,
            ],
        )
        assert out["count"] == len(data.list_images(SAMPLES / "masked"))
        return out["metrics"]["psnr_masked"]

    ours, interpolation = masked_psnr(), masked_psnr("--fill", "harmonic")
    assert ours >= interpolation - 3.0, (ours, interpolation)


def test_inpaint_defaults_to_bundled_model(runner, tmp_path, bundled):
    out = invoke_json(
        runner,
        [
            "inpaint",
            str(SAMPLES / "masked"),
            "--masks",
            str(SAMPLES / "masks"),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--batch-size",
            "5",
        ],
    )
    assert out["model"] == str(pipeline.BUNDLED)
    cfg = bundled[2]  # settings default to the bundle's decode section
    for key in ("schedule", "total_iter", "sweet_spot"):
        assert out["settings"][key] == getattr(cfg.decode, key)
    assert len(list((tmp_path / "out").glob("*.png"))) == out["count"]


def test_fine_tuning_the_bundled_transformer_starts_from_its_weights(runner, tmp_path):
    """The README's fine-tune: the bundled tokenizer and transformer start a run on one's own
    images (here the sample cats, at a learning rate too small to move the weights)."""
    run = tmp_path / "ft"
    out = invoke_json(
        runner,
        [
            "train",
            "cats64",
            "--stage",
            "transformer",
            "--data",
            str(SAMPLES / "images"),
            "--tokenizer",
            "cats64",
            "--out",
            str(run),
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--set",
            "transformer_train.init=cats64",
            "--set",
            "transformer_train.lr=1e-9",
            "--set",
            "transformer_train.warmup_steps=0",
        ],
    )
    assert out["steps"] == 2 and any("started from the weights of" in w for w in out["warnings"])
    start = checkpoint.load(pipeline.BUNDLED / "transformer.pt")["model"]
    tuned = checkpoint.load(run / "transformer.pt")["model"]
    assert all(torch.allclose(tuned[k], start[k].float(), atol=1e-6) for k in start)
    checkpoint.load_transformer(run)  # it pairs with the bundled tokenizer the run copied
