"""Finite scalar quantization (FSQ; Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made
Simple").

Each of d latent channels is squashed to a bounded range and rounded to one of L_i levels; the
implicit codebook is the grid of all level combinations, K = prod(L_i). There is no learned
codebook, so no codebook or commitment loss, no dead codes and nothing to restart.

    z (B, d, h, w) -> z_q (B, d, h, w) in [-1, 1] per channel, ids (B, h, w) in [0, K)

Drop-in for `vqgan.Codebook`: same `K`, `nearest`, `lookup`, `forward` interface.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


class FSQ(nn.Module):
    def __init__(self, levels: tuple[int, ...]):
        super().__init__()
        self.levels = tuple(int(v) for v in levels)
        self.D = len(self.levels)
        self.K = math.prod(self.levels)
        L = torch.tensor(self.levels, dtype=torch.float32)
        basis = torch.cumprod(
            torch.tensor((1, *self.levels[:-1])), 0
        )  # mixed radix: id = sum digit_i * basis_i
        self.register_buffer("_levels", L, persistent=False)
        self.register_buffer("_basis", basis, persistent=False)

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., d) -> a bounded range that rounds to exactly L integers (-L//2 .. (L-1)//2).
        Even L is offset by half a step. The shift that centres z = 0 is the paper's tan(offset /
        half) (Appendix A.1), close to atanh for small ratios and finite at L = 2, where atanh is
        not."""
        half = (self._levels - 1) * (1 - 1e-3) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.tan(offset / half)
        return torch.tanh(z + shift) * half - offset

    def _digits(self, z_int: torch.Tensor) -> torch.Tensor:
        """Rounded values (..., d) -> digits 0 .. L-1."""
        return (z_int + self._levels // 2).long()

    def _scale(self, digits: torch.Tensor) -> torch.Tensor:
        """digits (..., d) -> code values in [-1, 1]."""
        half = self._levels // 2
        return (digits.float() - half) / half

    def nearest(self, z_flat: torch.Tensor) -> torch.Tensor:
        """z_flat (M, d) -> ids (M,) int64."""
        digits = self._digits(torch.round(self._bound(z_flat.float())))
        return (digits * self._basis).sum(-1)

    def codes(self) -> torch.Tensor:
        """All K codes (K, d) in id order."""
        return self._scale(self._id_digits(torch.arange(self.K, device=self._basis.device)))

    def _id_digits(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids.unsqueeze(-1) // self._basis) % self._levels.long()

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, h, w) -> z_q (B, d, h, w)."""
        return self._scale(self._id_digits(ids)).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor):
        """z (B, d, h, w) -> (z_q with straight-through rounding, ids (B, h, w), zero loss)."""
        zb = self._bound(z.float().permute(0, 2, 3, 1))  # (B, h, w, d)
        z_int = zb + (torch.round(zb) - zb).detach()
        ids = (self._digits(z_int.detach()) * self._basis).sum(-1)
        z_q = (z_int / (self._levels // 2)).permute(0, 3, 1, 2).to(z.dtype)
        return z_q.contiguous(), ids, z.new_zeros(())
