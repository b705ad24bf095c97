"""The stage-2 bidirectional transformer for masked visual token modeling (MVTM).

    ids (B, N) int64 in [0, K], MASK = K  ->  logits (B, N, K) over the K codes only

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, N, d)
        if self.fast:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, N, N), no causal mask
            y = self.attn_drop(att.softmax(dim=-1)) @ v
        return self.proj(y.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.pre = cfg.norm == "pre"
        eps = 1e-5 if self.pre else 1e-12
        self.ln1 = nn.LayerNorm(cfg.dim, eps=eps)
        self.attn = SelfAttention(cfg.dim, cfg.heads, cfg.attn_dropout)
        self.ln2 = nn.LayerNorm(cfg.dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.mlp_dim), nn.GELU(), nn.Linear(cfg.mlp_dim, cfg.dim))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre:
            x = x + self.drop(self.attn(self.ln1(x)))
            return x + self.drop(self.mlp(self.ln2(x)))
        x = self.ln1(x + self.drop(self.attn(x)))
        return self.ln2(x + self.drop(self.mlp(x)))


class MaskTransformer(nn.Module):
    def __init__(self, cfg: TransformerConfig, num_tokens: int, codebook_size: int):
        super().__init__()
        self.cfg, self.N, self.K = cfg, num_tokens, codebook_size
        self.mask_id = codebook_size  # MASK = K
        self.tok_emb = nn.Embedding(codebook_size + 1, cfg.dim)
        self.pos_emb = nn.Parameter(torch.zeros(1, num_tokens, cfg.dim))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        # pre-norm needs a final norm; post-norm normalizes the embedding instead
        self.ln = nn.LayerNorm(cfg.dim, eps=1e-5 if cfg.norm == "pre" else 1e-12)
        if cfg.head == "tied":
            self.prediction = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.GELU(), nn.LayerNorm(cfg.dim, eps=1e-12))
            self.bias = nn.Parameter(torch.zeros(num_tokens, codebook_size))
        else:
            self.head = nn.Linear(cfg.dim, codebook_size)
        self.apply(self._init)
        nn.init.trunc_normal_(self.pos_emb, std=0.02)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, N) -> logits (B, N, K)."""
        x = self.tok_emb(ids) + self.pos_emb
        if self.cfg.norm == "post":
            x = self.ln(x)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        if self.cfg.norm == "pre":
            x = self.ln(x)
        if self.cfg.head == "tied":
            return self.prediction(x) @ self.tok_emb.weight[: self.K].t() + self.bias
        return self.head(x)

    def set_fast_attention(self, fast: bool) -> None:
        for block in self.blocks:
            block.attn.fast = fast

    def flops_per_token(self, training: bool = True) -> float:
        """Matmul FLOPs per token (2 per multiply-add), x3 for a training step (fwd + bwd)."""
        d, L, N, m = self.cfg.dim, self.cfg.layers, self.N, self.cfg.mlp_dim
        per_layer = 2 * (3 * d * d + d * d + 2 * d * m) + 2 * 2 * N * d  # projections + QK^T and AV
        head = 2 * d * self.K + (2 * d * d if self.cfg.head == "tied" else 0)
        return (L * per_layer + head) * (3 if training else 1)


def build(cfg: TransformerConfig, grid: int, codebook_size: int) -> MaskTransformer:
    return MaskTransformer(cfg, grid * grid, codebook_size)
