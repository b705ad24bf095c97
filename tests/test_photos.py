"""Images of any size: run at the model's size, the fill brought back, the known pixels exact."""

import numpy as np
import pytest
import torch
from conftest import assert_error, invoke_json, make_images
from PIL import Image

from maskgit_cli import data, fit, pipeline


def _photo_set(root, sizes):
    """Photos of the given (W, H) sizes with a rectangular hole each (0 = missing)."""
    imgs, masks = root / "imgs", root / "masks"
    imgs.mkdir(parents=True)
    masks.mkdir()
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        arr = np.stack([(xx * 255 // w), (yy * 255 // h), rng.integers(0, 255, (h, w))], -1).astype(
            np.uint8
        )
        Image.fromarray(arr).save(imgs / f"p{i}.png")
        m = np.full((h, w), 255, np.uint8)
        m[h // 4 : h // 2, w // 3 : w // 2] = 0
        Image.fromarray(m).save(masks / f"p{i}.png")
    return imgs, masks


@pytest.mark.parametrize("fit_mode", ["pad", "tile"])
def test_any_size_keeps_size_and_known_pixels_bit_for_bit(fit_mode, tiny_run, tmp_path):
    sizes = [
        (40, 24),
        (24, 40),
        (33, 33),
        (10, 7),
        (16, 16),
    ]  # wide, tall, square, smaller, model's
    imgs, masks = _photo_set(tmp_path, sizes)
    res = pipeline.inpaint(
        imgs,
        masks,
        tmp_path / "o",
        model=tiny_run,
        device="cpu",
        fit=fit_mode,
        settings={"total_iter": 3},
    )
    assert res.count == len(sizes)
    for i, (w, h) in enumerate(sizes):
        inp = np.asarray(Image.open(imgs / f"p{i}.png").convert("RGB"))
        out = np.asarray(Image.open(tmp_path / "o" / f"p{i}.png").convert("RGB"))
        known = np.asarray(Image.open(masks / f"p{i}.png")) >= 128
        assert out.shape == (h, w, 3) and (out[known] == inp[known]).all()
        assert (out[~known] != inp[~known]).any()  # the hole was filled, not copied


def test_windows_cover_the_photo():
    for H, W in [(24, 40), (40, 24), (30, 100)]:
        for mode in fit.FITS:
            cover = torch.zeros(H, W)
            for w in fit.windows(H, W, mode):
                cover[max(0, w.top) : w.top + w.side, max(0, w.left) : w.left + w.side] += 1
            assert (cover > 0).all(), (H, W, mode)
    assert len(fit.windows(24, 40, "tile")) == 2 and len(fit.windows(24, 40, "pad")) == 1


def test_one_image_in_one_file_out(runner, tiny_run, tmp_path):
    imgs, masks = _photo_set(tmp_path, [(40, 24)])
    out = tmp_path / "filled.png"
    one = ["inpaint", str(imgs / "p0.png"), "--mask", str(masks / "p0.png"), "--out", str(out)]
    one += ["--model", str(tiny_run), "-T", "2"]
    res = invoke_json(runner, one)
    assert res["count"] == 1 and Image.open(out).size == (40, 24) and data.is_maskgit_png(out)
    again = invoke_json(runner, [*one, "--overwrite"])
    assert again["count"] == 1  # its own PNG is replaced
    mine = tmp_path / "mine.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(mine)  # a PNG maskgit did not write
    assert_error(
        runner,
        [
            "inpaint",
            imgs / "p0.png",
            "--mask",
            masks / "p0.png",
            "--out",
            mine,
            "--model",
            tiny_run,
            "--overwrite",
        ],
        "is not a image maskgit wrote",
    )
    assert_error(
        runner,
        [
            "inpaint",
            imgs / "p0.png",
            "--mask",
            masks,
            "--out",
            tmp_path / "x.png",
            "--model",
            tiny_run,
        ],
        "--mask must be its mask file",
    )


def test_an_output_folder_records_what_made_it_and_fid_still_reads_it(
    runner, tiny_data, tiny_run, tmp_path
):
    out = tmp_path / "o"
    res = invoke_json(
        runner,
        [
            "inpaint",
            str(tiny_data["masked"]),
            "--masks",
            str(tiny_data["masks"]),
            "--ground-truth",
            str(tiny_data["test"]),
            "--model",
            str(tiny_run),
            "-T",
            "2",
            "--out",
            str(out),
        ],
    )
    import csv
    import json

    record = json.loads((out / "inpaint.json").read_text())
    assert (
        record["model_ids"]["tokenizer"] == res["model_ids"]["tokenizer"]
        and "transformer" in record["model_ids"]
    )
    assert (
        record["settings"]["total_iter"] == 2
        and record["seed"] == 0
        and record["precision"] == res["precision"]
    )
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == 10 and {"file", "psnr_masked", "missing_fraction"} <= set(rows[0])
    assert len(data.list_images(out)) == 10  # the records are not taken for stray files


def test_make_masks_for_photos_of_any_size(runner, tmp_path):
    imgs = tmp_path / "imgs"
    make_images(imgs, 2, size=20)
    Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(imgs / "wide.png")
    res = invoke_json(runner, ["mask", str(imgs), "--out", str(tmp_path / "set")])
    assert res["count"] == 3 and Image.open(tmp_path / "set" / "masks" / "wide.png").size == (
        50,
        30,
    )
