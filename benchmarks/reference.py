"""The course's reference loops, rebuilt from their description so they can be timed in the same
run as ours (this VM's speed drifts by +-20 % from minute to minute, so a ratio against a number
measured elsewhere is only approximate; both ratios are reported).

What the course's loops do:
- training: every batch of 10 images goes through the frozen lab VQGAN encoder, then one step
  of the lab transformer, whose multi-head attention the students write by hand (softmax(QK^T/sqrt
  d) V, with the lab's attention dropout 0.1) and whose loss takes logits at all 256 positions;
- inpainting: one image at a time; encode, then per step a full transformer pass, sampling and
  re-masking, and a VQGAN decode of the image at every step.
Both run on the same modules as ours (the lab VQGAN in plain NCHW layout, the lab transformer),
with the reference's choices switched back on, so the comparison measures the loops, not
different models.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from maskgit_cli import data, decode, schedules, transformer, vqgan
from maskgit_cli.config import Config
from maskgit_cli.mvtm import masked_loss, mvtm_mask


def reference_models(cfg: Config):
    """(lab VQGAN in NCHW, lab transformer with attention dropout 0.1 on the hand-written path)."""
    tok = vqgan.build(cfg).to(memory_format=torch.contiguous_format).eval()
    tr = transformer.build(
        replace(cfg.transformer, attn_dropout=0.1), cfg.grid, cfg.tokenizer.codebook_size
    )
    tr.set_fast_attention(False)
    return tok, tr


def reference_train_step(
    tok, tr, opt, images: torch.Tensor, cfg: Config, g: torch.Generator
) -> float:
    """images (B, 3, H, W) normalized. Re-encode, mask, full logits, loss, step."""
    K = cfg.tokenizer.codebook_size
    with torch.no_grad():
        ids = tok.encode(images).flatten(1)
    tr.train()
    mask = mvtm_mask(ids, "cosine", g)
    loss = masked_loss(tr(ids.masked_fill(mask, K)), ids, mask)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


@torch.no_grad()
def reference_inpaint(
    tok,
    tr,
    image: torch.Tensor,
    missing: torch.Tensor,
    cfg: Config,
    g: torch.Generator,
    total_iter: int = 12,
    sweet_spot: int = 8,
    choice_temperature: float = 4.5,
) -> torch.Tensor:
    """image (1, 3, H, W) normalized, missing (1, H, W) bool -> decoded image (1, 3, H, W)."""
    tr.eval()
    K = cfg.tokenizer.codebook_size
    ids = tok.encode(image).flatten(1)
    unknown = data.token_mask(missing, cfg.grid).flatten(1)
    z = ids.masked_fill(unknown, K)
    unknown0 = int(unknown.sum())
    out = None
    for step in range(sweet_spot):
        ratio = (step + 1) / total_iter
        logp = tr(z).log_softmax(-1)  # (1, N, K), every position
        sampled = torch.multinomial(logp[0].exp(), 1, generator=g).view(1, -1)
        still = z == K
        sampled = torch.where(still, sampled, z)
        conf = logp.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
        conf = conf + choice_temperature * (1 - ratio) * decode.gumbel(tuple(conf.shape), g)
        conf = conf.masked_fill(~still, math.inf)
        n = (
            0
            if step == sweet_spot - 1
            else int(math.floor(float(schedules.gamma("cosine", ratio)) * unknown0))
        )
        remask = torch.zeros_like(still)
        remask[0, conf[0].argsort()[:n]] = True
        z = sampled.masked_fill(remask, K)
        out = tok.decode_ids(sampled.view(1, cfg.grid, cfg.grid))  # the image at every step
    return out
