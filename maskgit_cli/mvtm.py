"""Masked visual token modeling (MVTM, Chang et al. 2022, sec. 3.2): stage 2's training objective.

Beside `decode.py`, which un-masks at inference: training masks ceil(gamma(r) * N) tokens with
r ~ U(0, 1) (or that share of a random hole) and scores the cross-entropy on them only.

    mask = mvtm_mask(ids, "cosine", g)                       (B, N) bool, True = MASK
    loss = masked_loss(model(ids.masked_fill(mask, K), mask), ids, mask)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from maskgit_cli import data


def mvtm_mask(
    ids: torch.Tensor,
    schedule: str,
    generator: torch.Generator,
    mode: str = "random",
    image_size: int = 64,
    with_hole: bool = False,
):
    """The MVTM training mask, bool (B, N), True = replaced by MASK.

    random: per sample r ~ U(0, 1), n = ceil(gamma(r) * N) clamped to [1, N], the n positions
    with the smallest uniform noise. region: a random hole (blob or box) drawn in pixel space
    and mapped to tokens like an inpainting mask; inside it n = ceil(gamma(r) * |hole|) tokens
    are masked, which is what decoding sees mid-way through filling a hole. mixed: half each.
    With `with_hole`, also the hole each sample's mask was drawn from (the mask itself for random
    samples): decoding computes its colour hint once, from the whole initial hole.
    """
    from maskgit_cli import schedules

    B, N = ids.shape
    r = torch.rand(B, generator=generator)
    noise = torch.rand(B, N, generator=generator)
    region = torch.ones(B, N, dtype=torch.bool)
    if mode != "random":
        grid = int(math.isqrt(N))
        holes = data.token_mask(data.random_region_masks(B, image_size, generator), grid).view(B, N)
        use = (
            torch.ones(B, dtype=torch.bool)
            if mode == "region"
            else torch.rand(B, generator=generator) < 0.5
        )
        holes[holes.sum(1) == 0] = True  # an empty hole falls back to the whole image
        region = torch.where(use.view(B, 1), holes, region)
    size = region.sum(1)
    n = torch.ceil(schedules.gamma(schedule, r).float() * size).long().clamp(min=1)
    n = torch.minimum(n, size)
    noise = noise.masked_fill(~region, 2.0)  # positions outside the region are never chosen
    rank = noise.argsort(dim=1).argsort(dim=1)
    mask = rank < n.view(B, 1)
    if not with_hole:
        return mask
    return mask, torch.where(region.all(1, keepdim=True), mask, region)


def mvtm_hint(colors: torch.Tensor | None, unknown: torch.Tensor) -> torch.Tensor | None:
    """The colour hint: the tokens' mean colours (B, 3, h, w) with the `unknown` (B, N) ones
    replaced by the harmonic fill of the rest -> (B, N, 3); the model adds it where ids = MASK.
    Decoding builds it the same way from the known tokens of the masked image. None without
    colours (a model without hints)."""
    if colors is None:
        return None
    from maskgit_cli.harmonic import token_hint

    return token_hint(colors, unknown)


def masked_loss(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy over the masked positions only. logits (B, N, K), or (M, K) already taken at
    the mask as `model(ids, mask)` returns them; target (B, N), mask (B, N)."""
    if logits.dim() == 3:
        logits = logits[mask]
    return F.cross_entropy(logits.float(), target[mask], label_smoothing=label_smoothing)


def fixed_ratio_mask(B: int, N: int, ratio: float, seed: int) -> torch.Tensor:
    """Exactly round(ratio * N) masked positions per sample, from a fixed seed (comparable runs)."""
    g = torch.Generator().manual_seed(seed)
    rank = torch.rand(B, N, generator=g).argsort(dim=1).argsort(dim=1)
    return rank < max(1, round(ratio * N))
