"""Installed as a package (a wheel in a fresh venv, not the editable checkout), maskgit carries
its bundled model and configs: `maskgit demo` and `maskgit train tiny` work from any folder."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)
    assert done.returncode == 0, (cmd, done.stdout[-2000:], done.stderr[-2000:])
    return done


@pytest.mark.slow
def test_the_wheel_runs_demo_and_train_outside_the_checkout(tmp_path, tiny_data):
    dist = tmp_path / "dist"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            dist,
            ROOT,
        ]
    )
    wheel = next(dist.glob("maskgit_cli-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in (
        "maskgit_cli/configs/tiny.yaml",
        "maskgit_cli/configs/cats64.yaml",
        "maskgit_cli/configs/cats64_small.yaml",
        "maskgit_cli/configs/lab.yaml",
        "maskgit_cli/assets/cats64/transformer.pt",
        "maskgit_cli/assets/MODEL_CARD.md",
    ):
        assert needed in names, needed

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    pip = venv / "bin" / "pip"
    _run([pip, "install", "-q", "torch==2.13.0"])  # the CPU build, as the Makefile installs it
    _run([pip, "install", "-q", wheel])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    maskgit = venv / "bin" / "maskgit"
    where = _run(
        [venv / "bin" / "python", "-c", "import maskgit_cli; print(maskgit_cli.__file__)"],
        cwd=elsewhere,
    )
    assert str(venv) in where.stdout  # the installed copy, not the checkout

    demo = json.loads(
        _run([maskgit, "demo", "--out", "demo", "--device", "cpu", "--json"], cwd=elsewhere).stdout
    )
    assert demo["count"] >= 8 and (elsewhere / "demo" / "grid.png").is_file()
    train = json.loads(
        _run(
            [
                maskgit,
                "train",
                "tiny",
                "--stage",
                "tokenizer",
                "--data",
                tiny_data["train"],
                "--out",
                "run",
                "--max-steps",
                "2",
                "--device",
                "cpu",
                "--json",
            ],
            cwd=elsewhere,
        ).stdout
    )
    assert train["steps"] == 2 and (elsewhere / "run" / "tokenizer.pt").is_file()
    listed = _run(
        [maskgit, "train", "--help"], cwd=elsewhere, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}
    )
    assert "cats64, cats64_small, lab, tiny" in " ".join(listed.stdout.split())  # help wraps
