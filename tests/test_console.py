"""What people see: progress lines in logs (stderr not a terminal), --quiet, tables."""

import io
import json

from conftest import TINY, run

from maskgit_cli import console


def test_a_log_gets_a_line_per_interval_with_counts_and_time_left(monkeypatch, capsys):
    monkeypatch.setattr(console, "_console", None)
    clock = iter(range(40, 10_000, 40))  # 40 s between clock reads: all past the interval
    bar = console._LineBar("train tokenizer", every=30.0)
    bar.clock = lambda: next(clock)
    bar.t0 = bar.last = 0
    bar.update(10, 100, "loss 0.5")
    bar.update(50, 100)
    bar.update(description="preparing tokens")
    err = capsys.readouterr().err
    assert "train tokenizer: 10/100 (10%)" in err and "loss 0.5" in err and "left" in err
    assert "train tokenizer: 50/100 (50%)" in err and "preparing tokens" in err


def test_a_second_pass_in_a_log_times_itself(monkeypatch, capsys):
    """fid counts folder A's features, then B's from 0: B's time left is its own pace, not
    the time since A began."""
    monkeypatch.setattr(console, "_console", None)
    now = [0.0]
    bar = console._LineBar("features", every=30.0)
    bar.clock = lambda: now[0]
    bar.t0 = bar.last = 0
    now[0] = 100
    bar.update(100, 100)  # folder A: 100 s
    bar.update(0, 100)  # folder B starts
    now[0] = 130
    bar.update(50, 100)  # 50 done after 30 s: 30 s left
    err = capsys.readouterr().err
    assert "features: 50/100 (50%) 30s elapsed about 30s left" in err


def test_a_resumed_run_in_a_log_is_timed_on_its_own_steps(monkeypatch, capsys):
    """Resumed at step 400 of 1200: 10 steps in 20 s leave 790 steps, about 26 min, not the
    1 min that 410 steps in 20 s would claim."""
    monkeypatch.setattr(console, "_console", None)
    now = [0.0]
    bar = console._LineBar("train decoder", every=30.0)
    bar.clock = lambda: now[0]
    bar.t0 = bar.last = 0
    bar.update(400, 1200)  # the loop's first tick: where the run starts
    now[0] = 40
    bar.update(420, 1200)
    err = capsys.readouterr().err
    assert "train decoder: 420/1200 (35%) 40s elapsed about 26m00s left" in err


def test_a_resumed_run_on_a_terminal_is_timed_on_its_own_steps(monkeypatch):
    from rich.progress import Progress

    p = Progress(console=console.Console(file=io.StringIO()))
    task = p.add_task("starting", total=None)
    bar = console._RichBar(p, task)
    bar.update(description="loading images")
    bar.update(48, 48)
    bar.update(description="preparing tokens")
    bar.update(400, 1200, description="train transformer")  # the loop's first tick
    t = p.tasks[task]
    assert t.description == "train transformer" and t.completed == 400 and t.total == 1200
    assert sum(s.completed for s in t._progress) == 0  # no leap of 400 in the pace
    bar.update(410, 1200, description="train transformer")
    assert sum(s.completed for s in p.tasks[task]._progress) == 10


def test_a_short_run_in_a_log_prints_no_progress(monkeypatch, capsys):
    monkeypatch.setattr(console, "_console", None)
    bar = console._LineBar("inpaint", every=30.0)
    for i in range(10):
        bar.update(i + 1, 10)
    assert capsys.readouterr().err == ""


def test_training_in_a_log_moves_through_every_phase(monkeypatch, runner, tiny_data, tmp_path):
    """stderr not a terminal (CI): each phase (loading images, the steps) shows its count."""
    monkeypatch.setattr(console._LineBar, "__init__", _eager_init)
    r = run(
        runner,
        [
            "train",
            TINY,
            "--stage",
            "tokenizer",
            "--data",
            tiny_data["train"],
            "--val",
            tiny_data["val"],
            "--out",
            tmp_path / "run",
            "--max-steps",
            "3",
        ],
    )
    assert r.exit_code == 0, r.stderr
    assert "loading images: 48/48 (100%)" in r.stderr and "loading val images: 16/16" in r.stderr
    assert "train tokenizer: 3/3 (100%)" in r.stderr


def _eager_init(self, description, every=30.0):
    import time

    self.clock, self.description, self.every = time.monotonic, description, 0.0
    self.completed, self.total, self.status = 0, None, ""
    self.t0 = self.last = self.clock()
    self.base, self.printed = None, False


def test_quiet_leaves_stderr_empty_and_json_intact(runner, tiny_data, tiny_run, tmp_path):
    args = [
        "inpaint",
        tiny_data["masked"],
        "--masks",
        tiny_data["masks"],
        "--model",
        tiny_run,
        "-T",
        "2",
        "--out",
        tmp_path / "o",
        "--quiet",
    ]
    r = run(runner, args)
    assert r.exit_code == 0 and r.stderr == ""
    r = run(runner, [*args[:-3], "--out", tmp_path / "p", "--quiet"], json_out=True)
    assert r.exit_code == 0 and r.stderr == "" and json.loads(r.stdout)["count"] == 10
