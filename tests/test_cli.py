"""Every command through typer's CliRunner with --json: exit codes and the JSON contract."""

import json

import pytest
from conftest import TINY, invoke_json

from maskgit_cli import __version__
from maskgit_cli.cli import app


def test_version(runner):
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and __version__ in r.stdout


def test_usage_errors_exit_2(runner):
    assert runner.invoke(app, ["train"]).exit_code == 2
    assert runner.invoke(app, ["inpaint", "x", "--bogus"]).exit_code == 2


def test_train_tokenizer_and_transformer_json(runner, tiny_data, tmp_path):
    run = tmp_path / "run"
    tok = invoke_json(
        runner,
        [
            "train",
            str(TINY),
            "--stage",
            "tokenizer",
            "--data",
            str(tiny_data["train"]),
            "--val",
            str(tiny_data["val"]),
            "--out",
            str(run),
            "--max-steps",
            "3",
            "--device",
            "cpu",
            "--seed",
            "1",
        ],
    )
    for key in (
        "stage",
        "steps",
        "final_loss",
        "val_psnr",
        "codebook_usage",
        "checkpoint",
        "seconds",
    ):
        assert key in tok
    assert tok["stage"] == "tokenizer" and tok["steps"] == 3 and tok["val_psnr"] is not None
    tr = invoke_json(
        runner,
        [
            "train",
            str(TINY),
            "--stage",
            "transformer",
            "--data",
            str(tiny_data["train"]),
            "--val",
            str(tiny_data["val"]),
            "--out",
            str(run),
            "--max-steps",
            "3",
            "--batch-size",
            "4",
            "--set",
            "transformer_train.log_every=1",
            "--device",
            "cpu",
        ],
    )
    for key in (
        "stage",
        "steps",
        "final_loss",
        "val_loss",
        "val_accuracy",
        "tokens_per_second",
        "checkpoint",
        "seconds",
    ):
        assert key in tr
    assert set(tr["val_accuracy"]) == {"0.25", "0.5", "0.75"}
    resumed = invoke_json(
        runner,
        [
            "train",
            str(TINY),
            "--stage",
            "transformer",
            "--data",
            str(tiny_data["train"]),
            "--out",
            str(run),
            "--max-steps",
            "5",
            "--batch-size",
            "4",
            "--set",
            "transformer_train.log_every=1",
            "--resume",
            "--device",
            "cpu",
        ],
    )
    assert resumed["steps"] == 5
    dec = invoke_json(
        runner,
        [
            "train",
            str(TINY),
            "--stage",
            "decoder",
            "--data",
            str(tiny_data["train"]),
            "--val",
            str(tiny_data["val"]),
            "--out",
            str(run),
            "--max-steps",
            "2",
            "--device",
            "cpu",
        ],
    )
    assert dec["stage"] == "decoder" and dec["steps"] == 2 and dec["val_psnr"] is not None
    assert [r["epoch"] for r in dec["epochs"]] == [0, 1]  # the PSNR before fine-tuning, then after


def test_train_without_val_reports_null_psnr(runner, tiny_data, tmp_path):
    out = invoke_json(
        runner,
        [
            "train",
            str(TINY),
            "--stage",
            "tokenizer",
            "--data",
            str(tiny_data["train"]),
            "--out",
            str(tmp_path / "r"),
            "--max-steps",
            "2",
            "--device",
            "cpu",
        ],
    )
    assert out["val_psnr"] is None and out["codebook_usage"] > 0


def test_encode_json_and_determinism(runner, tiny_run, tiny_data, tmp_path):
    import numpy as np

    a = invoke_json(
        runner,
        [
            "encode",
            str(tiny_data["test"]),
            "--tokenizer",
            str(tiny_run),
            "--out",
            str(tmp_path / "a.npz"),
            "--device",
            "cpu",
        ],
    )
    for key in ("count", "grid", "codebook_size", "codebook_usage", "out", "seconds"):
        assert key in a
    assert a["count"] == 10 and a["grid"] == 4 and a["codebook_size"] == 32
    invoke_json(
        runner,
        [
            "encode",
            str(tiny_data["test"]),
            "--tokenizer",
            str(tiny_run / "tokenizer.pt"),
            "--out",
            str(tmp_path / "b.npz"),
            "--batch-size",
            "3",
            "--device",
            "cpu",
        ],
    )
    assert np.array_equal(np.load(tmp_path / "a.npz")["ids"], np.load(tmp_path / "b.npz")["ids"])
    err = invoke_json(
        runner,
        [
            "encode",
            str(tiny_data["test"]),
            "--tokenizer",
            str(tiny_run),
            "--out",
            str(tmp_path / "a.npz"),
            "--device",
            "cpu",
        ],
        code=1,
    )
    assert "--overwrite" in err["error"]


def test_inpaint_json(runner, tiny_run, tiny_data, tmp_path):
    out = invoke_json(
        runner,
        [
            "inpaint",
            str(tiny_data["masked"]),
            "--masks",
            str(tiny_data["masks"]),
            "--out",
            str(tmp_path / "o"),
            "--model",
            str(tiny_run),
            "--schedule",
            "square",
            "-T",
            "6",
            "-t",
            "4",
            "--ground-truth",
            str(tiny_data["test"]),
            "--device",
            "cpu",
        ],
    )
    for key in ("count", "seconds", "images_per_second", "out", "settings", "metrics"):
        assert key in out
    assert (
        out["count"] == 10
        and out["settings"]["schedule"] == "square"
        and out["settings"]["sweet_spot"] == 4
    )
    assert out["metrics"]["psnr_masked"] is not None


@pytest.mark.parametrize(
    "args,fragment",
    [
        (
            ["train", "CFG", "--stage", "tokenizer", "--data", "/nonexistent", "--out", "OUT"],
            "not found",
        ),
        (["train", "CFG", "--stage", "vae", "--data", "/nonexistent", "--out", "OUT"], "--stage"),
        (
            ["train", "CFG", "--stage", "decoder", "--data", "/nonexistent", "--out", "OUT"],
            "to fine-tune",
        ),
        (
            [
                "train",
                "CFG",
                "--stage",
                "tokenizer",
                "--data",
                "/x",
                "--out",
                "OUT",
                "--set",
                "nope=1",
            ],
            "unknown config key",
        ),
        (["inpaint", "/nonexistent", "--masks", "/nonexistent", "--out", "OUT"], "not found"),
        (
            ["encode", "/nonexistent", "--tokenizer", "/nonexistent", "--out", "OUT/t.npz"],
            "not found",
        ),
    ],
)
def test_user_errors_exit_1_with_one_line_and_no_traceback(runner, tmp_path, args, fragment):
    args = [
        str(TINY)
        if a == "CFG"
        else str(tmp_path / "o")
        if a == "OUT"
        else a.replace("OUT", str(tmp_path))
        for a in args
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 1, (r.stdout, r.exception)
    assert "Traceback" not in r.output and fragment in r.output
    rj = runner.invoke(app, [*args, "--json"])
    assert rj.exit_code == 1 and fragment in json.loads(rj.stdout)["error"]


def test_export_and_demo_json(runner, tiny_run, tiny_data, tmp_path):
    from maskgit_cli import checkpoint

    exp = invoke_json(
        runner,
        ["export", str(tiny_run), "--out", str(tmp_path / "exp"), "--set", "decode.sweet_spot=3"],
    )
    assert exp["dtype"] == "float16"
    for name in (
        "tokenizer.pt",
        "transformer.pt",
    ):  # fp16 and no optimizer state: smaller than the run's files
        assert (tmp_path / "exp" / name).stat().st_size < (tiny_run / name).stat().st_size / 2
    assert exp["bytes"] == sum(p.stat().st_size for p in (tmp_path / "exp").iterdir())
    saved = checkpoint.load(tmp_path / "exp" / "transformer.pt")
    assert "optimizer" not in saved and saved["tokenizer_id"] == exp["tokenizer_id"]
    assert (
        saved["config"]["decode"]["sweet_spot"] == 3
    )  # the export's --set reaches the saved defaults
    samples = tmp_path / "samples"
    import shutil

    shutil.copytree(tiny_data["masked"], samples / "masked")
    shutil.copytree(tiny_data["masks"], samples / "masks")
    shutil.copytree(tiny_data["test"], samples / "images")
    out = invoke_json(
        runner,
        [
            "demo",
            "--model",
            str(tmp_path / "exp"),
            "--samples",
            str(samples),
            "--out",
            str(tmp_path / "demo"),
            "--device",
            "cpu",
        ],
    )
    for key in ("count", "seconds", "out", "grid", "settings", "metrics"):
        assert key in out
    assert out["count"] == 10 and (tmp_path / "demo" / "grid.png").is_file()
    assert out["settings"]["sweet_spot"] == 3  # the model's decode defaults
    assert len(list((tmp_path / "demo" / "results").glob("*.png"))) == 10


def test_encode_a_bare_state_dict_needs_config(runner, tiny_run, tiny_data, tmp_path):
    """Like the course's VQGAN.pt: weights only, architecture from --config."""
    import torch

    from maskgit_cli import checkpoint

    torch.save(checkpoint.load(tiny_run / "tokenizer.pt")["model"], tmp_path / "bare.pt")
    out = invoke_json(
        runner,
        [
            "encode",
            str(tiny_data["test"]),
            "--tokenizer",
            str(tmp_path / "bare.pt"),
            "--config",
            str(TINY),
            "--out",
            str(tmp_path / "t.npz"),
            "--device",
            "cpu",
        ],
    )
    assert out["count"] == 10
    err = invoke_json(
        runner,
        [
            "encode",
            str(tiny_data["test"]),
            "--tokenizer",
            str(tmp_path / "bare.pt"),
            "--out",
            str(tmp_path / "u.npz"),
            "--device",
            "cpu",
        ],
        code=1,
    )
    assert "--config" in err["error"]


def test_mask_makes_a_lab_convention_inpainting_set(runner, tiny_data, tmp_path):
    import numpy as np
    from PIL import Image

    out = invoke_json(
        runner, ["mask", str(tiny_data["test"]), "--out", str(tmp_path / "set"), "--limit", "4"]
    )
    assert out["count"] == 4 and 0 < out["mean_missing_fraction"] < 1
    m = np.asarray(Image.open(tmp_path / "set" / "masks" / "000.png"))
    masked = np.asarray(Image.open(tmp_path / "set" / "masked" / "000.png"))
    assert set(np.unique(m)) <= {0, 255} and (masked[m == 0] == 128).all()


def test_every_decode_setting_is_a_flag_of_inpaint_and_compare_schedules():
    """A decode option is one DecodeConfig field: both commands get its flag from it."""
    import dataclasses

    from typer.main import get_command

    from maskgit_cli.config import DecodeConfig

    commands = get_command(app).commands
    flags = {
        name: {o for p in commands[name].params for o in p.opts}
        for name in ("inpaint", "compare-schedules")
    }
    for f in dataclasses.fields(DecodeConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in flags["inpaint"], flag
        assert flag in flags["compare-schedules"], (
            flag
        )  # a list there for schedule / total_iter / sweet_spot


def test_the_help_shows_the_bundled_models_real_decode_defaults():
    """--help quotes configs/cats64.yaml's decode section: it must be the bundled model's own."""
    from maskgit_cli import checkpoint, config, pipeline

    saved = checkpoint.config_of(checkpoint.load(pipeline.BUNDLED / checkpoint.TRANSFORMER)).decode
    assert config.load("cats64").decode == saved


def test_the_bundled_model_goes_by_its_name(runner, tiny_data, tmp_path):
    from maskgit_cli import pipeline

    samples = pipeline.SAMPLES
    out = invoke_json(
        runner,
        [
            "inpaint",
            str(samples / "masked"),
            "--masks",
            str(samples / "masks"),
            "--model",
            "cats64",
            "--out",
            str(tmp_path / "o"),
            "--device",
            "cpu",
        ],
    )
    assert out["count"] == 12 and out["model"] == str(pipeline.BUNDLED)
    tokens = invoke_json(
        runner,
        [
            "encode",
            str(samples / "images"),
            "--tokenizer",
            "cats64",
            "--out",
            str(tmp_path / "t.npz"),
            "--device",
            "cpu",
        ],
    )
    assert tokens["grid"] == 8 and tokens["codebook_size"] == 512
