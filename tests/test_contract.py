"""The README's promises under bad input, as a catalogue. Every case runs the real command through
CliRunner, with and without --json, and checks the exit code, the message, the absence of a
traceback, the JSON contract and the state of the output afterwards.

Headings are the README's promises:
  1. A user or data error is one line on stderr and exit 1, never a traceback.
  2. --json prints exactly one JSON object on stdout, {"error": ...} on failure (usage errors,
     exit 2, and Ctrl-C, exit 130, included).
  3. Outputs are never overwritten without --overwrite, and --overwrite replaces only
     maskgit's own earlier output.
  4. Outputs are written whole or not at all.
  5. No silent wrong result: a value that makes no sense is refused, not used.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY, assert_error, make_images, make_masks, mask_out, ok_json, run
from PIL import Image

from maskgit_cli import checkpoint, data
from maskgit_cli.cli import app

# ---------------------------------------------------------------- 1. one line, exit 1, no traceback


@pytest.mark.parametrize("command", ["inpaint", "encode", "train", "fid", "compare-schedules"])
def test_batch_size_zero_is_an_error_not_a_division(command, runner, tiny_data, tiny_run, tmp_path):
    out = tmp_path / "out"
    args = {
        "inpaint": [
            "inpaint",
            tiny_data["masked"],
            "--masks",
            tiny_data["masks"],
            "--model",
            tiny_run,
            "--out",
            out,
        ],
        "encode": ["encode", tiny_data["test"], "--tokenizer", tiny_run, "--out", out],
        "train": [
            "train",
            TINY,
            "--stage",
            "tokenizer",
            "--data",
            tiny_data["train"],
            "--out",
            out,
        ],
        "fid": ["fid", tiny_data["test"], tiny_data["val"]],
        "compare-schedules": [
            "compare-schedules",
            tiny_data["masked"],
            "--masks",
            tiny_data["masks"],
            "--ground-truth",
            tiny_data["test"],
            "--model",
            tiny_run,
            "--out",
            out,
        ],
    }[command]
    assert_error(runner, [*args, "--batch-size", "0"], "--batch-size must be at least 1, got 0")
    assert not out.exists()


@pytest.mark.parametrize(
    "flag,value,fragment",
    [
        ("--temperature", "nan", "--temperature must be a finite number"),
        ("--temperature", "0", "--temperature must be positive"),
        ("--choice-temperature", "-1", "--choice-temperature must be at least 0"),
        ("--dilate", "-2", "--dilate must be at least 0"),
        ("--top-k", "-1", "--top-k must be at least 0"),
        ("--blend", "smooth", "--blend must be one of none, poisson"),
        ("--candidates", "0", "--candidates must be at least 1"),
        ("--top-p", "0", "--top-p must be in (0, 1]"),
        ("--top-p", "1.5", "--top-p must be in (0, 1]"),
        ("--feather", "-2", "--feather must be at least 0"),
        ("--sweet-spot", "5", "--sweet-spot (5) must not exceed --total-iter (2)"),
        ("--schedule", "bogus", "--schedule must be one of cosine"),
        ("--fill", "magic", "--fill must be one of maskgit, harmonic, oracle"),
        ("--mask-missing", "grey", "--mask-missing must be 'black'"),
    ],
)
def test_decode_flags_that_make_no_sense(flag, value, fragment, runner, inp, tmp_path):
    assert_error(runner, [*inp, "--out", tmp_path / "out", flag, value], fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--set", "tokenizer_train.lr=-1"], "tokenizer_train.lr must be positive"),
        (["--set", "tokenizer_train.lr=nan"], "tokenizer_train.lr must be a finite number"),
        (["--max-steps", "-1"], "--max-steps must be at least 0, got -1"),
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["--set", "decode.total_iter=0"], "decode.total_iter must be at least 1"),
        (["--set", "nope=1"], "unknown config key 'nope'"),
    ],
)
def test_training_values_that_make_no_sense(extra, fragment, runner, tiny_data, tmp_path):
    out = tmp_path / "run"
    assert_error(
        runner,
        ["train", TINY, "--stage", "tokenizer", "--data", tiny_data["train"], "--out", out, *extra],
        fragment,
    )
    assert not (out / "tokenizer.pt").exists()  # no untrained checkpoint


def test_bad_yaml_value_names_the_file_and_key(runner, tiny_data, tmp_path):
    cfg = yaml.safe_load(TINY.read_text())
    cfg["transformer_train"]["lr"] = -0.001
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    assert_error(
        runner,
        [
            "train",
            tmp_path / "bad.yaml",
            "--stage",
            "tokenizer",
            "--data",
            tiny_data["train"],
            "--out",
            tmp_path / "r",
        ],
        "bad.yaml: transformer_train.lr must be positive",
    )


def test_fid_of_one_image_says_why(runner, tiny_data, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(sorted(tiny_data["test"].iterdir())[0], one)
    assert_error(runner, ["fid", one, tiny_data["test"]], "FID needs at least 2 images per set")


def test_mask_limit_zero(runner, tiny_data, tmp_path):
    assert_error(
        runner,
        ["mask", tiny_data["test"], "--out", tmp_path / "m", "--limit", "0"],
        "--limit must be at least 1, got 0",
    )
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------- 1b. messages that point the right
# way


def test_a_mask_of_another_size_than_its_image_says_so(runner, inp, tiny_data, tmp_path):
    """Images of any size are inpainted (the model runs at its own size); a mask must still
    match its own image, and the message says which, without naming flags inpaint lacks."""
    big = tmp_path / "big"
    make_images(big, 2, size=32)
    args = ["inpaint", big, "--masks", tiny_data["masks"], *inp[4:], "--out", tmp_path / "o"]
    assert_error(runner, args, "mask is 16x16, expected 32x32; masks must match their images")
    assert "--resize" not in run(runner, args).stderr  # inpaint has no --resize


def test_missing_ground_truth_is_not_called_a_missing_mask(runner, inp, tiny_data, tmp_path):
    gt = tmp_path / "gt"
    shutil.copytree(tiny_data["test"], gt)
    (gt / "003.png").unlink()
    assert_error(
        runner,
        [*inp, "--out", tmp_path / "o", "--ground-truth", gt],
        f"no ground-truth image in {gt} for: 003.png",
    )


def test_fid_weights_that_are_a_maskgit_checkpoint(runner, tiny_data, tiny_run):
    r = run(
        runner,
        [
            "fid",
            tiny_data["test"],
            tiny_data["val"],
            "--inception-weights",
            tiny_run / "tokenizer.pt",
        ],
    )
    assert (
        r.exit_code == 1
        and "not a FID-Inception weights file" in r.stderr
        and "--config" not in r.stderr
    )


class Payload:
    """Stands for any Python object inside a pickle: loading it would import and run code."""


def test_a_pickle_with_code_is_refused_and_said_so(runner, tiny_data, tmp_path):
    torch.save({"model": Payload()}, tmp_path / "evil.pt")
    assert_error(
        runner,
        [
            "encode",
            tiny_data["test"],
            "--tokenizer",
            tmp_path / "evil.pt",
            "--out",
            tmp_path / "t.npz",
        ],
        "not a plain weights file",
    )
    assert (
        "truncated"
        not in run(
            runner,
            [
                "encode",
                tiny_data["test"],
                "--tokenizer",
                tmp_path / "evil.pt",
                "--out",
                tmp_path / "t.npz",
            ],
        ).stderr
    )


def test_resume_names_what_changed_in_both_stages(runner, tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    base = ["train", TINY, "--data", tiny_data["train"], "--out", run_dir, "--device", "cpu"]
    for stage in ("tokenizer", "transformer"):
        ok_json(runner, [*base, "--stage", stage, "--max-steps", "2"])
        extended = ok_json(runner, [*base, "--stage", stage, "--max-steps", "4", "--resume"])
        assert extended["steps"] == 4
        assert any(
            f"{stage}_train.max_steps 2 -> 4" in w and "learning-rate schedule" in w
            for w in extended["warnings"]
        )
        before = (run_dir / "config.yaml").read_text()
        assert_error(
            runner,
            [
                *base,
                "--stage",
                stage,
                "--max-steps",
                "4",
                "--resume",
                "--set",
                f"{stage}_train.lr=0.5",
            ],
            f"{stage}_train.lr (",
        )
        assert_error(
            runner,
            [*base, "--stage", stage, "--resume", "--set", f"{stage}_train.lr=nan"],
            f"{stage}_train.lr must be a finite number",
        )
        assert (run_dir / "config.yaml").read_text() == before  # a refused resume rewrites nothing


# ------------------------------------------------------------------------- 2. the JSON contract


def test_usage_errors_answer_json_too(runner):
    r = run(runner, ["inpaint", "x", "--bogus"], json_out=True)
    assert r.exit_code == 2
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and "--bogus" in json.loads(lines[0])["error"]
    r = run(runner, ["train"], json_out=True)
    assert r.exit_code == 2 and "Missing argument" in json.loads(r.stdout)["error"]


def test_ctrl_c_while_loading_images_is_one_line_130_and_json(runner, inp, tmp_path, monkeypatch):
    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "read_rgb", interrupted)
    assert_error(runner, [*inp, "--out", tmp_path / "o"], "interrupted (Ctrl-C)", code=130)
    assert not (tmp_path / "o").exists()


def test_help_shows_no_bool_values_and_every_option_is_explained(runner):
    from typer.main import get_command

    group = get_command(app)
    for name, cmd in group.commands.items():
        r = runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"})
        assert r.exit_code == 0 and "<bool>" not in r.stdout, name
        for param in cmd.params:
            if param.param_type_name == "option":
                assert param.help, f"maskgit {name} {param.opts[0]} has no help text"


# ------------------------------------------------------------- 3. overwriting, and only our own


def test_existing_outputs_need_overwrite(runner, inp, tiny_data, tiny_run, tmp_path):
    out = tmp_path / "o"
    ok_json(runner, [*inp, "--out", out])
    first = sorted(p.name for p in out.iterdir())
    assert_error(runner, [*inp, "--out", out], "already exists; pass --overwrite")
    ok_json(
        runner, [*inp, "--out", out, "--overwrite"]
    )  # an earlier maskgit output is replaced whole
    assert sorted(p.name for p in out.iterdir()) == first
    tokens = tmp_path / "t.npz"
    ok_json(runner, ["encode", tiny_data["test"], "--tokenizer", tiny_run, "--out", tokens])
    assert_error(
        runner,
        ["encode", tiny_data["test"], "--tokenizer", tiny_run, "--out", tokens],
        "already exists; pass --overwrite",
    )
    stats = tmp_path / "s.npz"
    stats.write_bytes(b"mine")
    assert_error(
        runner,
        ["fid", tiny_data["test"], tiny_data["val"], "--save-stats", stats],
        "already exists; pass --overwrite",
    )
    assert stats.read_bytes() == b"mine"


def test_overwrite_never_deletes_files_maskgit_did_not_write(runner, inp, tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert_error(
        runner,
        [*inp, "--out", mine, "--overwrite"],
        "holds files maskgit did not write (notes.txt)",
    )
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(
        p.name for p in mine.iterdir()
    ) == ["notes.txt"]
    monkeypatch.chdir(mine)  # `--out .` in a folder of one's own
    assert_error(
        runner, [*inp, "--out", ".", "--overwrite"], "holds files maskgit did not write (notes.txt)"
    )
    assert (
        sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    )  # nothing stranded


def test_out_dot_in_an_empty_folder_writes_there(runner, inp, tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    res = ok_json(runner, [*inp, "--out", "."])
    assert len(list(here.glob("*.png"))) == res["count"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "here"
    ]  # no hidden temp folder left beside it


# --------------------------------------------------------------------- 4. whole or not at all


def test_a_bad_image_halfway_leaves_no_output(runner, inp, tiny_data, tmp_path):
    masked = tmp_path / "masked"
    shutil.copytree(tiny_data["masked"], masked)
    (masked / "007.png").write_bytes(b"not an image")
    assert_error(
        runner,
        ["inpaint", masked, *inp[2:], "--out", tmp_path / "o", "--batch-size", "4"],
        "007.png: cannot read this image",
    )
    assert not (tmp_path / "o").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ------------------------------------------------------------------ 5. no silent wrong results


def test_negative_batch_size_is_refused_not_an_empty_success(runner, inp, tmp_path):
    assert_error(
        runner,
        [*inp, "--out", tmp_path / "o", "--batch-size", "-4"],
        "--batch-size must be at least 1",
    )
    assert not (tmp_path / "o").exists()


def test_img_1_and_img_01_never_share_a_mask(runner, inp, tmp_path):
    imgs, masks = tmp_path / "imgs", tmp_path / "masks"
    make_images(imgs, 2, prefix="x")
    (imgs / "x000.png").rename(imgs / "img_1.png")
    (imgs / "x001.png").rename(imgs / "img_01.png")
    make_masks(masks, 1)
    (masks / "000.png").rename(masks / "mask_1.png")
    assert_error(
        runner,
        ["inpaint", imgs, "--masks", masks, *inp[4:], "--out", tmp_path / "o"],
        f"no mask in {masks} for: img_01.png",
    )


def test_a_mask_without_an_image_is_warned_and_counted(runner, inp, tiny_data, tmp_path):
    masks = tmp_path / "masks"
    shutil.copytree(tiny_data["masks"], masks)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(masks / "999.png")
    res = ok_json(
        runner,
        ["inpaint", tiny_data["masked"], "--masks", masks, *inp[4:], "--out", tmp_path / "o"],
    )
    assert res["unused_masks"] == 1 and any("999.png" in w for w in res["warnings"])
    r = run(
        runner,
        ["inpaint", tiny_data["masked"], "--masks", masks, *inp[4:], "--out", tmp_path / "p"],
    )
    assert r.exit_code == 0 and "999.png" in r.stderr


def test_suffix_names_pair_with_the_right_masks(runner, inp, tmp_path):
    imgs, masks, src = tmp_path / "imgs", tmp_path / "masks", tmp_path / "src"
    make_images(src, 2)
    make_masks(masks, 2)
    mask_out(src, masks, imgs)
    (imgs / "000.png").rename(imgs / "cat.png")
    (imgs / "001.png").rename(imgs / "cat.jpg.png")
    (masks / "000.png").rename(masks / "cat.png")
    (masks / "001.png").rename(masks / "cat.jpg")  # PNG bytes behind a .jpg name: read by content
    res = ok_json(runner, ["inpaint", imgs, "--masks", masks, *inp[4:], "--out", tmp_path / "o"])
    assert res["count"] == 2 and res["unused_masks"] == 0


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("decode.schedule=bogus", "decode.schedule must be one of"),
        ("decode.total_iter=0", "decode.total_iter must be at least 1"),
        ("decode.temperature=-1", "decode.temperature must be positive"),
    ],
)
def test_export_refuses_decode_defaults_that_would_break_every_inpaint(
    override, fragment, runner, tiny_run, tmp_path
):
    assert_error(runner, ["export", tiny_run, "--out", tmp_path / "e", "--set", override], fragment)
    assert not (tmp_path / "e").exists()


def test_a_saved_model_with_broken_decode_defaults_names_the_model_not_a_flag(
    runner, inp, tiny_run, tmp_path
):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_run, broken)
    ck = checkpoint.load(broken / "transformer.pt")
    ck["config"]["decode"]["schedule"] = "bogus"  # as an older export could have written
    ck.pop("path")
    checkpoint.save(broken / "transformer.pt", ck)
    r = run(runner, ["inpaint", *inp[1:4], "--model", broken, "--out", tmp_path / "o"])
    assert r.exit_code == 1 and "transformer.pt (saved config): decode.schedule" in r.stderr
