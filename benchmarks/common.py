"""Shared helpers for the benchmarks: peak fp32 matmul FLOP/s measured in the same run, timing."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best observed fp32 FLOP/s of an n x n matmul on this device (the MFU denominator)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def timed(fn, warmup: int = 1, repeats: int = 3) -> float:
    """Median seconds of fn() after warmup."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def machine() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}


def emit(payload: dict) -> None:
    print(json.dumps(payload, indent=2))
