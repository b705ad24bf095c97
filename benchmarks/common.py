"""Shared helpers for the benchmarks: peak fp32 matmul FLOP/s measured in the same run, timing."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def matmul_peak(sizes: tuple[int, ...] = (2048, 4096), repeats: int = 8) -> float:
    """Best observed fp32 FLOP/s of square matmuls on this device (the MFU denominator). Larger
    sizes reach more of the machine (here 4096 beats 2048 by ~25 %), so the best over sizes is
    the honest ceiling."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
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
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }


def emit(payload: dict) -> None:
    print(json.dumps(payload, indent=2))
