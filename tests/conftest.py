"""Tiny fixtures: 16x16 images with structure (so models can learn something), masks, and a
tiny trained run directory (tokenizer + transformer) shared by the whole session."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
FIXTURES = ROOT / "tests" / "fixtures"  # provenance in fixtures/README.md

torch.set_num_threads(min(2, torch.get_num_threads()))

# The real FID-Inception weights, as `make fid-weights` (run by `make test`) stored them, found
# before TORCH_HOME is redirected below; tests that need them pass this path explicitly.
from maskgit_cli import fid_weights  # noqa: E402

REAL_INCEPTION = fid_weights.default_path()

# Tests never download: no FID-Inception weights are found unless a test provides them.
os.environ["MASKGIT_OFFLINE"] = "1"
os.environ.pop("MASKGIT_INCEPTION_WEIGHTS", None)
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="maskgit-torch-home-")


def make_images(
    folder: Path, n: int, size: int = 16, seed: int = 0, fmt: str = "PNG", prefix: str = ""
) -> list[Path]:
    """Smooth color blobs on gradients: learnable, not noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    paths = []
    for i in range(n):
        c0, c1 = rng.random(3), rng.random(3)
        cy, cx, r = rng.random(), rng.random(), 0.2 + 0.2 * rng.random()
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2)[..., None]
        img = c0 * (1 - xx[..., None]) + c1 * xx[..., None]
        img = np.where(blob, 1 - c0, img)
        p = folder / f"{prefix}{i:03d}.png"
        Image.fromarray((img * 255).astype(np.uint8)).save(p, format=fmt)
        paths.append(p)
    return paths


def make_masks(folder: Path, n: int, size: int = 16, seed: int = 1, prefix: str = "") -> list[Path]:
    """Lab convention: 0 = missing. One box per mask."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        m = np.full((size, size), 255, np.uint8)
        y, x = rng.integers(0, size // 2, 2)
        m[y : y + size // 3, x : x + size // 3] = 0
        p = folder / f"{prefix}{i:03d}.png"
        Image.fromarray(m).save(p)
        paths.append(p)
    return paths


def mask_out(images: Path, masks: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for p in sorted(images.iterdir()):
        img = np.asarray(Image.open(p).convert("RGB")).copy()
        m = np.asarray(Image.open(masks / p.name))
        img[m < 128] = 128
        Image.fromarray(img).save(out / p.name)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_data")
    make_images(root / "train", 48, seed=0)
    make_images(root / "val", 16, seed=1)
    make_images(root / "test", 10, seed=2)
    make_masks(root / "masks", 10)
    mask_out(root / "test", root / "masks", root / "masked")
    return {
        "root": root,
        "train": root / "train",
        "val": root / "val",
        "test": root / "test",
        "masks": root / "masks",
        "masked": root / "masked",
    }


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    """A tiny run directory with a trained tokenizer and transformer (a few seconds)."""
    from maskgit_cli import pipeline

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    pipeline.train(
        TINY,
        "tokenizer",
        tiny_data["train"],
        run,
        val=tiny_data["val"],
        device="cpu",
        overrides=["tokenizer_train.epochs=4"],
    )
    pipeline.train(
        TINY,
        "transformer",
        tiny_data["train"],
        run,
        val=tiny_data["val"],
        device="cpu",
        overrides=["transformer_train.epochs=3"],
    )
    return run


@pytest.fixture(scope="session")
def real_inception() -> Path:
    """The verified real weights; missing them is a failure (not a skip): `make test` fetches
    them."""
    if not REAL_INCEPTION.is_file():
        pytest.fail(
            f"no FID-Inception weights at {REAL_INCEPTION}: run `make fid-weights` (make test does)"
        )
    return REAL_INCEPTION


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def inpaint_args(tiny_data, model, out: Path, *extra: str) -> list[str]:
    """`maskgit inpaint` of the tiny masked set with MODEL into OUT, on the CPU, then EXTRA."""
    return [
        "inpaint",
        str(tiny_data["masked"]),
        "--masks",
        str(tiny_data["masks"]),
        "--model",
        str(model),
        "--device",
        "cpu",
        "--out",
        str(out),
        *extra,
    ]


def invoke_json(runner: CliRunner, args: list[str], code: int = 0) -> dict:
    """Run `maskgit ARGS --json`, check the exit code, parse stdout as exactly one JSON object."""
    from maskgit_cli.cli import app

    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == code, (
        result.exit_code,
        result.stdout,
        getattr(result, "stderr", ""),
        result.exception,
    )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


class TinyFeatures(torch.nn.Module):
    """A small, fixed feature extractor standing in for FID-Inception in end-to-end tests."""

    def __init__(self, dims: int = 8):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = torch.randn(3 * 4 * 4, dims, generator=g)

    def forward(self, x):
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return torch.tanh(pooled @ self.proj)


# ------------------------------------------------------------ the README contract's helpers


def run(runner, args: list[str], json_out: bool = False):
    from maskgit_cli.cli import app

    return runner.invoke(app, [*map(str, args), *(["--json"] if json_out else [])])


def assert_error(runner, args: list, fragment: str, code: int = 1) -> None:
    """The command fails with `code`: one stderr line with `fragment` and no traceback; with
    --json, exactly one JSON object {"error": ...} on stdout carrying the same message."""
    r = run(runner, args)
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr, r.exception)
    assert "Traceback" not in r.output and r.stdout.strip() == ""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], r.stderr
    rj = run(runner, args, json_out=True)
    assert rj.exit_code == code and "Traceback" not in rj.output
    out = [line for line in rj.stdout.splitlines() if line.strip()]
    assert len(out) == 1 and fragment in json.loads(out[0])["error"], rj.stdout


def ok_json(runner, args: list) -> dict:
    r = run(runner, args, json_out=True)
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    out = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(out) == 1
    return json.loads(out[0])


@pytest.fixture()
def inp(tiny_data, tiny_run, tmp_path):
    """Arguments of a valid inpaint run into tmp_path/out (a fresh name each test)."""
    return [
        "inpaint",
        tiny_data["masked"],
        "--masks",
        tiny_data["masks"],
        "--model",
        tiny_run,
        "--device",
        "cpu",
        "-T",
        "2",
    ]


def known_pixels_unchanged(tiny_data: dict, out: Path) -> None:
    """Every pixel the mask says is known equals the input's, bit for bit, in every result."""
    for p in sorted(tiny_data["masked"].iterdir()):
        inp = np.asarray(Image.open(p).convert("RGB"))
        res = np.asarray(Image.open(out / p.name).convert("RGB"))
        known = np.asarray(Image.open(tiny_data["masks"] / p.name)) >= 128
        assert res.shape == inp.shape and (inp[known] == res[known]).all(), p.name
