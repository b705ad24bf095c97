"""Iterative decoding (MaskGIT, Chang et al. 2022, sec. 3.2), for inpainting and generation.

Start from the image's tokens with the hole set to MASK. At step t = 0..T-1, with ratio = (t+1)/T:
  1. predict: logits = logits_fn(ids, still_masked) over the K codes, at the masked positions;
  2. sample a token at every masked position (or argmax with greedy), optionally only among the
     top_k codes / the top_p nucleus;
  3. score: confidence = log p(sampled) + choice_temperature * (1 - ratio) * Gumbel noise,
     +inf at positions already known (they are never re-masked, never changed);
  4. re-mask: keep masked the floor(gamma(ratio) * unknown0) least confident positions, where
     unknown0 is the sample's number of masked tokens at the start (not the current count), clamped
     so each step reveals at least one token and the last step reveals all.
With a Token-Critic (Lezama et al. 2022, `critic.py`), step 3 scores by the critic instead: the
confidence of a position is log sigmoid(critic(sampled grid)), its belief that the token could be
the data's, and with critic_scope "hole" every position of the hole (not only those sampled this
step) competes to stay, so a token committed early can be re-masked and drawn again.
A sweet spot t < T runs t steps of the T-step schedule, then commits the last sampled tokens at
every position still masked. Everything is per sample, vectorized over the batch; each sample has
its own generator, so a batch decodes exactly as its images would one by one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from maskgit_cli import schedules

# ids (B, N), where (B, N) bool -> logits (M, K) at the `where` positions, in row-major order
LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# ids (B, N), no MASK -> logits (B, N) that each token is the data's rather than sampled
CriticFn = Callable[[torch.Tensor], torch.Tensor]
CRITIC_SCOPES = ("step", "hole")


@dataclass
class DecodeResult:
    ids: torch.Tensor  # (B, N) final tokens, no MASK left
    steps: int  # transformer passes run
    masks: list[torch.Tensor] = field(default_factory=list)  # (B, N) still masked after each step
    predictions: list[torch.Tensor] = field(
        default_factory=list
    )  # (B, N) committed + sampled, each step


def gumbel(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=generator).clamp_(1e-20, 1.0)
    return -torch.log((-torch.log(u)).clamp_min(1e-20))


def num_masked_after(
    step: int, total_iter: int, unknown0: torch.Tensor, schedule: str
) -> torch.Tensor:
    """Tokens left masked after step `step` (0-based) before clamping: floor(gamma((t+1)/T) *
    unknown0)."""
    ratio = (step + 1) / total_iter
    return torch.floor(schedules.gamma(schedule, ratio) * unknown0.double()).long()


def truncate(logp: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Log-probabilities (M, K) with everything outside the top_k codes (0 = no limit) and outside
    the nucleus (the most likely codes whose probabilities first reach top_p; 1 = no limit) set to
    -inf. The most likely code always survives; rows need not be renormalized for sampling."""
    K = logp.shape[-1]
    if 0 < top_k < K:
        kth = logp.topk(top_k, dim=-1).values[:, -1:]
        logp = logp.masked_fill(logp < kth, -math.inf)
    if top_p < 1.0:
        srt, order = logp.sort(dim=-1, descending=True)
        before = srt.exp().cumsum(-1) - srt.exp()  # probability of the codes ranked above each one
        drop = torch.zeros_like(logp, dtype=torch.bool).scatter_(-1, order, before >= top_p)
        logp = logp.masked_fill(drop, -math.inf)
    return logp


@torch.no_grad()
def decode(
    ids: torch.Tensor,
    unknown: torch.Tensor,
    logits_fn: LogitsFn,
    *,
    mask_id: int,
    generators: list[torch.Generator],
    schedule: str = "cosine",
    total_iter: int = 12,
    sweet_spot: int | None = None,
    choice_temperature: float = 4.5,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    critic_fn: CriticFn | None = None,
    critic_scope: str = "hole",
    record: bool = False,
) -> DecodeResult:
    """ids (B, N) int64 (any value at unknown positions), unknown (B, N) bool -> DecodeResult."""
    B, N = ids.shape
    device = ids.device
    T = total_iter
    t_stop = T if not sweet_spot else min(sweet_spot, T)
    schedules.get(schedule)  # fail early on an unknown name
    if critic_scope not in CRITIC_SCOPES:
        raise ValueError(f"critic_scope must be one of {CRITIC_SCOPES}, not {critic_scope!r}")
    cur = ids.masked_fill(unknown, mask_id)
    unknown_cpu = unknown.cpu()
    unknown0 = unknown_cpu.sum(1)  # (B,)
    result = DecodeResult(ids=cur, steps=0)
    for t in range(t_stop):
        still = cur == mask_id  # (B, N)
        if not still.any():
            break
        # Only the masked positions are predicted, sampled and scored (known ones are never
        # re-masked): the cost of the head and of sampling shrinks with the hole.
        logits = logits_fn(cur, still)  # (M, K)
        logp = torch.log_softmax(logits.float() / max(temperature, 1e-6), dim=-1).cpu()  # (M, K)
        pick = truncate(logp, top_k, top_p)  # what is sampled from; confidence stays logp
        still_cpu = still.cpu()
        now = still_cpu.sum(1)  # (B,) still masked before this step
        counts = now.tolist()
        ratio = (t + 1) / T
        sampled = cur.cpu().clone()
        logp_sampled = torch.zeros(B, N)
        noise = torch.zeros(B, N)
        # the positions that compete to stay unmasked: those sampled now, or with a critic
        # scoring the whole hole, every position of the hole
        scope = still_cpu if critic_fn is None or critic_scope == "step" else unknown_cpu
        for b, (rows, prows) in enumerate(
            zip(torch.split(logp, counts), torch.split(pick, counts), strict=True)
        ):
            if not counts[b]:  # noise per sample from its own generator
                continue
            g = generators[b]
            if greedy:
                s = rows.argmax(-1)
            else:
                s = torch.multinomial(prows.exp(), 1, generator=g).squeeze(1)
            sampled[b, still_cpu[b]] = s
            logp_sampled[b, still_cpu[b]] = rows.gather(-1, s[:, None]).squeeze(-1)
            noise[b, scope[b]] = (
                choice_temperature * (1 - ratio) * gumbel((int(scope[b].sum()),), g)
            )
        sampled = sampled.to(device)  # known tokens unchanged
        if critic_fn is None:
            score = logp_sampled
        else:  # the critic's belief that each token is the data's, as a log-probability
            score = F.logsigmoid(critic_fn(sampled).float()).cpu()
        conf = torch.where(scope, score + noise, math.inf).to(device)  # known ones: +inf
        if t == t_stop - 1:
            keep = torch.zeros(B, dtype=torch.long)  # last step (or sweet spot): commit all
        else:
            keep = num_masked_after(t, T, unknown0, schedule)
            keep = torch.minimum(keep, (now - 1).clamp(min=0))  # reveal at least one per step
        rank = conf.argsort(dim=1).argsort(dim=1)
        remask = rank < keep.to(device).view(B, 1)
        cur = torch.where(remask, torch.full_like(cur, mask_id), sampled)
        result.steps = t + 1
        if record:
            result.masks.append(remask.cpu())
            result.predictions.append(sampled.cpu())
    result.ids = cur
    return result
