"""Inpainting one batch: masked image -> tokens -> iterative decoding -> pixels, known pixels back.

    out = Inpainter(tokenizer, transformer, cfg, settings)(masked_u8, missing, generators)

Besides MaskGIT (`fill: maskgit`), two reference fills any result should be read against:
`harmonic` (Laplace interpolation of the hole, no model at all) and `oracle` (the tokenizer's
reconstruction of the true image: what a transformer that predicted every token right would give).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from maskgit_cli import data, decode, harmonic, runtime, vqgan
from maskgit_cli.config import Config, DecodeConfig, at_least, check_value, choice, ruled
from maskgit_cli.errors import ConfigError
from maskgit_cli.precision import Precision, fp32

FILLS = ("maskgit", "harmonic", "oracle")


@dataclass(frozen=True)
class InpaintSettings(DecodeConfig):
    """The decode settings (DecodeConfig, defaulting to a model's `decode` section) and what only
    inpainting adds: which fill, and how the result meets the input."""

    fill: str = choice(
        "maskgit",
        *FILLS,
        help=(
            "maskgit (iterative decoding), or a reference fill: harmonic (Laplace interpolation, "
            "no model) or "
            "oracle (the tokenizer's reconstruction of the true image; needs --ground-truth)."
        ),
    )
    paste_back: bool = True
    feather: int = ruled(0, at_least(0), "Blend the seam over PX known pixels.")

    def check(self) -> InpaintSettings:
        """Every field obeys its rule (the same ones a config or export checks), reported under
        its flag's name."""
        for f in dataclasses.fields(self):
            check_value(type(self), f.name, getattr(self, f.name), "--" + f.name.replace("_", "-"))
        if self.sweet_spot > self.total_iter:
            raise ConfigError(
                f"--sweet-spot ({self.sweet_spot}) must not exceed --total-iter ({self.total_iter})"
            )
        if self.blend != "none" and not self.paste_back:
            raise ConfigError(
                f"--blend {self.blend} blends into the known pixels pasted back: drop "
                "--no-paste-back"
            )
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def resolve(
        cls, decode: DecodeConfig, given: InpaintSettings | dict[str, Any] | None
    ) -> InpaintSettings:
        """Complete settings as given; otherwise the model's decode defaults (its config's `decode`
        section) with the given overrides (None = not given) on top."""
        if isinstance(given, cls):
            return given.check()
        base = {f.name: getattr(decode, f.name) for f in dataclasses.fields(DecodeConfig)}
        return cls(**{**base, **{k: v for k, v in (given or {}).items() if v is not None}}).check()


def feather_alpha(missing: torch.Tensor, feather: int) -> torch.Tensor:
    """Weight of the generated image, (B, 1, H, W): 1 in the hole, falling linearly to 0 over
    `feather` pixels into the known region (chessboard distance), 0 beyond."""
    m = missing.float().unsqueeze(1)
    alpha = m.clone()
    grown = m
    feather = min(feather, max(missing.shape[-2:]))  # wider than the image changes nothing more
    for i in range(1, feather + 1):
        bigger = F.max_pool2d(grown, 3, stride=1, padding=1)
        alpha = torch.where(
            (bigger > 0) & (grown == 0), torch.full_like(alpha, 1 - i / (feather + 1)), alpha
        )
        grown = bigger
    return alpha


def paste_back(
    generated01: torch.Tensor, masked_u8: torch.Tensor, missing: torch.Tensor, feather: int = 0
) -> torch.Tensor:
    """uint8 result: generated pixels in the hole, the input's own pixels (bit-identical)
    elsewhere."""
    gen_u8 = data.to_uint8(generated01)
    if feather <= 0:
        return torch.where(
            missing.unsqueeze(1).to(gen_u8.device), gen_u8, masked_u8.to(gen_u8.device)
        )
    alpha = feather_alpha(missing.to(generated01.device), feather)
    mixed = alpha * generated01 + (1 - alpha) * masked_u8.to(generated01.device).float() / 255
    return torch.where(alpha > 0, data.to_uint8(mixed), masked_u8.to(gen_u8.device))


def seam_error(
    generated01: torch.Tensor,
    masked_u8: torch.Tensor,
    missing: torch.Tensor,
    width: int = 3,
    centered: bool = False,
) -> torch.Tensor:
    """How badly a generated image continues the known pixels: the mean squared difference (per
    pixel and channel, [0, 1] scale) over the known pixels within `width` pixels of the hole, where
    the generator re-draws partly known tokens. centered: the band's mean colour difference is
    removed first (a Poisson blend removes it anyway). (B,); 0 where the band is empty."""
    dev = generated01.device
    m = missing.to(dev).float().unsqueeze(1)
    band = (
        (F.max_pool2d(m, 2 * width + 1, stride=1, padding=width) > 0) & (m == 0)
    ).float()  # (B, 1, H, W)
    diff = masked_u8.to(dev).float() / 255 - generated01.float()
    n = band.flatten(1).sum(1).clamp_min(1)  # (B,)
    if centered:
        diff = diff - ((diff * band).flatten(2).sum(2) / n[:, None])[..., None, None]
    return (diff * band).pow(2).flatten(1).sum(1) / (n * diff.shape[1])


@dataclass
class InpaintBatch:
    images: torch.Tensor  # uint8 (B, 3, H, W)
    ids: torch.Tensor | None  # (B, h, w); None for the harmonic fill
    unknown: torch.Tensor | None  # (B, h, w) token mask; None for the harmonic fill
    steps: int
    masks: list[torch.Tensor]  # per step (B, h, w), with record
    step_images: list[torch.Tensor]  # per step uint8 (B, 3, H, W), with record


class Inpainter:
    """tokenizer, transformer and cfg may be None for the harmonic fill. `precision` (default
    fp32): bf16 puts the models' weights in bf16 (precision.Precision.for_inference). `critic`:
    the transformer's Token-Critic, needed with `remask: critic`."""

    def __init__(
        self,
        tokenizer,
        transformer,
        cfg: Config | None,
        settings: InpaintSettings,
        device: torch.device,
        precision: Precision | None = None,
        critic: torch.nn.Module | None = None,
    ):
        self.precision = prec = precision if precision is not None else fp32(device)
        self.tok, self.tr = prec.for_inference(tokenizer), prec.for_inference(transformer)
        if settings.fill == "maskgit" and settings.remask == "critic" and critic is None:
            raise ConfigError(
                "--remask critic needs the model's Token-Critic (critic.pt), and this model has "
                "none: train one with `maskgit train CONFIG --stage critic --data IMAGES --out "
                "MODEL`, or use --remask confidence"
            )
        self.critic = prec.for_inference(critic) if settings.remask == "critic" else None
        self.cfg, self.s, self.device = cfg, settings.check(), device
        self.grid = cfg.grid if cfg is not None else None
        self.size = (
            cfg.data.image_size if cfg is not None and settings.fill != "harmonic" else None
        )  # None: any
        self.transformer_passes = 0

    def logits(
        self, ids_flat: torch.Tensor, where: torch.Tensor, hint: torch.Tensor | None = None
    ) -> torch.Tensor:
        self.transformer_passes += ids_flat.shape[0]
        with self.precision.inference_autocast():
            return self.tr(ids_flat, where, hint=hint)

    def judge(self, ids_flat: torch.Tensor) -> torch.Tensor:
        """The Token-Critic's logits (B, N) that each token of the grids is the data's."""
        with self.precision.inference_autocast():
            return self.critic(ids_flat)

    def _hint(self, context_u8: torch.Tensor, unknown: torch.Tensor) -> torch.Tensor:
        """(B, N, 3): the known tokens' mean colours, harmonically continued across the unknown
        ones; the same construction the model was trained with (harmonic.token_hint)."""
        colors = harmonic.token_colors(
            data.normalize(context_u8.to(self.device), self.cfg.data), self.grid
        )
        return harmonic.token_hint(colors, unknown)

    def _pixels(self, ids: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        with self.precision.inference_autocast():
            return data.denormalize(self.tok.decode_ids(ids, context).float(), self.cfg.data)

    def _context(self, masked_u8: torch.Tensor, missing: torch.Tensor) -> torch.Tensor | None:
        """The known pixels, for a decoder that sees them (tokenizer.context); else None."""
        if self.tok.context is None:
            return None
        return vqgan.context_input(
            data.normalize(masked_u8.to(self.device), self.cfg.data), missing
        )

    def finish(
        self, gen01: torch.Tensor, masked_u8: torch.Tensor, missing: torch.Tensor
    ) -> torch.Tensor:
        """The generated image (B, 3, H, W) in [0, 1] into the input: blended and pasted back as
        the settings say -> uint8."""
        if self.s.paste_back:
            if self.s.blend == "poisson":
                gen01 = harmonic.poisson_blend(gen01.cpu(), masked_u8, missing).to(gen01.device)
            return paste_back(gen01, masked_u8, missing, self.s.feather)
        return data.to_uint8(gen01)

    def _encode(self, images_u8: torch.Tensor) -> torch.Tensor:
        with self.precision.inference_autocast():
            return self.tok.encode(
                data.normalize(images_u8.to(self.device), self.cfg.data)
            )  # (B, h, w)

    @torch.no_grad()
    def __call__(
        self,
        masked_u8: torch.Tensor,
        missing: torch.Tensor,
        generators: list[torch.Generator],
        record: bool = False,
        truth_u8: torch.Tensor | None = None,
    ) -> InpaintBatch:
        """masked_u8 (B, 3, H, W) uint8, missing (B, H, W) bool (True = to fill); truth_u8, the
        original images, only for the oracle fill."""
        s, dev = self.s, self.device
        B = masked_u8.shape[0]
        if s.fill == "harmonic":
            images = self.finish(
                harmonic.fill_batch(masked_u8, missing).to(dev), masked_u8, missing
            )
            return InpaintBatch(
                images=images.cpu(), ids=None, unknown=None, steps=0, masks=[], step_images=[]
            )
        unknown = data.token_mask(missing, self.grid, s.token_mask, s.dilate).to(dev)
        seen = self._context(masked_u8, missing)  # what a context decoder sees
        if s.fill == "oracle":
            if truth_u8 is None:
                raise ConfigError("the oracle fill needs the true images: pass --ground-truth")
            ids = self._encode(truth_u8)
            images = self.finish(self._pixels(ids, seen), masked_u8, missing)
            return InpaintBatch(
                images=images.cpu(),
                ids=ids.cpu(),
                unknown=unknown.cpu(),
                steps=0,
                masks=[],
                step_images=[],
            )
        # The encoder's receptive field (and its GroupNorm statistics) reach across the hole, so
        # what the hole holds changes the "known" tokens; a harmonic prefill keeps them close to
        # the tokens of whole images, which is what the transformer was trained on.
        context = (
            masked_u8
            if s.prefill == "none"
            else data.to_uint8(harmonic.fill_batch(masked_u8, missing))
        )
        ids = self._encode(context)
        hint = self._hint(context, unknown) if self.tr.cfg.hint else None

        def candidate() -> tuple[
            decode.DecodeResult, torch.Tensor
        ]:  # each sample's generator runs on, so a
            res = decode.decode(  # batch of candidates still decodes as its images one by one
                ids.flatten(1),
                unknown.flatten(1),
                lambda i, w: self.logits(i, w, hint),
                mask_id=self.tr.mask_id,
                generators=generators,
                schedule=s.schedule,
                total_iter=s.total_iter,
                sweet_spot=s.sweet_spot or None,
                choice_temperature=s.choice_temperature,
                temperature=s.temperature,
                top_k=s.top_k,
                top_p=s.top_p,
                greedy=s.sampling == "greedy",
                critic_fn=self.judge if self.critic is not None else None,
                critic_scope=s.critic_scope,
                record=record,
            )
            return res, self._pixels(res.ids.view(B, self.grid, self.grid), seen)

        res, gen01 = candidate()
        if (
            s.candidates > 1
        ):  # per sample, keep the least seam error (ties keep the earlier candidate)
            score = seam_error(gen01, masked_u8, missing, centered=s.blend == "poisson")
            for _ in range(s.candidates - 1):
                new, new01 = candidate()
                new_score = seam_error(new01, masked_u8, missing, centered=s.blend == "poisson")
                better = new_score < score
                res, score = _pick(better, new, res), torch.where(better, new_score, score)
                gen01 = torch.where(better.view(B, 1, 1, 1), new01, gen01)
        final = res.ids.view(B, self.grid, self.grid)
        images = self.finish(gen01, masked_u8, missing)
        step_images, masks = [], []
        if record:
            for m, pred in zip(res.masks, res.predictions, strict=True):
                masks.append(m.view(B, self.grid, self.grid))
                step_images.append(
                    data.to_uint8(
                        self._pixels(pred.to(dev).view(B, self.grid, self.grid), seen)
                    ).cpu()
                )
        return InpaintBatch(
            images=images.cpu(),
            ids=final.cpu(),
            unknown=unknown.cpu(),
            steps=res.steps,
            masks=masks,
            step_images=step_images,
        )


def _pick(
    take: torch.Tensor, a: decode.DecodeResult, b: decode.DecodeResult
) -> decode.DecodeResult:
    """Per sample, `a` where take (B,) is True, else `b` (the recorded steps too)."""

    def choose(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.where(take.to(x.device).view(-1, *[1] * (x.dim() - 1)), x, y)

    return decode.DecodeResult(
        ids=choose(a.ids, b.ids),
        steps=a.steps,
        masks=[choose(x, y) for x, y in zip(a.masks, b.masks, strict=True)],
        predictions=[choose(x, y) for x, y in zip(a.predictions, b.predictions, strict=True)],
    )


@torch.no_grad()
def inpainting_pool(
    run_dir: Path,
    images: torch.Tensor,
    size: int,
    seed: int,
    device,
    precision: Precision | None = None,
    batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """The token grids a decoder meets when it inpaints: `size` train images (drawn with `seed`)
    with
    random holes (data.random_region_masks, gray 128 like `maskgit mask`), filled by RUN_DIR's
    transformer with its own decode defaults. -> {"index" (P,), "missing" (P, H, W) bool, "ids"
    (P, h, w) int16}. The grids depend only on the encoder, codebook and transformer, which a
    decoder fine-tune leaves alone."""
    from maskgit_cli import checkpoint
    from maskgit_cli.errors import CheckpointError

    if not (run_dir / checkpoint.TRANSFORMER).is_file():
        raise CheckpointError(
            f"{run_dir}: decoder_train.generated needs the run's transformer, and there is no "
            f"{checkpoint.TRANSFORMER}; train stage 2 there first (--stage transformer "
            f"--out {run_dir}) or set decoder_train.generated=0"
        )
    tok, tr, cfg = checkpoint.load_transformer(run_dir, device)
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(images), generator=g)[:size]
    missing = data.random_region_masks(len(index), cfg.data.image_size, g)
    settings = InpaintSettings.resolve(cfg.decode, {"blend": "none"})
    inpainter = Inpainter(tok, tr, cfg, settings, device, precision)
    ids = []
    for i in range(0, len(index), batch_size):
        truth, hole = images[index[i : i + batch_size]], missing[i : i + batch_size]
        gens = [runtime.image_generator(seed, i + j) for j in range(len(truth))]
        ids.append(inpainter(data.mask_out(truth, hole), hole, gens).ids.to(torch.int16))
    return {"index": index, "missing": missing, "ids": torch.cat(ids)}
