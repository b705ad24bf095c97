"""Shared helpers for the benchmarks: the peak matmul FLOP/s of each precision measured in the same
run (the MFU denominators), the precisions to compare, and interleaved timing."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def matmul_peak(
    sizes: tuple[int, ...] = (2048, 4096), repeats: int = 8, dtype: torch.dtype = torch.float32
) -> float:
    """Best observed FLOP/s of square matmuls in `dtype` on this device (the MFU denominator of
    that precision). Larger sizes reach more of the machine, so the best over sizes is the honest
    ceiling."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def interleaved(fns: dict, rounds: int = 3) -> dict:
    """Best seconds of each fn, run in alternation after one warm-up each, so that this VM's
    drifting speed hits all of them alike."""
    for fn in fns.values():
        fn()
    times: dict = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: min(v) for k, v in times.items()}


def machine() -> dict:
    from maskgit_cli import precision

    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_units": precision.cpu_bf16(),  # False: the bf16 rows are left out
    }


def emit(payload: dict) -> None:
    print(json.dumps(payload, indent=2))


def precisions(asked: str) -> list:
    """The precisions to time, side by side: fp32 and, where this machine has bf16 matrix units,
    bf16 ("fp32,bf16" by default; a bf16 this CPU lacks is left out, and `machine()` says so)."""
    from maskgit_cli import precision

    cpu = torch.device("cpu")
    names = [p.strip() for p in asked.split(",") if p.strip()]
    return [precision.resolve(n, cpu) for n in names if n != "bf16" or precision.cpu_bf16()]


def peaks(precs: list) -> dict:
    """{precision name: its matmul peak FLOP/s}, measured now."""
    return {p.name: matmul_peak(dtype=p.dtype or torch.float32) for p in precs}
