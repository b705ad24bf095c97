"""Numeric precision: fp32, or bf16 where the hardware multiplies bf16 matrices natively.

    prec = precision.resolve("auto", device)
    with prec.autocast():          # training: fp32 master weights, bf16 matmuls and convolutions
        loss = ...
    model = prec.for_inference(model)   # inference: the weights themselves in bf16

`auto` is bf16 on a CPU whose matrix units take bf16 (AVX512-BF16 or AMX, as torch itself
detects them) and fp32 on any other CPU; on CUDA it is bf16 where the GPU supports it, else fp16
(autocast with a gradient scaler). What decides which token wins stays in fp32 whatever the
precision: log-probabilities, Gumbel noise, confidences and their ranking (decode.py), the
codebook's nearest-code search (vqgan.Codebook), and the losses. FID-Inception is always fp32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from maskgit_cli.config import PRECISIONS as CHOICES
from maskgit_cli.errors import CheckpointError, ConfigError

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions: AVX512-BF16 or AMX tiles (torch's check)."""
    cpu = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch: oneDNN's own view
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | bf16 | fp16
    device: torch.device

    @property
    def dtype(self) -> torch.dtype | None:
        """The compute dtype of matmuls and convolutions; None for fp32."""
        return _DTYPES[self.name]

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A real scaler for fp16 only (bf16 has fp32's range); a disabled no-op otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")

    def for_inference(self, model: torch.nn.Module | None) -> torch.nn.Module | None:
        """bf16: the weights themselves in bf16 (no cast at every call); fp16 uses autocast."""
        return model.to(torch.bfloat16) if self.name == "bf16" and model is not None else model

    def inference_autocast(self):
        """What inference runs under: nothing for fp32 and for bf16 weights; autocast for fp16."""
        return self.autocast() if self.name == "fp16" else contextlib.nullcontext()

    @property
    def math_attention(self) -> bool:
        """Training in bf16 on a CPU: attention as plain matmuls, which run on the bf16 units, is
        faster there than the fused kernel's backward (measured 1.6x at the cats64 transformer)."""
        return self.name == "bf16" and self.device.type == "cpu"


def resolve(name: str, device: torch.device, flag: str = "--precision") -> Precision:
    """The precision `name` asks for on `device`, refused where the hardware lacks it."""
    if name not in CHOICES:
        raise ConfigError(f"{flag} must be one of {', '.join(CHOICES)}, got '{name}'")
    cuda = device.type == "cuda"
    if name == "auto":
        if cuda:
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            name = "bf16" if cpu_bf16() else "fp32"
    elif name == "bf16" and not (torch.cuda.is_bf16_supported() if cuda else cpu_bf16()):
        where = "this GPU" if cuda else "this CPU (it lacks AVX512-BF16 and AMX)"
        raise ConfigError(
            f"{flag} bf16: {where} has no bf16 matrix units, so bf16 would be emulated and slow; "
            "use --precision fp32 (or auto)"
        )
    elif name == "fp16" and not cuda:
        raise ConfigError(f"{flag} fp16 needs a CUDA GPU; on the CPU use bf16 or fp32 (or auto)")
    return Precision(name, device)


def available(name: str, device: torch.device) -> bool:
    """Whether `device` can run precision `name` (resolve would not refuse it)."""
    try:
        resolve(name, device)
    except ConfigError:
        return False
    return True


def for_resume(requested: str, saved: str | None, device: torch.device) -> str:
    """The precision a resumed run asks for. `auto` means the run's own where this hardware has
    it (a run started on a CPU with bf16 units continues in bf16 wherever they exist); anything
    else is what the user asked for, and check_resume judges it."""
    saved = saved or "fp32"  # checkpoints before 0.2 trained in fp32
    return saved if requested == "auto" and available(saved, device) else requested


def check_resume(state: dict, now: Precision, scaler: torch.amp.GradScaler, path) -> str | None:
    """A run continues in the precision it trained in, where the hardware has it: a resume is
    exact only within one precision. Where it lacks it (a bf16 run moved to a CPU without bf16
    units), the run continues in `now` and the returned note says so: the master weights and the
    optimizer's state are fp32 in every precision, so nothing is lost but bit-exactness. `state`
    is the stage's saved training state; its grad scaler's state is restored into `scaler` only
    within one precision (a fresh one otherwise)."""
    saved = state.get("precision") or "fp32"
    if saved == now.name:
        scaler.load_state_dict(state["scaler"])
        return None
    if available(saved, now.device):
        raise CheckpointError(
            f"{path}: the run trained in {saved} and would continue in {now.name}; a run keeps "
            f"its precision where the hardware has it: resume with --precision {saved} (or "
            "auto), or start a new --out"
        )
    where = "this GPU" if now.device.type == "cuda" else "this CPU"
    return (
        f"the run trained in {saved}, which {where} cannot run, and continues in {now.name} "
        "(fp32 master weights in both; no longer bit-exact against an uninterrupted run)"
    )


def fp32(device: torch.device | str = "cpu") -> Precision:
    return Precision("fp32", torch.device(device))
