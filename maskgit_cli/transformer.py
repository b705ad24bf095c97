"""The stage-2 bidirectional transformer for masked visual token modeling (MVTM).

    ids (B, N) int64 in [0, K], MASK = K  ->  logits (B, N, K) over the K codes only
    (with `hint: true` also hint (B, N, 3): a coarse colour per position, used where ids = MASK)

The head never scores MASK, so it can never be predicted. `norm: pre` (default) is the stable
pre-norm layout; `norm: post` with `head: tied` is the course lab's BERT-style model (embedding
LayerNorm, post-norm blocks, a prediction MLP, logits tied to the token embedding plus a
per-position bias).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from maskgit_cli.config import TransformerConfig


class SelfAttention(nn.Module):
    """Multi-head self-attention: fused qkv projection, heads split, attention, output proj."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(dropout)
        self.fast = True  # F.scaled_dot_product_attention; False = the plain math below

    def forward(self, x: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, C) -> (B, N, C); with `queries` (B, M, C), only those rows attend (to all of
        x): -> (B, M, C). The latter is what the last layer needs when only some outputs are
        used."""
        B, N, C = x.shape
        H, d = self.heads, C // self.heads
        if queries is None:
            q, k, v = self.qkv(x).view(B, N, 3, H, d).permute(2, 0, 3, 1, 4)  # 3 x (B, H, N, d)
        else:
            w, b = self.qkv.weight, self.qkv.bias
            k, v = F.linear(x, w[C:], b[C:]).view(B, N, 2, H, d).permute(2, 0, 3, 1, 4)
            q = F.linear(queries, w[:C], b[:C]).view(B, -1, H, d).transpose(1, 2)
        if self.fast:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0
            )
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, M, N), no causal mask
            y = self.attn_drop(att.softmax(dim=-1)) @ v
        return self.proj(y.transpose(1, 2).reshape(B, q.shape[2], C))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.pre = cfg.norm == "pre"
        eps = 1e-5 if self.pre else 1e-12
        self.ln1 = nn.LayerNorm(cfg.dim, eps=eps)
        self.attn = SelfAttention(cfg.dim, cfg.heads, cfg.attn_dropout)
        self.ln2 = nn.LayerNorm(cfg.dim, eps=eps)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.dim, cfg.mlp_dim), nn.GELU(), nn.Linear(cfg.mlp_dim, cfg.dim)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, C) -> (B, N, C); with `rows` (B, M) position indices, only those outputs:
        (B, M, C). Every position still serves as a key and value."""
        if self.pre:
            h = self.ln1(x)
            if rows is None:
                x = x + self.drop(self.attn(h))
            else:
                x = _take(x, rows) + self.drop(self.attn(h, _take(h, rows)))
            return x + self.drop(self.mlp(self.ln2(x)))
        if rows is None:
            x = self.ln1(x + self.drop(self.attn(x)))
        else:
            q = _take(x, rows)
            x = self.ln1(q + self.drop(self.attn(x, q)))
        return self.ln2(x + self.drop(self.mlp(x)))


def _take(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x (B, N, C), rows (B, M) -> (B, M, C)."""
    return x.gather(1, rows.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class MaskTransformer(nn.Module):
    def __init__(self, cfg: TransformerConfig, num_tokens: int, codebook_size: int):
        super().__init__()
        self.cfg, self.N, self.K = cfg, num_tokens, codebook_size
        self.mask_id = codebook_size  # MASK = K
        self.tok_emb = nn.Embedding(codebook_size + 1, cfg.dim)
        self.pos_emb = nn.Parameter(torch.zeros(1, num_tokens, cfg.dim))
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.hint:
            self.hint_proj = nn.Linear(3, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        # pre-norm needs a final norm; post-norm normalizes the embedding instead
        self.ln = nn.LayerNorm(cfg.dim, eps=1e-5 if cfg.norm == "pre" else 1e-12)
        if cfg.head == "tied":
            self.prediction = nn.Sequential(
                nn.Linear(cfg.dim, cfg.dim), nn.GELU(), nn.LayerNorm(cfg.dim, eps=1e-12)
            )
            self.bias = nn.Parameter(torch.zeros(num_tokens, codebook_size))
        else:
            self.head = nn.Linear(cfg.dim, codebook_size)
        self.apply(self._init)
        nn.init.trunc_normal_(self.pos_emb, std=0.02)
        if cfg.hint:  # starts as plain MVTM; learns how much to trust the colour
            nn.init.zeros_(self.hint_proj.weight)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(
        self, ids: torch.Tensor, where: torch.Tensor | None = None, hint: torch.Tensor | None = None
    ) -> torch.Tensor:
        """ids (B, N) -> logits (B, N, K); with `where` (B, N) bool, the logits at those positions
        only, as `logits[where]` (M, K) would give, for less work: the last block computes queries,
        MLP and head only there (every position is still a key and value), so decoding pays for
        the masked positions instead of all N in that layer and in the head. `hint` (B, N, 3) is
        required when the model was built with `hint: true`."""
        x = self.tok_emb(ids) + self.pos_emb
        if self.cfg.hint:
            if hint is None:
                raise ValueError(
                    "this transformer was trained with colour hints: pass hint (B, N, 3)"
                )
            x = x + self.hint_proj(hint.to(x.dtype)) * (ids == self.mask_id).unsqueeze(-1).to(
                x.dtype
            )
        if self.cfg.norm == "post":
            x = self.ln(x)
        x = self.drop(x)
        rows = None
        if where is not None:
            # per sample, the wanted positions first (in order), padded to the batch's largest count
            count = where.sum(1)
            rows = where.to(torch.int8).argsort(dim=1, descending=True, stable=True)[
                :, : int(count.max())
            ]
        for i, block in enumerate(self.blocks):
            x = block(x, rows if i == len(self.blocks) - 1 else None)
        if rows is not None:
            keep = torch.arange(rows.shape[1], device=ids.device) < count.unsqueeze(
                1
            )  # drop the padding
            x, rows = x[keep], rows[keep]
        if self.cfg.norm == "pre":
            x = self.ln(x)
        if self.cfg.head == "tied":
            bias = self.bias if rows is None else self.bias[rows]
            return self.prediction(x) @ self.tok_emb.weight[: self.K].t() + bias
        return self.head(x)

    def set_fast_attention(self, fast: bool) -> None:
        for block in self.blocks:
            block.attn.fast = fast

    def flops_per_token(self, training: bool = True, out_fraction: float = 1.0) -> float:
        """Matmul FLOPs per input token (2 per multiply-add), x3 for a training step (fwd + bwd).
        `out_fraction`: the share of positions whose logits are asked for (`where`); the last
        block's queries, attention, MLP and the head are paid only for those."""
        d, L, N, m = self.cfg.dim, self.cfg.layers, self.N, self.cfg.mlp_dim
        per_query = (
            2 * (d * d + d * d + 2 * d * m) + 2 * 2 * N * d
        )  # q and out proj, MLP, QK^T and AV
        kv = 2 * 2 * d * d
        head = 2 * d * self.K + (2 * d * d if self.cfg.head == "tied" else 0)
        total = (L - 1) * (kv + per_query) + kv + out_fraction * (per_query + head)
        return total * (3 if training else 1)


def grow(state: dict[str, torch.Tensor], old_layers: int, new: MaskTransformer) -> None:
    """Load a pre-norm transformer's weights `state` (`old_layers` blocks) into the deeper `new`
    so that it computes exactly what the old one does: the old blocks keep their order, the last
    stays last, and each added block (inserted before it) starts as the identity, with its
    attention's output projection and its MLP's last layer zero. The other weights of an added
    block keep `new`'s random initialisation; they get gradients once those zeros move."""
    depth = len(new.blocks)
    if new.cfg.norm != "pre" or not 0 < old_layers <= depth:
        raise ValueError(f"cannot grow a {old_layers}-layer transformer to {depth} layers")
    added = depth - old_layers
    where = {i: i for i in range(old_layers - 1)} | {old_layers - 1: depth - 1}
    moved = {}
    for key, value in state.items():
        if key.startswith("blocks."):
            _, i, rest = key.split(".", 2)
            key = f"blocks.{where[int(i)]}.{rest}"
        moved[key] = value
    fresh = [f"blocks.{i}." for i in range(old_layers - 1, old_layers - 1 + added)]
    for prefix in fresh:
        block = new.blocks[int(prefix.split(".")[1])]
        for layer in (block.attn.proj, block.mlp[2]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
    own = new.state_dict()
    moved |= {k: v for k, v in own.items() if k.startswith(tuple(fresh))}
    odd = [k for k in own if k not in moved or tuple(own[k].shape) != tuple(moved[k].shape)]
    odd += [k for k in moved if k not in own]
    if odd:
        raise ValueError(f"its weights differ from the configured model's beyond depth ({odd[0]})")
    new.load_state_dict(moved)


def build(cfg: TransformerConfig, grid: int, codebook_size: int) -> MaskTransformer:
    return MaskTransformer(cfg, grid * grid, codebook_size)
