"""The stage-1 tokenizer: a VQGAN encoder, vector quantizer and decoder.

    ids = model.encode(x)       x (B, 3, H, W) normalized  -> ids (B, h, w) int64 in [0, K)
    x   = model.decode_ids(ids) ids (B, h, w)              -> x (B, 3, H, W) normalized
    x   = model.decode_ids(ids, context_input(x_masked, missing))   a decoder that sees the
                                                            known pixels (tokenizer.context)

Two architectures share the blocks below (named as in the course lab, so state_dict keys match):
`arch: vqgan`, ours, sized from the config, and `arch: lab`, the lab's VQGAN built exactly,
which loads the course's bare `VQGAN.pt` state_dict strictly.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from maskgit_cli.config import Config, TokenizerConfig
from maskgit_cli.errors import ConfigError
from maskgit_cli.fsq import FSQ


class GroupNorm(nn.Module):
    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.gn = nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-6, affine=True)

    def forward(self, x):
        gn = self.gn
        if x.dtype == torch.float32 or not torch.is_grad_enabled():
            # fp32, or inference in bf16 weights: the input's own dtype (the CPU kernels keep
            # their statistics in fp32; a bf16 forward is about 15x faster than casting the
            # activation to fp32 and back)
            w, b = gn.weight.to(x.dtype), gn.bias.to(x.dtype)
            return F.group_norm(x, gn.num_groups, w, b, gn.eps)
        # training under autocast: fp32 statistics and gradients (the bf16 backward is slower
        # than the casts on some CPUs and layouts)
        out = F.group_norm(x.float(), gn.num_groups, gn.weight.float(), gn.bias.float(), gn.eps)
        return out.to(x.dtype)


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.block = nn.Sequential(
            GroupNorm(c_in),
            Swish(),
            nn.Conv2d(c_in, c_out, 3, 1, 1),
            GroupNorm(c_out),
            Swish(),
            nn.Conv2d(c_out, c_out, 3, 1, 1),
        )
        if c_in != c_out:
            self.channel_up = nn.Conv2d(c_in, c_out, 1, 1, 0)

    def forward(self, x):
        skip = self.channel_up(x) if hasattr(self, "channel_up") else x
        return skip + self.block(x)


class NonLocalBlock(nn.Module):
    """Single-head self-attention over the h*w positions of a feature map."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = GroupNorm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (m(h).reshape(B, C, H * W).transpose(1, 2) for m in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v)  # (B, HW, C), scale 1/sqrt(C)
        return x + self.proj_out(a.transpose(1, 2).reshape(B, C, H, W))


class DownSample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad, as in taming-transformers


class UpSample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Codebook(nn.Module):
    """Vector quantizer: nearest of K codes (squared L2, or cosine with l2_codes), a
    straight-through gradient, and the VQ-VAE codebook + beta * commitment losses."""

    def __init__(self, K: int, D: int, beta: float = 0.25, l2_codes: bool = False):
        super().__init__()
        self.K, self.D, self.beta, self.l2_codes = K, D, beta, l2_codes
        self.embedding = nn.Embedding(K, D)
        self.embedding.weight.data.uniform_(-1.0 / K, 1.0 / K)

    def codes(self) -> torch.Tensor:
        w = self.embedding.weight
        return F.normalize(w, dim=1) if self.l2_codes else w

    def nearest(self, z_flat: torch.Tensor) -> torch.Tensor:
        """z_flat (M, D) -> ids (M,) int64. The distances are fp32 at any precision: which code
        wins must not depend on bf16 rounding."""
        with torch.autocast(z_flat.device.type, enabled=False):
            z_flat, e = z_flat.float(), self.codes().float()
            if self.l2_codes:
                return (F.normalize(z_flat, dim=1) @ e.t()).argmax(dim=1)
            d = z_flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * z_flat @ e.t()
            return d.argmin(dim=1)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, h, w) -> z_q (B, D, h, w)."""
        return F.embedding(ids, self.codes()).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor):
        """z (B, D, h, w) -> (z_q with straight-through gradient, ids (B, h, w), vq loss)."""
        B, D, h, w = z.shape
        z_flat = z.permute(0, 2, 3, 1).reshape(-1, D)
        ids = self.nearest(z_flat.detach()).view(B, h, w)
        z_q = self.lookup(ids)
        if self.l2_codes:
            z = F.normalize(z, dim=1)
        loss = F.mse_loss(z_q, z.detach()) + self.beta * F.mse_loss(z, z_q.detach())
        return z + (z_q - z).detach(), ids, loss


def context_input(x: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """What a context decoder sees: x (B, 3, H, W) normalized with its missing pixels (B, H, W)
    bool zeroed, and the known-pixel mask -> (B, 4, H, W). With every pixel missing it is all
    zeros, the input the decoder gets when no context is given."""
    known = (~missing.to(x.device)).unsqueeze(1).to(x.dtype)
    return torch.cat([x * known, known], dim=1)


class ContextEncoder(nn.Module):
    """The decoder's view of the known pixels (the conditional branch of the asymmetric VQGAN,
    Zhu et al. 2023): context_input(...) encoded at each resolution from the image's down to the
    tokens', one residual block per level, each level's features projected by a 1x1 convolution
    that starts at zero, so a decoder that gains the branch draws what it drew before."""

    def __init__(self, channels: list[int], out_channels: list[int]):
        super().__init__()
        self.stem = nn.Conv2d(4, channels[0], 3, 1, 1)
        self.blocks = nn.ModuleList()
        self.down = nn.ModuleList()
        self.proj = nn.ModuleList()
        c_in = channels[0]
        for i, (c, c_out) in enumerate(zip(channels, out_channels, strict=True)):
            self.blocks.append(ResidualBlock(c_in, c))
            proj = nn.Conv2d(c, c_out, 1)
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)
            self.proj.append(proj)
            if i < len(channels) - 1:
                self.down.append(DownSample(c))
            c_in = c

    def forward(self, ctx: torch.Tensor) -> list[torch.Tensor]:
        """(B, 4, H, W) -> one feature map per level, the coarsest (the tokens') first."""
        h, out = self.stem(ctx), []
        for i, block in enumerate(self.blocks):
            h = block(h)
            out.append(self.proj[i](h))
            if i < len(self.down):
                h = self.down[i](h)
        return out[::-1]


class _VQModel(nn.Module):
    """encoder -> quant_conv -> codebook (or FSQ) -> post_quant_conv -> decoder."""

    encoder: nn.Module
    decoder: nn.Module

    def __init__(
        self,
        code_dim: int,
        K: int,
        beta: float,
        l2_codes: bool = False,
        fsq_levels: tuple[int, ...] = (),
    ):
        super().__init__()
        self.context: ContextEncoder | None = None  # the decoder's view of the known pixels
        # decoder layer index -> context level: the level's features are added before that layer
        self.taps: dict[int, int] = {}
        # FSQ quantizes a few bounded channels: the 1x1 convs map code_dim <-> len(levels)
        self.codebook = FSQ(fsq_levels) if fsq_levels else Codebook(K, code_dim, beta, l2_codes)
        q_dim = len(fsq_levels) if fsq_levels else code_dim
        self.quant_conv = nn.Conv2d(code_dim, q_dim, 1)
        self.post_quant_conv = nn.Conv2d(q_dim, code_dim, 1)

    @property
    def learned_codebook(self) -> bool:
        """True for VQ (codes that can die and be restarted), False for FSQ."""
        return isinstance(self.codebook, Codebook)

    @property
    def codebook_size(self) -> int:
        return self.codebook.K

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (bf16 when loaded for bf16 inference): inputs are cast to it."""
        return self.post_quant_conv.weight.dtype

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x.to(self.dtype)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) -> ids (B, h, w)."""
        z = self.encode_latent(x)
        B, D, h, w = z.shape
        return self.codebook.nearest(z.permute(0, 2, 3, 1).reshape(-1, D)).view(B, h, w)

    def decode(self, z_q: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """context: context_input(...) for a decoder with the branch (tokenizer.context); None
        means nothing known. A decoder without the branch ignores it."""
        h = self.post_quant_conv(z_q)
        if self.context is None:
            return self.decoder(h)
        if context is None:
            H, W = (n * self.downsampling for n in z_q.shape[-2:])
            context = h.new_zeros(h.shape[0], 4, H, W)
        feats = self.context(context.to(h.dtype).contiguous(memory_format=torch.channels_last))
        for i, layer in enumerate(self.decoder):
            if i in self.taps:
                h = h + feats[self.taps[i]]
            h = layer(h)
        return h

    def decode_ids(self, ids: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(self.codebook.lookup(ids).to(self.dtype), context)

    def forward(self, x: torch.Tensor):
        """x -> (reconstruction, ids, vq loss, z_e) ; z_e feeds dead-code restarts."""
        z = self.encode_latent(x)
        z_q, ids, vq_loss = self.codebook(z)
        return self.decode(z_q), ids, vq_loss, z


class VQGAN(_VQModel):
    """Ours: levels of `res_blocks` residual blocks, a 2x downsample between levels, attention
    at `attn_resolutions`, mirrored decoder. 64x64 with 3 levels -> 16x16 tokens."""

    def __init__(self, cfg: TokenizerConfig, image_size: int):
        super().__init__(cfg.code_dim, cfg.codebook_size, cfg.beta, cfg.l2_codes, cfg.fsq_levels)
        ch, n = list(cfg.channels), cfg.res_blocks
        self.downsampling = 2 ** (len(ch) - 1)
        res = image_size
        enc: list[nn.Module] = [nn.Conv2d(3, ch[0], 3, 1, 1)]
        c_in = ch[0]
        for i, c in enumerate(ch):
            for _ in range(n):
                enc.append(ResidualBlock(c_in, c))
                c_in = c
                if res in cfg.attn_resolutions:
                    enc.append(NonLocalBlock(c))
            if i < len(ch) - 1:
                enc.append(DownSample(c))
                res //= 2
        enc += [
            ResidualBlock(c_in, c_in),
            GroupNorm(c_in),
            Swish(),
            nn.Conv2d(c_in, cfg.code_dim, 3, 1, 1),
        ]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [
            nn.Conv2d(cfg.code_dim, ch[-1], 3, 1, 1),
            ResidualBlock(ch[-1], ch[-1]),
        ]
        c_in = ch[-1]
        taps, tap_channels = {}, []
        for i, c in enumerate(reversed(ch)):
            taps[len(dec)] = i  # each level's context comes in before its first block
            tap_channels.append(c_in)
            for _ in range(cfg.decoder_res_blocks or n):
                dec.append(ResidualBlock(c_in, c))
                c_in = c
                if res in cfg.attn_resolutions:
                    dec.append(NonLocalBlock(c))
            if i < len(ch) - 1:
                dec.append(UpSample(c))
                res *= 2
        dec += [GroupNorm(c_in), Swish(), nn.Conv2d(c_in, 3, 3, 1, 1)]
        self.decoder = nn.Sequential(*dec)
        if cfg.context:
            self.context = ContextEncoder(ch, tap_channels[::-1])
            self.taps = taps


class LabEncoder(nn.Module):
    def __init__(self, channels: list[int], latent_dim: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, channels[0], 3, 1, 1)]
        for i in range(len(channels) - 1):
            c_in, c_out = channels[i], channels[i + 1]
            layers += [ResidualBlock(c_in, c_out), ResidualBlock(c_out, c_out)]
            if i in (2, 4):  # 64 -> 32 -> 16
                layers.append(DownSample(c_out))
        c = channels[-1]
        layers += [
            ResidualBlock(c, c),
            NonLocalBlock(c),
            ResidualBlock(c, c),
            GroupNorm(c),
            Swish(),
            nn.Conv2d(c, latent_dim, 3, 1, 1),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class LabDecoder(nn.Module):
    def __init__(self, channels: list[int], latent_dim: int):
        super().__init__()
        ch = list(reversed(channels))  # [512, 256, 256, 128, 128]
        c = ch[0]
        layers: list[nn.Module] = [
            nn.Conv2d(latent_dim, c, 3, 1, 1),
            ResidualBlock(c, c),
            NonLocalBlock(c),
            ResidualBlock(c, c),
        ]
        for i, c_out in enumerate(ch):
            for _ in range(3):
                layers.append(ResidualBlock(c, c_out))
                c = c_out
                if i == 0:  # attention only at 16x16
                    layers.append(NonLocalBlock(c))
            if i in (0, 2):  # 16 -> 32 -> 64
                layers.append(UpSample(c))
        layers += [GroupNorm(c), nn.Conv2d(c, 3, 3, 1, 1)]  # no Swish before the last conv
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class LabVQGAN(_VQModel):
    """The course lab's VQGAN (VQGAN.yml); state_dict keys equal the course's VQGAN.pt."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__(cfg.code_dim, cfg.codebook_size, cfg.beta)
        self.encoder = LabEncoder(list(cfg.channels), cfg.code_dim)
        self.decoder = LabDecoder(list(cfg.dec_channels), cfg.code_dim)


def grow_decoder(new: nn.Module, old: nn.Module) -> None:
    """Copy `old`'s decoder into `new`'s deeper one (more residual blocks per level, from
    `tokenizer.decoder_res_blocks`) so that `new` computes exactly what `old` does: the modules
    are matched in order by type and weight shapes, and each block that `old` lacks starts as the
    identity (its last convolution zero; its other weights get gradients once that one moves).
    The rest of the model (encoder, codebook, post-quant conv) is copied as it is."""

    def shapes(m: nn.Module) -> list[tuple[int, ...]]:
        return [tuple(t.shape) for t in m.state_dict().values()]

    rest = {k: v for k, v in old.state_dict().items() if not k.startswith("decoder.")}
    own = {k: v for k, v in new.state_dict().items() if not k.startswith("decoder.")}
    if {k: v.shape for k, v in rest.items()} != {k: v.shape for k, v in own.items()}:
        raise ConfigError("cannot grow the decoder: the encoder or codebook differs")
    new.load_state_dict(rest, strict=False)
    old_mods = list(old.decoder.children())
    i = 0
    for m in new.decoder.children():
        if i < len(old_mods) and type(m) is type(old_mods[i]) and shapes(m) == shapes(old_mods[i]):
            m.load_state_dict(old_mods[i].state_dict())
            i += 1
        elif isinstance(m, ResidualBlock) and not hasattr(m, "channel_up"):
            last = m.block[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        else:
            raise ConfigError(f"cannot grow the decoder: no match for {type(m).__name__}")
    if i != len(old_mods):
        raise ConfigError("cannot grow the decoder: the new one lacks some of the old one's layers")


def add_context(new: _VQModel, old: _VQModel) -> None:
    """Copy `old` into `new`, the same tokenizer with a context branch: the branch's projections
    start at zero, so `new` decodes exactly what `old` does, with or without context."""
    if new.context is None:
        raise ConfigError("cannot add a context branch: the new tokenizer has none")
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
    if unexpected or any(not k.startswith("context.") for k in missing):
        raise ConfigError("cannot add a context branch: the two tokenizers differ elsewhere")


def build(cfg: Config) -> _VQModel:
    """The tokenizer the config describes, its weights in channels-last layout: the oneDNN
    convolutions run on NHWC without reordering at each layer (about 10 % faster on the CPU)."""
    model = (
        LabVQGAN(cfg.tokenizer)
        if cfg.tokenizer.arch == "lab"
        else VQGAN(cfg.tokenizer, cfg.data.image_size)
    )
    return model.to(memory_format=torch.channels_last)


class PatchDiscriminator(nn.Module):
    """A small PatchGAN (pix2pix) critic for the optional adversarial loss. `layers` stride-2
    convolutions, then a 4x4 one to the logits: each logit sees a patch of 10 (1 layer), 22 (2),
    46 (3) or 94 (4) pixels a side. The image must keep 2x2 pixels after the last halving."""

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        self.channels, self.layers = channels, layers
        seq: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, layers):
            c_out = channels * min(2**i, 8)
            seq += [
                nn.Conv2d(c, c_out, 4, 2, 1),
                nn.GroupNorm(math.gcd(32, c_out), c_out),
                nn.LeakyReLU(0.2),
            ]
            c = c_out
        seq.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.model = nn.Sequential(*seq)

    @classmethod
    def like(cls, state: dict[str, torch.Tensor]) -> PatchDiscriminator:
        """A critic of the shape a saved state dict describes (its width and depth)."""
        convs = [v for k, v in state.items() if k.endswith(".weight") and v.dim() == 4]
        return cls(channels=int(convs[0].shape[0]), layers=len(convs) - 1)

    def forward(self, x):
        return self.model(x)

    def features(self, x) -> list[torch.Tensor]:
        """The activation after each LeakyReLU, then the patch logits (= forward): what feature
        matching compares between a reconstruction and its image."""
        out = []
        for layer in self.model:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                out.append(x)
        return [*out, x]
