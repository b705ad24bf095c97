"""The README's promises about outputs, as a catalogue (promises 3 and 4):

3. maskgit never writes over what is not its own: an output never equals, contains or sits
   inside what the command reads; --overwrite replaces only maskgit's own earlier output (a
   folder's manifest lists every entry, a file carries maskgit's signature) and anything else is
   refused by name; an output being written is locked, a second run to it is "in use".
4. Outputs are written whole or not at all: a hidden sibling renamed into place; Ctrl-C,
   SIGTERM (exit 143) and a full or read-only disk leave nothing half-written, and a partial
   left by kill -9 is removed by the next run.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, assert_error, inpaint_args, make_images, make_masks, ok_json, run
from PIL import Image

from maskgit_cli import outputs

# ------------------------------------------------------------------------------- helpers


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _hidden_beside(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


@contextmanager
def read_only(folder: Path):
    """The folder made unwritable: chmod for a user, the immutable attribute for root (who
    ignores modes). Skips where neither works."""
    folder.chmod(0o555)
    immutable = (
        os.geteuid() == 0
        and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    )
    probe = folder / ".probe"
    try:
        try:
            probe.write_text("x")
            probe.unlink()
            pytest.skip("cannot make a folder read-only here (root without chattr)")
        except OSError:
            pass
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)


def _writers(tiny_data, tiny_run, real_inception, out_dir: Path) -> dict[str, list]:
    """Every command that writes, with OUT (or the output file) inside out_dir."""
    masked, masks, test = tiny_data["masked"], tiny_data["masks"], tiny_data["test"]
    return {
        "inpaint": [
            "inpaint",
            masked,
            "--masks",
            masks,
            "--model",
            tiny_run,
            "-T",
            "2",
            "--out",
            out_dir / "o",
        ],
        "mask": ["mask", test, "--out", out_dir / "o"],
        "encode": ["encode", test, "--tokenizer", tiny_run, "--out", out_dir / "t.npz"],
        "train": [
            "train",
            TINY,
            "--stage",
            "tokenizer",
            "--data",
            tiny_data["train"],
            "--max-steps",
            "1",
            "--out",
            out_dir / "run",
        ],
        "export": ["export", tiny_run, "--out", out_dir / "o"],
        "fid --save-stats": [
            "fid",
            test,
            masked,
            "--inception-weights",
            real_inception,
            "--dims",
            "64",
            "--save-stats",
            out_dir / "s.npz",
        ],
        "fid-weights": ["fid-weights", "--from", real_inception, "--out", out_dir / "w.pth"],
        "compare-schedules": [
            "compare-schedules",
            masked,
            "--masks",
            masks,
            "--ground-truth",
            test,
            "--model",
            tiny_run,
            "-T",
            "2",
            "--sweet-spots",
            "2",
            "--schedules",
            "cosine",
            "--seeds",
            "0",
            "--no-baselines",
            "--out",
            out_dir / "o",
        ],
        "demo": ["demo", "--out", out_dir / "o"],
    }


WRITERS = [
    "inpaint",
    "mask",
    "encode",
    "train",
    "export",
    "fid --save-stats",
    "fid-weights",
    "compare-schedules",
    "demo",
]


# ------------------------------------------------------- 3. never over what is not maskgit's


def test_inpaint_into_its_own_mask_set_deletes_nothing(runner, tiny_data, tiny_run, tmp_path):
    """`mask SRC --out SET`, then `inpaint SET/masked --masks SET/masks --out SET --overwrite`."""
    s = tmp_path / "set"
    ok_json(runner, ["mask", tiny_data["test"], "--out", s])
    before = _tree(s)
    assert_error(
        runner,
        [
            "inpaint",
            s / "masked",
            "--masks",
            s / "masks",
            "--model",
            tiny_run,
            "--out",
            s,
            "--overwrite",
        ],
        "contains the input",
    )
    assert _tree(s) == before and len(before) == 31  # 3 x 10 images and the manifest


@pytest.mark.parametrize("which", ["masked", "masks", "ground-truth"])
def test_out_equal_to_an_input_folder_is_refused_even_when_it_is_maskgit_output(
    which, runner, tiny_data, tiny_run, tmp_path
):
    s = tmp_path / "set"
    ok_json(runner, ["mask", tiny_data["test"], "--out", s])
    prior = tmp_path / "prior"  # an earlier maskgit output, used as an input
    ok_json(
        runner,
        [
            "inpaint",
            s / "masked",
            "--masks",
            s / "masks",
            "--model",
            tiny_run,
            "-T",
            "2",
            "--out",
            prior,
        ],
    )
    args = {
        "masked": [prior, "--masks", s / "masks"],
        "masks": [s / "masked", "--masks", prior],
        "ground-truth": [s / "masked", "--masks", s / "masks", "--ground-truth", prior],
    }[which]
    before = _tree(prior)
    assert_error(
        runner,
        ["inpaint", *args, "--model", tiny_run, "--out", prior, "--overwrite"],
        "is the input folder",
    )
    assert _tree(prior) == before


def test_out_inside_an_input_folder_is_refused_but_inside_a_model_run_is_fine(
    runner, tiny_data, tiny_run, tmp_path
):
    masked, masks = tmp_path / "masked", tmp_path / "masks"
    make_images(masked, 2)
    make_masks(masks, 2)
    assert_error(
        runner,
        ["inpaint", masked, "--masks", masks, "--model", tiny_run, "--out", masked / "results"],
        "is inside the input folder",
    )
    run_copy = tmp_path / "run"
    shutil.copytree(tiny_run, run_copy)
    ok_json(
        runner,
        [
            "inpaint",
            masked,
            "--masks",
            masks,
            "--model",
            run_copy,
            "-T",
            "2",
            "--out",
            run_copy / "fills",
        ],
    )
    assert_error(
        runner,
        [
            "inpaint",
            masked,
            "--masks",
            masks,
            "--model",
            run_copy,
            "--out",
            run_copy / "tokenizer.pt",
        ],
        "is the input file",
    )


def test_fid_weights_never_turns_a_users_file_into_weights(runner, real_inception, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    assert_error(
        runner,
        ["fid-weights", "--from", real_inception, "--out", notes],
        "already exists; pass --overwrite",
    )
    assert_error(
        runner,
        ["fid-weights", "--from", real_inception, "--out", notes, "--overwrite"],
        "is not a FID-Inception weights file maskgit wrote",
    )
    assert notes.read_text() == "my notes"
    assert_error(
        runner,
        ["fid-weights", "--from", real_inception, "--out", real_inception],
        "is the input file",
    )


@pytest.mark.parametrize("name", ["config.yaml", "metrics_tokenizer.jsonl"])
def test_train_never_overwrites_a_users_file_in_its_run_directory(
    name, runner, tiny_data, tmp_path
):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / name).write_text("mine")
    args = [
        "train",
        TINY,
        "--stage",
        "tokenizer",
        "--data",
        tiny_data["train"],
        "--max-steps",
        "1",
        "--out",
        run_dir,
    ]
    assert_error(runner, args, f"holds {name}, which maskgit did not write")
    assert_error(runner, [*args, "--overwrite"], f"holds {name}, which maskgit did not write")
    assert (run_dir / name).read_text() == "mine" and sorted(p.name for p in run_dir.iterdir()) == [
        name
    ]
    (run_dir / "notes.txt").write_text("kept")  # a file train never writes may stay beside the run
    (run_dir / name).unlink()
    ok_json(runner, args)
    assert (run_dir / "notes.txt").read_text() == "kept"


def test_encode_overwrite_replaces_only_a_token_file(runner, tiny_data, tiny_run, tmp_path):
    mine = tmp_path / "user.txt"
    mine.write_text("mine")
    args = ["encode", tiny_data["test"], "--tokenizer", tiny_run]
    assert_error(runner, [*args, "--out", mine, "--overwrite"], "is not a token file maskgit wrote")
    assert mine.read_text() == "mine"
    ok_json(runner, [*args, "--out", tmp_path / "t.npz"])
    ok_json(runner, [*args, "--out", tmp_path / "t.npz", "--overwrite"])  # its own: replaced
    stats = tmp_path / "pytorch_fid_stats.npz"
    np.savez(stats, mu=np.zeros(4), sigma=np.eye(4))  # pytorch-fid's statistics: not maskgit's
    assert_error(
        runner, [*args, "--out", stats, "--overwrite"], "is not a token file maskgit wrote"
    )


@pytest.mark.parametrize("entry", ["symlink", "fifo", "empty folder"])
def test_overwrite_never_deletes_a_link_pipe_or_folder_it_did_not_write(
    entry, runner, inp, tmp_path
):
    out = tmp_path / "o"
    ok_json(runner, [*inp, "--out", out])
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    name = {"symlink": "link", "fifo": "pipe", "empty folder": "keep"}[entry]
    if entry == "symlink":
        (out / name).symlink_to(target)
    elif entry == "fifo":
        os.mkfifo(out / name)
    else:
        (out / name).mkdir()
    assert_error(
        runner, [*inp, "--out", out, "--overwrite"], f"holds files maskgit did not write ({name})"
    )
    assert (out / name).exists() or (out / name).is_symlink()
    assert target.read_text() == "precious"


def test_an_output_being_written_is_in_use_for_a_second_run(
    runner, inp, tiny_data, tiny_run, tmp_path
):
    out = tmp_path / "o"
    with outputs.Lock(out):  # another maskgit run is writing it
        assert_error(runner, [*inp, "--out", out], "is in use: another maskgit run is writing it")
        assert_error(
            runner,
            ["encode", tiny_data["test"], "--tokenizer", tiny_run, "--out", out],
            "is in use",
        )
    assert not out.exists()
    ok_json(runner, [*inp, "--out", out])  # free again
    assert _hidden_beside(out) == []


@pytest.mark.slow
def test_two_concurrent_runs_to_one_new_output_one_wins_one_is_refused(
    tiny_data, tiny_run, tmp_path
):
    out = tmp_path / "o"
    cmd = _inpaint_cmd(tiny_data, tiny_run, out, "-T", "12", "--batch-size", "1")
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    codes = sorted(r[2] for r in results)
    assert codes == [0, 1], results
    loser = next(r for r in results if r[2] == 1)
    assert (
        "in use" in json.loads(loser[0])["error"]
        or "already exists" in json.loads(loser[0])["error"]
    )
    assert len(list(out.glob("*.png"))) == 10 and _hidden_beside(out) == []


def test_an_empty_out_is_refused_not_the_current_folder(runner, inp, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in ([*inp, "--out", ""], [*inp, "--out="], ["mask", "", "--out", "x"]):
        r = run(runner, args, json_out=True)
        assert (
            r.exit_code == 2
            and "is empty (an unset shell variable?)" in json.loads(r.stdout)["error"]
        )
    assert list(tmp_path.iterdir()) == []


def test_out_dot_with_overwrite_keeps_the_folder_a_shell_stands_in(
    runner, inp, tmp_path, monkeypatch
):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    ok_json(runner, [*inp, "--out", "."])
    inode = here.stat().st_ino
    ok_json(runner, [*inp, "--out", ".", "--overwrite"])
    assert (
        here.stat().st_ino == inode and Path.cwd().exists()
    )  # the same folder, not a replaced one
    assert len(list(here.glob("*.png"))) == 10 and sorted(p.name for p in tmp_path.iterdir()) == [
        "here"
    ]


def test_a_training_run_is_never_replaced_by_other_output(runner, inp, tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    ok_json(
        runner,
        [
            "train",
            TINY,
            "--stage",
            "tokenizer",
            "--data",
            tiny_data["train"],
            "--max-steps",
            "1",
            "--out",
            run_dir,
        ],
    )
    assert_error(runner, [*inp, "--out", run_dir, "--overwrite"], "is a training run directory")
    assert (run_dir / "tokenizer.pt").is_file()


@pytest.mark.parametrize(
    "command", ["inpaint", "train", "fid-weights", "fid --save-stats", "encode"]
)
def test_an_output_below_a_file_is_one_line(
    command, runner, tiny_data, tiny_run, real_inception, tmp_path
):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = _writers(tiny_data, tiny_run, real_inception, blocker / "sub")[command]
    assert_error(runner, args, "is a file, not a folder")
    assert blocker.read_text() == "x"


def test_file_outputs_given_a_folder_say_so(runner, tiny_data, tiny_run, real_inception, tmp_path):
    folder = tmp_path / "dir"
    folder.mkdir()
    assert_error(
        runner,
        ["fid-weights", "--from", real_inception, "--out", folder],
        "is a folder; give the file",
    )
    assert_error(
        runner,
        [
            "fid",
            tiny_data["test"],
            tiny_data["masked"],
            "--inception-weights",
            real_inception,
            "--dims",
            "64",
            "--save-stats",
            folder,
        ],
        "is a folder; give the file",
    )
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert_error(
        runner,
        ["train", TINY, "--stage", "tokenizer", "--data", tiny_data["train"], "--out", blocker],
        "is a file, not a folder",
    )


# --------------------------------------------------------------------- 4. whole or not at all


@pytest.mark.parametrize("command", WRITERS)
def test_a_read_only_destination_is_one_line_and_leaves_nothing(
    command, runner, tiny_data, tiny_run, real_inception, tmp_path
):
    dest = tmp_path / "ro"
    dest.mkdir()
    args = _writers(tiny_data, tiny_run, real_inception, dest)[command]
    with read_only(dest):
        assert_error(runner, args, "cannot write")
    assert list(dest.iterdir()) == []


def _disk_full(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_inpainting_is_one_line_and_leaves_nothing(
    runner, inp, tmp_path, monkeypatch
):
    monkeypatch.setattr(Image.Image, "save", _disk_full)
    assert_error(runner, [*inp, "--out", tmp_path / "o"], "the disk is full")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_at_the_first_checkpoint_is_one_line(runner, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(Path, "write_bytes", _disk_full)  # checkpoints are written with write_bytes
    assert_error(
        runner,
        [
            "train",
            TINY,
            "--stage",
            "tokenizer",
            "--data",
            tiny_data["train"],
            "--max-steps",
            "2",
            "--set",
            "tokenizer_train.checkpoint_every=1",
            "--out",
            tmp_path / "run",
        ],
        "tokenizer.pt: cannot write (the disk is full",
    )


def test_a_full_disk_when_saving_statistics_keeps_the_fid(
    runner, tiny_data, real_inception, tmp_path, monkeypatch
):
    monkeypatch.setattr(np, "savez", _disk_full)
    args = [
        "fid",
        tiny_data["test"],
        tiny_data["masked"],
        "--inception-weights",
        real_inception,
        "--dims",
        "64",
        "--save-stats",
        tmp_path / "s.npz",
        "--json",
    ]
    r = run(runner, args)
    assert (
        r.exit_code == 1 and "the disk is full" in r.stderr and "the FID was computed" in r.stderr
    )
    payload = json.loads(r.stdout)
    assert payload["fid"] > 0 and "the disk is full" in payload["error"]
    assert list(tmp_path.iterdir()) == []


def test_a_partial_left_by_kill_9_is_removed_by_the_next_run(runner, inp, tmp_path):
    out = tmp_path / "o"
    stale = tmp_path / f".o.{outputs.PARTIAL}-x1y2"
    stale.mkdir()
    (stale / "000.png").write_bytes(b"half")
    (tmp_path / f".o.{outputs.LOCK}").write_text(
        ""
    )  # a lock file whose holder died (flock is gone)
    ok_json(runner, [*inp, "--out", out])
    assert _hidden_beside(out) == [] and len(list(out.glob("*.png"))) == 10


def _wait_for(predicate, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not predicate():
        if time.time() - t0 > timeout:
            raise TimeoutError
        time.sleep(0.05)


def _inpaint_cmd(tiny_data, tiny_run, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "maskgit_cli",
        *inpaint_args(tiny_data, tiny_run, out, "--json", *extra),
    ]


def _slow_inpaint(tiny_data, tiny_run, out: Path) -> list[str]:
    return _inpaint_cmd(
        tiny_data, tiny_run, out, "-T", "12", "--candidates", "30", "--batch-size", "1"
    )


@pytest.mark.slow
def test_sigterm_is_handled_like_ctrl_c(tiny_data, tiny_run, tmp_path):
    out = tmp_path / "o"
    proc = subprocess.Popen(
        _slow_inpaint(tiny_data, tiny_run, out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: any(p.name.startswith(f".o.{outputs.PARTIAL}") for p in tmp_path.iterdir()))
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    lines = [x for x in stdout.splitlines() if x.strip()]
    assert len(lines) == 1 and json.loads(lines[0])["interrupted"] is True
    assert "terminated (SIGTERM)" in stderr and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []  # no output, no partial, no lock


@pytest.mark.slow
def test_sigterm_during_training_saves_a_checkpoint_that_resumes(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "maskgit_cli",
        "train",
        str(TINY),
        "--stage",
        "tokenizer",
        "--data",
        str(tiny_data["train"]),
        "--out",
        str(run_dir),
        "--max-steps",
        "100000",
        "--device",
        "cpu",
        "--json",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(
        lambda: (
            (run_dir / "metrics_tokenizer.jsonl").is_file()
            and (run_dir / "metrics_tokenizer.jsonl").stat().st_size > 0
        )
    )
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    payload = json.loads(stdout)
    assert payload["interrupted"] is True and payload["steps"] > 0
    again = [
        *cmd[: cmd.index("--max-steps")],
        "--max-steps",
        str(payload["steps"] + 2),
        "--device",
        "cpu",
        "--resume",
        "--json",
    ]
    done = subprocess.run(again, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and json.loads(done.stdout)["steps"] == payload["steps"] + 2


@pytest.mark.slow
def test_kill_9_mid_write_leaves_a_partial_that_the_next_run_removes(tiny_data, tiny_run, tmp_path):
    out = tmp_path / "o"
    proc = subprocess.Popen(
        _slow_inpaint(tiny_data, tiny_run, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _wait_for(lambda: any(p.name.startswith(f".o.{outputs.PARTIAL}") for p in tmp_path.iterdir()))
    proc.kill()
    proc.communicate(timeout=60)
    assert _hidden_beside(out) and not out.exists()  # a hidden partial, no output
    done = subprocess.run(
        _inpaint_cmd(tiny_data, tiny_run, out, "-T", "2"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert _hidden_beside(out) == [] and len(list(out.glob("*.png"))) == 10
