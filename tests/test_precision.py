"""Precision: auto / fp32 / bf16 resolve by what the hardware has, bf16 keeps what decides a token
in fp32, runs report their precision and resume in it where the hardware has it."""

import pytest
import torch
from conftest import TINY, assert_error, invoke_json

from maskgit_cli import checkpoint, config, precision, vqgan
from maskgit_cli.errors import ConfigError

CPU = torch.device("cpu")


@pytest.fixture
def bf16_units(monkeypatch):
    """bf16 as the precision setting sees it. A CPU without bf16 matrix units still computes bf16
    (torch emulates it, slowly), so the checks run everywhere: on such a CPU `auto` and `bf16`
    are told the units are there."""
    if not precision.cpu_bf16():
        monkeypatch.setattr(precision, "cpu_bf16", lambda: True)


BF16 = pytest.mark.usefixtures("bf16_units")


def test_auto_follows_the_cpus_bf16_units(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16", lambda: True)
    assert precision.resolve("auto", CPU).name == "bf16"
    monkeypatch.setattr(precision, "cpu_bf16", lambda: False)
    assert precision.resolve("auto", CPU).name == "fp32"
    assert precision.resolve("fp32", CPU).dtype is None


def test_bf16_on_a_cpu_without_bf16_units_is_a_clear_error(
    monkeypatch, runner, tiny_data, tmp_path
):
    monkeypatch.setattr(precision, "cpu_bf16", lambda: False)
    with pytest.raises(ConfigError, match="no bf16 matrix units"):
        precision.resolve("bf16", CPU)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        precision.resolve("fp16", CPU)
    assert_error(
        runner,
        [
            "inpaint",
            tiny_data["masked"],
            "--masks",
            tiny_data["masks"],
            "--out",
            tmp_path / "o",
            "--precision",
            "bf16",
        ],
        "--precision bf16: this CPU (it lacks AVX512-BF16 and AMX)",
    )
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
            tmp_path / "r",
            "--precision",
            "bf16",
        ],
        "no bf16 matrix units",
    )


def test_the_nearest_code_is_found_in_fp32_under_bf16_autocast():
    cb = vqgan.Codebook(64, 8)
    z = torch.randn(500, 8)
    want = cb.nearest(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(cb.nearest(z), want)
    assert torch.equal(cb.nearest(z.bfloat16()), cb.nearest(z.bfloat16().float()))


@BF16
def test_bf16_inference_runs_the_weights_in_bf16_and_keeps_the_known_pixels(
    runner, tiny_data, tiny_run, tmp_path
):
    out = invoke_json(
        runner,
        [
            "inpaint",
            str(tiny_data["masked"]),
            "--masks",
            str(tiny_data["masks"]),
            "--model",
            str(tiny_run),
            "--out",
            str(tmp_path / "o"),
            "--precision",
            "bf16",
            "-T",
            "3",
        ],
    )
    assert out["precision"] == "bf16"
    from conftest import known_pixels_unchanged

    known_pixels_unchanged(tiny_data, tmp_path / "o")
    cfg = config.load(TINY)
    model = precision.resolve("bf16", CPU).for_inference(vqgan.build(cfg))
    x = torch.rand(2, 3, 16, 16)
    assert (
        model.encode(x).dtype == torch.int64
        and model.decode_ids(model.encode(x)).dtype == torch.bfloat16
    )


@pytest.mark.parametrize("command", ["encode", "inpaint", "demo"])
def test_every_model_command_reports_its_precision(command, runner, tiny_data, tiny_run, tmp_path):
    args = {
        "encode": [
            "encode",
            str(tiny_data["test"]),
            "--tokenizer",
            str(tiny_run),
            "--out",
            str(tmp_path / "t.npz"),
        ],
        "inpaint": [
            "inpaint",
            str(tiny_data["masked"]),
            "--masks",
            str(tiny_data["masks"]),
            "--model",
            str(tiny_run),
            "--out",
            str(tmp_path / "o"),
            "-T",
            "2",
        ],
        "demo": ["demo", "--out", str(tmp_path / "d")],
    }[command]
    for name in ("fp32", "auto"):
        out = invoke_json(runner, [*args, "--precision", name, "--overwrite"])
        assert out["precision"] == precision.resolve(name, CPU).name


def _tokenizer_run(tiny_data, run):
    return [
        "train",
        str(TINY),
        "--stage",
        "tokenizer",
        "--data",
        str(tiny_data["train"]),
        "--out",
        str(run),
    ]


@BF16
def test_a_run_resumes_only_in_its_own_precision(runner, tiny_data, tmp_path):
    base = _tokenizer_run(tiny_data, tmp_path / "run")
    first = invoke_json(runner, [*base, "--max-steps", "2", "--precision", "fp32"])
    assert first["precision"] == "fp32"
    assert_error(
        runner,
        [*base, "--max-steps", "4", "--resume", "--precision", "bf16"],
        "the run trained in fp32 and would continue in bf16",
    )
    again = invoke_json(runner, [*base, "--max-steps", "4", "--resume", "--precision", "fp32"])
    assert again["steps"] == 4 and again["precision"] == "fp32"


@BF16
def test_auto_resumes_a_run_in_its_own_precision(runner, tiny_data, tmp_path):
    """`auto` is bf16 here; a run made in fp32 (every run before 0.2) continues in fp32 under
    `auto`, with no flag, and bit for bit as if it had never stopped."""
    base = _tokenizer_run(tiny_data, tmp_path / "run")
    invoke_json(runner, [*base, "--max-steps", "2", "--precision", "fp32"])
    again = invoke_json(runner, [*base, "--max-steps", "4", "--resume"])
    assert again["precision"] == "fp32" and again["steps"] == 4
    assert not any("continues in" in w for w in again["warnings"])
    whole = _tokenizer_run(tiny_data, tmp_path / "whole")
    invoke_json(runner, [*whole, "--max-steps", "4", "--precision", "fp32"])
    a = checkpoint.load(tmp_path / "run" / checkpoint.TOKENIZER)["model"]
    b = checkpoint.load(tmp_path / "whole" / checkpoint.TOKENIZER)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("stage", ["tokenizer", "decoder", "transformer"])
def test_a_bf16_run_continues_in_fp32_on_a_cpu_without_bf16_units(
    stage, monkeypatch, runner, tiny_run, tiny_data, tmp_path
):
    """Moved to a CPU that cannot run bf16, a bf16 run continues in fp32 (its master weights are
    fp32 anyway) and says so; asking for bf16 there is refused by the hardware check."""
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    if stage != "tokenizer":
        shutil.copy(tiny_run / checkpoint.TOKENIZER, run / checkpoint.TOKENIZER)
    base = ["train", str(TINY), "--stage", stage, "--data", str(tiny_data["train"])]
    base += ["--out", str(run)]
    monkeypatch.setattr(precision, "cpu_bf16", lambda: True)
    first = invoke_json(runner, [*base, "--max-steps", "2", "--precision", "bf16", "--overwrite"])
    assert first["precision"] == "bf16"
    monkeypatch.setattr(precision, "cpu_bf16", lambda: False)
    assert_error(
        runner, [*base, "--max-steps", "4", "--resume", "--precision", "bf16"], "no bf16 matrix"
    )
    again = invoke_json(runner, [*base, "--max-steps", "4", "--resume"])
    assert again["precision"] == "fp32" and again["steps"] == 4
    assert any("trained in bf16" in w and "continues in fp32" in w for w in again["warnings"])
    name = checkpoint.TRANSFORMER if stage == "transformer" else checkpoint.TOKENIZER
    ck = checkpoint.load(run / name)
    state = ck["decoder_train"] if stage == "decoder" else ck
    assert state["precision"] == "fp32" and state["step"] == 4
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


@BF16
@pytest.mark.parametrize("stage", ["tokenizer", "transformer"])
def test_bf16_resume_equals_an_uninterrupted_bf16_run(stage, tiny_run, tiny_data, tmp_path):
    import shutil

    from maskgit_cli import checkpoint, pipeline

    def train(out, steps, resume=False):
        return pipeline.train(
            TINY,
            stage,
            tiny_data["train"],
            out,
            device="cpu",
            resume=resume,
            precision="bf16",
            overrides=[f"{stage}_train.max_steps={steps}"],
        )

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        if stage == "transformer":
            d.mkdir()
            shutil.copy(tiny_run / checkpoint.TOKENIZER, d / checkpoint.TOKENIZER)
    train(a, 6)
    train(b, 3)
    train(b, 6, resume=True)
    name = checkpoint.TOKENIZER if stage == "tokenizer" else checkpoint.TRANSFORMER
    sa, sb = checkpoint.load(a / name)["model"], checkpoint.load(b / name)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_group_norm_keeps_fp32_statistics_in_bf16_training_and_runs_bf16_in_inference():
    torch.manual_seed(0)
    norm = vqgan.GroupNorm(64)
    with torch.no_grad():
        norm.gn.weight.uniform_(0.5, 1.5)
        norm.gn.bias.uniform_(-0.5, 0.5)
    x = (torch.randn(2, 64, 8, 8) * 3 + 5).to(torch.bfloat16)  # a large mean: a stiff variance
    ref = norm.gn(x.float())
    # training under autocast: the fp32 path exactly, then rounded to the input's dtype
    out = norm(x.requires_grad_())
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref.to(torch.bfloat16))
    # inference with bf16 weights: bf16 throughout, statistics still accurate to bf16's rounding
    half = vqgan.GroupNorm(64).to(torch.bfloat16)
    half.load_state_dict({k: v.to(torch.bfloat16) for k, v in norm.state_dict().items()})
    with torch.no_grad():
        fast = half(x.detach())
    assert fast.dtype == torch.bfloat16
    assert (fast.float() - ref).abs().max() < 0.05 * ref.abs().max()
    # fp32 is untouched by either path
    assert torch.equal(norm(x.detach().float()), ref)
