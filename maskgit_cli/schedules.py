"""Mask schedules gamma(r): the fraction of tokens still masked at decoding progress r in [0, 1].

MaskGIT (Chang et al., 2022, sec. 3.3) draws the training mask ratio as gamma(r), r ~ U(0, 1),
and keeps ceil/floor(gamma((t+1)/T) * N) tokens masked after decoding step t. Every gamma here has
gamma(0) = 1 (all masked), gamma(1) = 0 (none masked) and is non-increasing. Concave schedules
(cosine, square, cubic) reveal few tokens early, when the model knows least.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names are needed without torch (command-line help), the functions with it
    import torch

Gamma = Callable[["torch.Tensor"], "torch.Tensor"]


def cosine(r: torch.Tensor) -> torch.Tensor:
    return (r * math.pi / 2).cos()


def linear(r: torch.Tensor) -> torch.Tensor:
    return 1 - r


def square(r: torch.Tensor) -> torch.Tensor:
    return 1 - r**2


def cubic(r: torch.Tensor) -> torch.Tensor:
    return 1 - r**3


def sqrt(r: torch.Tensor) -> torch.Tensor:
    return 1 - r.sqrt()


def arccos(r: torch.Tensor) -> torch.Tensor:
    return r.clamp(-1, 1).arccos() / (math.pi / 2)


SCHEDULES: dict[str, Gamma] = {
    "cosine": cosine,
    "linear": linear,
    "square": square,
    "cubic": cubic,
    "sqrt": sqrt,
    "arccos": arccos,
}


def get(name: str) -> Gamma:
    from maskgit_cli.errors import ConfigError

    if name not in SCHEDULES:
        raise ConfigError(f"unknown mask schedule '{name}'; choose from {', '.join(SCHEDULES)}")
    return SCHEDULES[name]


def gamma(name: str, r: float | torch.Tensor) -> torch.Tensor:
    """gamma_name(r), clamped to [0, 1] against float error at the ends."""
    import torch

    r = torch.as_tensor(r, dtype=torch.float64)
    return get(name)(r.clamp(0, 1)).clamp(0, 1)
