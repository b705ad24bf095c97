"""The README's promises about what maskgit reads, as a catalogue (promises 1 and 5 for odd
inputs): hostile or odd images, masks, configs, checkpoints, statistics and token files are read
right or refused in one line, never a traceback and never a silently wrong result.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, assert_error, make_images, make_masks, mask_out, ok_json, run
from PIL import Image

from maskgit_cli import checkpoint, data, tokens

# ------------------------------------------------------------------------------- helpers


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (and holds almost nothing): it must be refused
    from its header, before anything is decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )
    return path


def _copy_with(folder: Path, tmp: Path, name: str, writer) -> Path:
    out = tmp / folder.name
    shutil.copytree(folder, out)
    writer(out / name)
    return out


# ------------------------------------------------------ 1. images that used to be tracebacks


@pytest.mark.parametrize("pixels", [(30000, 30000), (12000, 12000)])
@pytest.mark.parametrize("command", ["inpaint", "mask", "fid", "encode", "train"])
def test_a_huge_image_is_refused_from_its_header(
    command, pixels, runner, tiny_data, tiny_run, tmp_path
):
    bomb = tmp_path / "imgs"
    make_images(bomb, 3)
    png_claiming(bomb / "001.png", *pixels)
    args = {
        "inpaint": [
            "inpaint",
            bomb,
            "--masks",
            tiny_data["masks"],
            "--model",
            tiny_run,
            "--out",
            tmp_path / "o",
        ],
        "mask": ["mask", bomb, "--out", tmp_path / "o"],
        "fid": ["fid", bomb, tiny_data["test"], "--dims", "64"],
        "encode": ["encode", bomb, "--tokenizer", tiny_run, "--out", tmp_path / "t.npz"],
        "train": ["train", TINY, "--stage", "tokenizer", "--data", bomb, "--out", tmp_path / "run"],
    }[command]
    assert_error(runner, args, f"001.png: image is {pixels[0]}x{pixels[1]}")
    assert not (tmp_path / "o").exists() and not (tmp_path / "t.npz").exists()


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("tokenizer_train.batch_size=inf", "must be a finite whole number, got 'inf'"),
        ("tokenizer_train.batch_size=1e999", "must be a finite whole number, got '1e999'"),
        ("tokenizer_train.batch_size=1.5", "'1.5' is not a valid int"),
        ("tokenizer.channels=[16,32", "is not a valid list"),
        (
            "data.image_size=2",
            "data.image_size (2) must be a multiple of the tokenizer's downsampling, 4",
        ),
        ("data.image_size=18", "data.image_size (18) must be a multiple"),
        (
            "tokenizer_train.disc_layers=4",
            "tokenizer_train.disc_layers (4) is too deep for 16-pixel images",
        ),
    ],
)
def test_config_values_that_used_to_crash(override, fragment, runner, tiny_data, tmp_path):
    assert_error(
        runner,
        [
            "train",
            TINY,
            "--stage",
            "tokenizer",
            "--data",
            tiny_data["train"],
            "--out",
            tmp_path / "run",
            "--set",
            override,
        ],
        fragment,
    )
    assert not (tmp_path / "run").exists()


def test_a_config_that_is_not_utf8(runner, tiny_data, tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("data:\n  image_size: 16  # größe\n".encode("latin-1"))
    assert_error(
        runner,
        [
            "train",
            bad,
            "--stage",
            "tokenizer",
            "--data",
            tiny_data["train"],
            "--out",
            tmp_path / "r",
        ],
        "latin1.yaml: not a text file in UTF-8",
    )


def test_a_section_given_twice_in_yaml_is_refused_not_half_dropped(runner, tiny_data, tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text(
        "tokenizer_train:\n  lr: 0.001\ndata:\n  image_size: 16\ntokenizer_train:\n  batch_size: "
        "4\n"
    )
    assert_error(
        runner,
        [
            "train",
            twice,
            "--stage",
            "tokenizer",
            "--data",
            tiny_data["train"],
            "--out",
            tmp_path / "r",
        ],
        "twice.yaml: key 'tokenizer_train' appears twice (lines 1 and 5)",
    )


@pytest.mark.parametrize("seed", ["100000000000000000000000", "-1"])
def test_a_seed_out_of_range(seed, runner, inp, tmp_path):
    assert_error(
        runner,
        [*inp, "--out", tmp_path / "o", "--seed", seed],
        "--seed must be a whole number from 0",
    )
    assert not (tmp_path / "o").exists()


def _poisoned(run_dir: Path, tmp: Path, which: str) -> Path:
    """A copy of a run with NaN in one weight of its tokenizer's decoder or its transformer."""
    out = tmp / f"nan_{which}"
    shutil.copytree(run_dir, out)
    name = checkpoint.TOKENIZER if which == "decoder" else checkpoint.TRANSFORMER
    ck = checkpoint.load(out / name)
    key = next(
        k
        for k in ck["model"]
        if (k.startswith("decoder.") if which == "decoder" else k.endswith("weight"))
    )
    ck["model"][key] = torch.full_like(ck["model"][key], float("nan"))
    ck.pop("path")
    checkpoint.save(out / name, ck)
    return out


@pytest.mark.parametrize(
    "which,sampling", [("decoder", "sample"), ("transformer", "sample"), ("transformer", "greedy")]
)
def test_nan_weights_are_refused_when_they_load(which, sampling, runner, inp, tiny_run, tmp_path):
    bad = _poisoned(tiny_run, tmp_path, which)
    args = ["inpaint", *inp[1:4], "--model", bad, "--sampling", sampling, "--out", tmp_path / "o"]
    assert_error(runner, args, "holds NaN or infinite values")
    assert not (tmp_path / "o").exists()


def test_compare_schedules_on_one_image_is_refused_before_the_work(
    runner, tiny_data, tiny_run, real_inception, tmp_path
):
    one_m, one_k = tmp_path / "m", tmp_path / "k"
    one_m.mkdir()
    one_k.mkdir()
    shutil.copy(tiny_data["masked"] / "000.png", one_m)
    shutil.copy(tiny_data["masks"] / "000.png", one_k)
    assert_error(
        runner,
        [
            "compare-schedules",
            one_m,
            "--masks",
            one_k,
            "--ground-truth",
            tiny_data["test"],
            "--model",
            tiny_run,
            "--inception-weights",
            real_inception,
            "--out",
            tmp_path / "o",
        ],
        "FID needs at least 2 images per set and there is 1",
    )


def test_fid_weights_with_the_right_names_and_wrong_shapes(runner, real_inception, tmp_path):
    state = torch.load(real_inception, weights_only=True)
    key = "Conv2d_1a_3x3.conv.weight"
    state[key] = torch.zeros(16, 3, 3, 3)
    torch.save(state, tmp_path / "wrong.pth")
    assert_error(
        runner,
        ["fid-weights", "--from", tmp_path / "wrong.pth", "--out", tmp_path / "w.pth"],
        "does not fit FID-Inception",
    )
    assert not (tmp_path / "w.pth").exists()


def test_a_checkpoint_whose_config_is_a_list(runner, inp, tiny_run, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_run, bad)
    ck = checkpoint.load(bad / checkpoint.TRANSFORMER)
    ck["config"] = [1, 2, 3]
    ck.pop("path")
    checkpoint.save(bad / checkpoint.TRANSFORMER, ck)
    assert_error(
        runner,
        ["inpaint", *inp[1:4], "--model", bad, "--out", tmp_path / "o"],
        "its saved config is a list, not a mapping",
    )


def test_statistics_whose_features_have_another_width(runner, tiny_data, tmp_path):
    bad = tmp_path / "s.npz"
    np.savez(bad, mu=np.zeros(8), sigma=np.eye(8), count=np.array(5), features=np.ones((5, 6)))
    assert_error(runner, ["fid", bad, bad, "--dims", "64"], "do not fit mu (8 dims)")


def test_a_token_file_with_negative_ids(runner, tiny_data, tiny_run, tmp_path):
    bad = tmp_path / "neg.npz"
    np.savez(
        bad,
        ids=np.full((4, 4, 4), -3, np.int64),
        files=np.array(["a"] * 4),
        tokenizer_id=np.array("x"),
        grid=np.array(4),
        codebook_size=np.array(32),
    )
    assert_error(
        runner,
        [
            "train",
            TINY,
            "--stage",
            "transformer",
            "--data",
            bad,
            "--tokenizer",
            tiny_run,
            "--out",
            tmp_path / "run",
        ],
        "neg.npz: ids outside [0, 32)",
    )


# ------------------------------------------------------------ 1b. messages that point the right way


def test_help_shows_every_default_including_the_models(runner):
    r = runner.invoke(
        __import__("maskgit_cli.cli", fromlist=["app"]).app,
        ["inpaint", "--help"],
        env={"COLUMNS": "200"},
    )
    assert r.exit_code == 0
    assert r.stdout.count("[default:") >= 20, r.stdout  # the model's decode defaults included


@pytest.mark.parametrize(
    "content,fragment",
    [
        (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n",
            "a Git LFS pointer, not the file",
        ),
        (bytes(range(256)) * 8, "its bytes are no checkpoint format"),
        (b"", "the file is empty"),
    ],
)
def test_odd_checkpoint_files_are_not_called_code(content, fragment, runner, tiny_data, tmp_path):
    (tmp_path / "model.pt").write_bytes(content)
    args = [
        "encode",
        tiny_data["test"],
        "--tokenizer",
        tmp_path / "model.pt",
        "--out",
        tmp_path / "t.npz",
    ]
    assert_error(runner, args, fragment)
    assert "run code" not in run(runner, args).stderr


def test_mask_never_names_a_flag_it_lacks(runner, tmp_path):
    imgs = tmp_path / "imgs"
    make_images(imgs, 2, size=16)
    make_images(imgs, 1, size=24, prefix="big_")
    res = ok_json(runner, ["mask", imgs, "--out", tmp_path / "o"])  # any size: each image's own
    assert res["count"] == 3
    assert Image.open(tmp_path / "o" / "masks" / "big_000.png").size == (24, 24)


def test_a_checkpoint_that_does_not_match_its_own_config_does_not_say_check_config(
    runner, inp, tiny_run, tmp_path
):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_run, bad)
    ck = checkpoint.load(bad / checkpoint.TRANSFORMER)
    ck["config"]["transformer"]["dim"] = 64
    ck.pop("path")
    checkpoint.save(bad / checkpoint.TRANSFORMER, ck)
    r = run(runner, ["inpaint", *inp[1:4], "--model", bad, "--out", tmp_path / "o"])
    assert (
        r.exit_code == 1
        and "does not match its own saved config" in r.stderr
        and "--config" not in r.stderr
    )


def test_compare_schedules_never_names_dims_it_lacks(
    runner, tiny_data, tiny_run, real_inception, tmp_path
):
    stats = tmp_path / "ref.npz"
    np.savez(stats, mu=np.zeros(64), sigma=np.eye(64), count=np.array(10))
    r = run(
        runner,
        [
            "compare-schedules",
            tiny_data["masked"],
            "--masks",
            tiny_data["masks"],
            "--ground-truth",
            tiny_data["test"],
            "--model",
            tiny_run,
            "--inception-weights",
            real_inception,
            "--reference-stats",
            stats,
            "--out",
            tmp_path / "o",
        ],
    )
    assert r.exit_code == 1 and "--dims" not in r.stderr and "same feature size" in r.stderr


def test_the_harmonic_fill_works_at_any_size(runner, tmp_path):
    imgs, masks, masked = tmp_path / "i", tmp_path / "m", tmp_path / "x"
    make_images(imgs, 1, size=20)
    make_images(imgs, 1, size=12, prefix="small_")
    masks.mkdir()
    for p in imgs.iterdir():
        size = Image.open(p).size
        m = np.full(size[::-1], 255, np.uint8)
        m[2:6, 3:8] = 0
        Image.fromarray(m).save(masks / p.name)
    mask_out(imgs, masks, masked)
    res = ok_json(
        runner, ["inpaint", masked, "--masks", masks, "--fill", "harmonic", "--out", tmp_path / "o"]
    )
    assert res["count"] == 2 and Image.open(tmp_path / "o" / "000.png").size == (20, 20)


# ------------------------------------------------------------------ 5. no silent wrong results


def test_two_inputs_that_would_share_an_output_name_are_refused(runner, inp, tmp_path):
    imgs, masks = tmp_path / "imgs", tmp_path / "masks"
    make_images(imgs, 2)
    (imgs / "000.png").rename(imgs / "cat.png")
    Image.open(imgs / "001.png").save(imgs / "cat.jpg", format="JPEG")
    (imgs / "001.png").unlink()
    make_masks(masks, 2)
    (masks / "000.png").rename(masks / "cat.png")
    (masks / "001.png").rename(masks / "cat.jpg.png")
    assert_error(
        runner,
        ["inpaint", imgs, "--masks", masks, *inp[4:], "--out", tmp_path / "o"],
        "cat.jpg and cat.png in",
    )
    assert_error(
        runner, ["mask", imgs, "--out", tmp_path / "m"], "would both be written as cat.png"
    )
    assert not (tmp_path / "o").exists() and not (tmp_path / "m").exists()


def test_a_16_bit_gray_png_is_read_as_its_values_not_white(tmp_path):
    ramp = (np.arange(16 * 16).reshape(16, 16) * 256).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    rgb = data.read_rgb(tmp_path / "deep.png")
    expect = np.round(ramp / 65535 * 255).astype(np.uint8)
    assert (rgb[..., 0] == expect).all() and (rgb[..., 1] == expect).all() and rgb.max() < 255


def test_exif_orientation_is_applied_to_images_and_outputs(runner, inp, tmp_path):
    """A photo stored sideways with an EXIF orientation tag: maskgit sees (and writes) it as viewers
    show it, so the mask, drawn on what the user sees, covers the right region."""
    src, masks, stored = tmp_path / "src", tmp_path / "masks", tmp_path / "stored"
    make_images(src, 2)
    masks.mkdir()
    stored.mkdir()
    for p in sorted(src.iterdir()):
        m = np.full((16, 16), 255, np.uint8)
        m[:, :6] = 0  # the left of the picture as seen
        Image.fromarray(m).save(masks / p.name)
        shown = np.asarray(Image.open(p).convert("RGB")).copy()
        shown[m == 0] = 128
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
        Image.fromarray(shown).rotate(90, expand=True).save(stored / p.name, exif=exif)
    assert not np.array_equal(
        np.asarray(Image.open(stored / "000.png")), data.read_rgb(stored / "000.png")
    )
    ok_json(runner, ["inpaint", stored, "--masks", masks, *inp[4:], "--out", tmp_path / "o"])
    for p in sorted(src.iterdir()):
        out = np.asarray(Image.open(tmp_path / "o" / p.name).convert("RGB"))
        assert (
            out[:, 6:] == np.asarray(Image.open(p).convert("RGB"))[:, 6:]
        ).all()  # known pixels, upright


def _mask_variant(kind: str, hole: np.ndarray) -> Image.Image:
    known = ~hole
    if kind == "0/1":
        return Image.fromarray(known.astype(np.uint8))
    if kind == "0/100":
        return Image.fromarray((known * 100).astype(np.uint8))
    if kind == "red only":
        rgb = np.zeros((*hole.shape, 3), np.uint8)
        rgb[..., 0] = known * 255
        return Image.fromarray(rgb)
    if kind == "alpha only":
        rgba = np.zeros((*hole.shape, 4), np.uint8)
        rgba[..., 3] = known * 255
        return Image.fromarray(rgba)
    if kind == "jpeg 0/255":
        img = Image.fromarray((known * 255).astype(np.uint8))
        import io

        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        return Image.open(buf)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["0/1", "0/100", "red only", "alpha only", "jpeg 0/255"])
def test_two_valued_masks_of_any_levels_read_alike(kind, tmp_path):
    hole = np.zeros((32, 32), bool)
    hole[8:20, 4:14] = True
    _mask_variant(kind, hole).save(tmp_path / "m.png")
    got = data.read_mask(tmp_path / "m.png", 32).numpy()
    assert (got == hole).mean() > 0.99 and got[10:18, 6:12].all() and not got[25:, 20:].any()


def test_masks_pointing_at_the_photos_are_refused(runner, inp, tiny_data, tmp_path):
    assert_error(
        runner, [*inp, "--masks", tiny_data["test"], "--out", tmp_path / "o"], "not a mask"
    )
    assert not (tmp_path / "o").exists()


def test_inverted_masks_are_detected_and_the_flag_named(runner, inp, tiny_data, tmp_path):
    inverted = tmp_path / "inv"
    inverted.mkdir()
    for p in tiny_data["masks"].iterdir():
        Image.fromarray(255 - np.asarray(Image.open(p))).save(inverted / p.name)
    assert_error(runner, [*inp, "--masks", inverted, "--out", tmp_path / "o"], "looks inverted")
    r = run(runner, [*inp, "--masks", inverted, "--out", tmp_path / "o"])
    assert "--mask-missing white" in r.stderr
    ok_json(runner, [*inp, "--masks", inverted, "--mask-missing", "white", "--out", tmp_path / "o"])


def test_more_than_65536_codes_keep_their_ids(tmp_path):
    ids = torch.tensor([[[0, 65535], [65536, 69999]]])
    tokens.save_tokens(
        tmp_path / "t.npz",
        tokens.TokenFile(ids=ids, files=["a"], tokenizer_id="x", codebook_size=70000),
    )
    assert torch.equal(tokens.load_tokens(tmp_path / "t.npz").ids, ids)


@pytest.mark.parametrize("size", [1, 7])
def test_mask_refuses_images_too_small_for_a_hole(size, runner, tmp_path):
    imgs = tmp_path / "imgs"
    make_images(imgs, 1, size=size)
    assert_error(runner, ["mask", imgs, "--out", tmp_path / "o"], f"image is {size}x{size}")


def test_mask_always_makes_a_hole_with_known_pixels_around_it(runner, tmp_path):
    imgs = tmp_path / "imgs"
    make_images(imgs, 20, size=8)
    ok_json(runner, ["mask", imgs, "--out", tmp_path / "o"])
    for p in (tmp_path / "o" / "masks").iterdir():
        m = np.asarray(Image.open(p))
        assert (m == 0).any() and (m == 255).any()


def test_statistics_whose_sigma_is_no_covariance_are_refused(runner, tiny_data, tmp_path):
    bad = tmp_path / "s.npz"
    sigma = np.eye(64)
    sigma[0, 0] = -1000.0  # a negative variance
    np.savez(bad, mu=np.zeros(64), sigma=sigma)
    assert_error(runner, ["fid", bad, bad, "--dims", "64"], "sigma is not a covariance matrix")
    asym = np.eye(64)
    asym[0, 1] = 5.0
    np.savez(bad, mu=np.zeros(64), sigma=asym)
    assert_error(runner, ["fid", bad, bad, "--dims", "64"], "sigma is not a covariance matrix")


@pytest.mark.parametrize(
    "flag,value", [("--seeds", "1,1,1"), ("--sweet-spots", "2,2"), ("--schedules", "cosine,cosine")]
)
def test_compare_schedules_refuses_repeated_values(
    flag, value, runner, tiny_data, tiny_run, tmp_path
):
    assert_error(
        runner,
        [
            "compare-schedules",
            tiny_data["masked"],
            "--masks",
            tiny_data["masks"],
            "--ground-truth",
            tiny_data["test"],
            "--model",
            tiny_run,
            "-T",
            "2",
            flag,
            value,
            "--out",
            tmp_path / "o",
        ],
        f"{flag} repeats",
    )
