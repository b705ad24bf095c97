"""Token-Critic (Lezama et al. 2022): a second transformer that tells the data's tokens from the
generator's, so decoding re-masks the tokens that look sampled instead of the unlikely ones.

    critic = build(cfg.transformer, grid, K)          ids (B, N) in [0, K) -> logits (B, N)
    fake, replaced = corrupt(model, ids, mask, hint, g, temperature, top_p)
    loss = critic_loss(critic(fake), replaced)       logit > 0: the token is the data's

Training pairs come from the frozen stage-2 transformer: an MVTM mask over a real token grid, a
token sampled at every masked position (as decoding samples them), and the critic learns which
positions were replaced. In decoding (`decode.decode(critic_fn=...)`) its log sigmoid replaces the
generator's own log-probability as the confidence. The critic has the generator's architecture
with a one-logit head; it may start from the generator's weights.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from maskgit_cli.config import TransformerConfig
from maskgit_cli.decode import truncate
from maskgit_cli.transformer import MaskTransformer


class TokenCritic(nn.Module):
    """ids (B, N) int64 in [0, K) -> logits (B, N) that each token is the data's (not sampled)."""

    def __init__(self, cfg: TransformerConfig, num_tokens: int, codebook_size: int):
        super().__init__()
        # pre-norm, one linear head, no colour hint: the critic sees a complete grid, no MASK
        body_cfg = dataclasses.replace(cfg, hint=False, head="linear", norm="pre")
        self.body = MaskTransformer(body_cfg, num_tokens, codebook_size)
        self.body.head = nn.Linear(cfg.dim, 1)
        nn.init.zeros_(self.body.head.weight)  # starts at logit 0 everywhere: no opinion
        nn.init.zeros_(self.body.head.bias)
        self.cfg, self.N, self.K = body_cfg, num_tokens, codebook_size

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.body(ids).squeeze(-1)

    def start_from(self, generator_state: dict[str, torch.Tensor]) -> list[str]:
        """Copy a stage-2 transformer's trunk (embeddings, blocks, final norm) into the critic; the
        head stays the critic's own. Returns the generator's keys left out (head, hint)."""
        own = self.body.state_dict()
        take = {
            k: v
            for k, v in generator_state.items()
            if k in own and not k.startswith("head.") and tuple(v.shape) == tuple(own[k].shape)
        }
        missing = [k for k in own if k not in take and not k.startswith("head.")]
        if missing:
            raise ValueError(f"the generator lacks the critic's weight {missing[0]}")
        self.body.load_state_dict(take | {k: own[k] for k in own if k.startswith("head.")})
        return sorted(k for k in generator_state if k not in take)


def build(cfg: TransformerConfig, grid: int, codebook_size: int) -> TokenCritic:
    return TokenCritic(cfg, grid * grid, codebook_size)


@torch.no_grad()
def corrupt(
    model: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    hint: torch.Tensor | None,
    generator: torch.Generator,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A critic's training grid: ids (B, N) with every `mask` (B, N) position replaced by a token
    the stage-2 `model` samples there (one pass, temperature / nucleus as decoding samples) ->
    (fake ids (B, N), replaced (B, N) bool). A sample equal to the data's token still counts as
    replaced, as in the paper: the label says where the generator drew, not whether it erred."""
    logits = model(ids.masked_fill(mask, model.mask_id), mask, hint=hint)  # (M, K)
    logp = torch.log_softmax(logits.float() / max(temperature, 1e-6), dim=-1)
    probs = truncate(logp, 0, top_p).exp().cpu()
    drawn = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(ids.device)
    fake = ids.clone()
    fake[mask] = drawn
    return fake, mask


def critic_loss(logits: torch.Tensor, replaced: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over every position: target 1 where the token is the data's."""
    return F.binary_cross_entropy_with_logits(logits.float(), (~replaced).float())
