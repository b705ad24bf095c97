"""Stage 1: the VQGAN tokenizer (`--stage tokenizer`), trained on images.

Reconstruction (L1 or L2) + VQ losses, or FSQ; a data-dependent codebook start and dead-code
restarts keep the codes in use. From `disc_start` on, an optional patch GAN with VQGAN's adaptive
weight and, optionally, feature matching, as in stage 1b, but with the encoder and codebook
training too.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from maskgit_cli import checkpoint, data, runtime, vqgan
from maskgit_cli.errors import CheckpointError
from maskgit_cli.metrics import psnr
from maskgit_cli.precision import check_resume
from maskgit_cli.train import ema
from maskgit_cli.train.loop import (
    Run,
    Stage,
    StepOut,
    adamw,
    batch_indices,
    check_finite,
    optimizer_step,
    past_total,
    resume_changes,
    rng_state,
    set_rng_state,
    write_config,
)


@dataclass
class TokenizerResult:
    stage: str
    steps: int
    final_loss: float | None
    val_psnr: float | None
    codebook_usage: float | None
    perplexity: float | None
    checkpoint: str
    seconds: float
    images_per_second: float
    precision: str = "fp32"
    interrupted: bool = False
    epochs: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@torch.no_grad()
def evaluate_tokenizer(
    model, images: torch.Tensor, cfg, device, precision=None, batch_size: int = 64
) -> dict[str, float]:
    """Reconstruction PSNR and codebook health over a set of uint8 images (under `precision`'s
    autocast, as in training)."""
    model.eval()
    psnrs, counts = [], torch.zeros(model.codebook_size, dtype=torch.long)
    for i in range(0, len(images), batch_size):
        x8 = images[i : i + batch_size].to(device)
        x = data.normalize(x8, cfg.data)
        with precision.autocast() if precision is not None else contextlib.nullcontext():
            rec, ids, _, _ = model(x)
        psnrs.append(psnr(data.denormalize(rec.float(), cfg.data), x8.float() / 255).cpu())
        counts += torch.bincount(ids.flatten().cpu(), minlength=model.codebook_size)
    return {
        "psnr": torch.cat(psnrs).mean().item(),
        "usage": (counts > 0).float().mean().item(),
        "perplexity": perplexity(counts),
    }


def perplexity(counts: torch.Tensor) -> float:
    """exp of the entropy of the codes' frequencies (K for a codebook used evenly)."""
    p = counts.float() / counts.sum()
    p = p[p > 0]
    return torch.exp(-(p * p.log()).sum()).item()


def restart_dead_codes(
    model, code_ema: torch.Tensor, z_e: torch.Tensor, threshold: float, generator: torch.Generator
) -> int:
    """Move codes that have gone unused onto random encoder outputs of the current batch
    (codebook restarts, as in Jukebox / Dhariwal et al.), so most codes stay in use."""
    dead = (code_ema < threshold).nonzero().flatten()
    if len(dead) == 0:
        return 0
    z = z_e.detach().permute(0, 2, 3, 1).reshape(-1, z_e.shape[1]).float()
    pick = torch.randint(0, len(z), (len(dead),), generator=generator).to(z.device)
    noise = 0.01 * z.std() * torch.randn(len(dead), z.shape[1], generator=generator).to(z.device)
    with torch.no_grad():
        model.codebook.embedding.weight[dead.to(z.device)] = (z[pick] + noise).to(
            model.codebook.embedding.weight.dtype
        )
    code_ema[dead] = 1.0  # give revived codes a grace period
    return len(dead)


def patch_mean(logits: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of a patch critic's map (B, 1, h, w), over every patch, or only over those whose
    cell of the image holds a pixel of `where` (B, 1, H, W) bool: what a critic of the hole
    alone counts."""
    if where is None:
        return logits.mean()
    w = F.adaptive_max_pool2d(where.float(), logits.shape[-2:]).to(logits.dtype)
    return (logits * w).sum() / w.sum().clamp_min(1)


def hinge_disc_step(
    disc, disc_opt, real: torch.Tensor, fake: torch.Tensor, precision, where=None
) -> float:
    """One discriminator update on the hinge loss (real -> +1, fake -> -1), over the patches
    `where` picks (patch_mean); returns the loss."""
    with precision.autocast():
        d_loss = patch_mean(torch.relu(1 - disc(real)), where) + patch_mean(
            torch.relu(1 + disc(fake.detach())), where
        )
    disc_opt.zero_grad(set_to_none=True)
    d_loss.backward()
    disc_opt.step()
    return d_loss.item()


def decoder_last_weight(model) -> torch.Tensor:
    """The weight of the decoder's last convolution: where the adaptive GAN weight compares the
    two losses' gradients."""
    return [m for m in model.decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight


def adaptive_gan_weight(
    rec_loss: torch.Tensor, gan_loss: torch.Tensor, last: torch.Tensor, factor: float
) -> torch.Tensor:
    """VQGAN's balance of the two losses (Esser et al. 2021, eq. 7): factor * |d rec / d last| /
    |d gan / d last| at the decoder's last layer, so the GAN term neither vanishes nor swamps the
    reconstruction whatever the discriminator's scale. Both losses may be AMP-scaled alike."""
    g_rec = torch.autograd.grad(rec_loss, last, retain_graph=True)[0].float().norm()
    g_gan = torch.autograd.grad(gan_loss, last, retain_graph=True)[0].float().norm()
    return (factor * g_rec / (g_gan + 1e-4)).clamp(0, 1e4).detach()


def feature_matching(fake: list[torch.Tensor], disc, real: torch.Tensor) -> torch.Tensor:
    """Mean over the critic's hidden layers of the L1 distance between the activations of the
    first len(real) reconstructions (`fake`, from disc.features) and those of their images.
    Fills from the transformer (decoder_train.generated) have no image in their holes: they
    take no part."""
    with torch.no_grad():
        target = disc.features(real)
    n = len(real)
    return torch.stack(
        [
            (f[:n].float() - t.float()).abs().mean()
            for f, t in zip(fake[:-1], target[:-1], strict=True)
        ]
    ).mean()


class ImageStage(Stage):
    """What stages 1 and 1b share: batches of images (mirrored with probability 1/2 under
    data.hflip), the batch PSNR in the log, val PSNR and codebook health at each epoch."""

    unit = "images"

    def __init__(
        self, cfg, run_dir, *, images: torch.Tensor, val_images: torch.Tensor | None = None, **kw
    ):
        super().__init__(cfg, run_dir, **kw)
        self.images, self.val_images = images, val_images
        self.model, self.ema = None, None  # ema: a train.ema.WeightAverage when configured
        self.last_val: dict[str, float] = {}

    @classmethod
    def open(
        cls, cfg, run_dir, *, data, val, tokenizer, resize, device, seed, compile, overwrite, status
    ):
        from maskgit_cli import data as data_mod

        images, _ = data_mod.load_folder(
            data, cfg.data.image_size, resize, lambda i, n: status("loading images", i, n)
        )
        val_images = None
        if val:
            val_images = data_mod.load_folder(
                val, cfg.data.image_size, resize, lambda i, n: status("loading val images", i, n)
            )[0]
        return cls(
            cfg,
            run_dir,
            images=images,
            val_images=val_images,
            device=device,
            seed=seed,
            overwrite=overwrite,
        )

    def batch(
        self, step: int, batch_size: int
    ) -> tuple[torch.Generator, torch.Tensor, torch.Tensor]:
        """The step's generator and batch (uint8, and normalized on the device)."""
        g = runtime.step_generator(self.seed, step)
        x8 = self.images[batch_indices(len(self.images), batch_size, self.seed, step)]
        if self.cfg.data.hflip:
            flip = torch.rand(len(x8), generator=g) < 0.5
            x8 = torch.where(flip.view(-1, 1, 1, 1), x8.flip(-1), x8)
        return g, x8, data.normalize(x8.to(self.device), self.cfg.data)

    def batch_psnr(self, rec: torch.Tensor, x8: torch.Tensor) -> float:
        with torch.no_grad():
            return (
                psnr(
                    data.denormalize(rec.detach().float(), self.cfg.data),
                    x8.float().to(self.device) / 255,
                )
                .mean()
                .item()
            )

    @property
    def eval_model(self):
        """What validation scores and users load: the weight average when the run keeps one."""
        return self.ema.model if self.ema is not None else self.model

    def evaluate(self, step: int) -> dict[str, Any]:
        self.last_val = {}
        if self.val_images is None:
            return {}
        self.last_val = evaluate_tokenizer(
            self.eval_model, self.val_images, self.cfg, self.device, self.precision
        )
        return {
            "val_psnr": self.last_val["psnr"],
            "codebook_usage": self.last_val["usage"],
            "perplexity": self.last_val["perplexity"],
        }

    def result(self, run: Run) -> TokenizerResult:
        """Evaluates once more if the last epoch's figures are missing (an interrupted run)."""
        val = self.last_val
        if not val or run.interrupted:
            val = evaluate_tokenizer(
                self.eval_model,
                self.val_images if self.val_images is not None else self.images[:512],
                self.cfg,
                self.device,
                self.precision,
            )
        return TokenizerResult(
            stage=self.name,
            steps=run.steps,
            final_loss=run.final_loss,
            val_psnr=val["psnr"] if self.val_images is not None else None,
            codebook_usage=val["usage"],
            perplexity=val["perplexity"],
            checkpoint=str(self.checkpoint_path),
            seconds=run.seconds,
            images_per_second=run.rate,
            precision=self.precision.name,
            interrupted=run.interrupted,
            epochs=run.epochs,
            warnings=run.warnings,
        )


class TokenizerStage(ImageStage):
    name = "tokenizer"
    section = "tokenizer_train"
    checkpoint_file = checkpoint.TOKENIZER
    metrics_file = "metrics_tokenizer.jsonl"
    files = ("config.yaml", "metrics_tokenizer.jsonl", "metrics.jsonl", checkpoint.TOKENIZER)
    depends_on = ("data", "tokenizer", "tokenizer_train")
    summary = "stage 1, the VQGAN tokenizer"

    def setup(self, resume: bool) -> tuple[int, list[str]]:
        cfg, tc, device = self.cfg, self.settings, self.device
        torch.manual_seed(self.seed)
        self.model = vqgan.build(cfg).to(device)
        self.opt = adamw(
            self.model.parameters(), lr=tc.lr, betas=(0.5, 0.9), weight_decay=tc.weight_decay
        )
        self.disc = (
            vqgan.PatchDiscriminator(layers=tc.disc_layers).to(device)
            if tc.disc_start >= 0
            else None
        )
        self.last = decoder_last_weight(self.model)
        self.disc_opt = (
            adamw(self.disc.parameters(), lr=tc.disc_lr, betas=(0.5, 0.9)) if self.disc else None
        )
        self.scaler = self.precision.grad_scaler()
        self.code_ema = torch.zeros(self.model.codebook_size)
        self.ema = ema.maybe(self.model, tc.ema, copied=("codebook.",))
        self.resumed = resume
        self.steps(len(self.images), tc.batch_size)
        step, notes = 0, []
        if resume:
            path = self.checkpoint_path
            ck = checkpoint.load(path, "tokenizer")
            if ck.get("decoder_train") is not None:
                raise CheckpointError(
                    f"{path}: its decoder was fine-tuned (--stage decoder) after stage 1, so "
                    "stage 1 cannot be resumed from it; start a new --out"
                )
            notes = resume_changes(ck["config"], cfg, self, path)
            past_total(ck["step"], self.total, path)
            self.model.load_state_dict(ck["model"])
            self.opt.load_state_dict(ck["optimizer"])
            if self.disc is not None and ck.get("disc") is not None:
                self.disc.load_state_dict(ck["disc"])
                self.disc_opt.load_state_dict(ck["disc_optimizer"])
            if note := check_resume(ck, self.precision, self.scaler, path):
                notes.append(note)  # the run changed precision
            self.code_ema = ck["code_ema"]
            if self.ema is not None:
                self.ema.load_state_dict(checkpoint.weights(ck))
            step = ck["step"]
            legacy = self.run_dir / "metrics.jsonl"  # the log's name in runs made before 0.2
            if legacy.exists() and not (self.run_dir / self.metrics_file).exists():
                legacy.rename(self.run_dir / self.metrics_file)
            set_rng_state(ck["rng"])
        write_config(self.run_dir, cfg)
        return step, notes

    def step(self, step: int, lr: float) -> StepOut:
        model, tc, disc = self.model, self.settings, self.disc
        model.train()
        g, x8, x = self.batch(step, tc.batch_size)
        if step == 0 and not self.resumed and model.learned_codebook:
            # data-dependent codebook init: codes start on encoder outputs, not near zero
            with torch.no_grad():
                z = model.encode_latent(x)
            restart_dead_codes(model, torch.zeros(model.codebook_size), z, 1.0, g)

        gan_on = disc is not None and step >= tc.disc_start
        with self.precision.autocast():
            rec, ids, vq_loss, z_e = model(x)
            rec_err = rec.float() - x
            rec_loss = rec_err.abs().mean() if tc.loss == "l1" else rec_err.pow(2).mean()
            loss = rec_loss + vq_loss
            if gan_on:
                disc.requires_grad_(False)  # the generator pass needs no critic gradients
                fake = disc.features(rec)  # its last entry is disc(rec)
                gan_loss = -fake[-1].float().mean()
                feat_loss = feature_matching(fake, disc, x) if tc.feature_weight > 0 else None
        gan_log: dict[str, float] = {}
        if gan_on:
            weight = adaptive_gan_weight(
                self.scaler.scale(rec_loss), self.scaler.scale(gan_loss), self.last, tc.disc_weight
            )
            loss = loss + weight * gan_loss
            if feat_loss is not None:
                loss = loss + tc.feature_weight * feat_loss
        check_finite(loss, step, self.checkpoint_path, "lower tokenizer_train.lr")
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        optimizer_step(self.opt, self.scaler, model.parameters(), tc.grad_clip)

        if gan_on:
            disc.requires_grad_(True)
            gan_log = {
                "gan_loss": gan_loss.item(),
                "gan_weight": weight.item(),
                **({"feature_loss": feat_loss.item()} if feat_loss is not None else {}),
                "disc_loss": hinge_disc_step(disc, self.disc_opt, x, rec, self.precision),
            }

        counts = torch.bincount(ids.flatten().cpu(), minlength=model.codebook_size).float()
        self.code_ema.mul_(0.99).add_(counts, alpha=0.01)
        if tc.restart_every and model.learned_codebook and (step + 1) % tc.restart_every == 0:
            restart_dead_codes(model, self.code_ema, z_e, tc.dead_threshold, g)
        if self.ema is not None:
            self.ema.update(model, step)
        return StepOut(
            loss.item(),
            len(x8),
            lambda: {
                "rec_loss": rec_loss.item(),
                "vq_loss": vq_loss.item(),
                "usage": (counts > 0).float().mean().item(),
                **gan_log,
                "lr": lr,
                "psnr": self.batch_psnr(rec, x8),
            },
        )

    def save(self, step: int, final: bool = False) -> None:
        sd = self.model.state_dict()
        avg = self.ema.state_dict() if self.ema is not None else None
        checkpoint.save(
            self.checkpoint_path,
            {
                "kind": "tokenizer",
                "config": self.cfg.to_dict(),
                "model": sd,
                "ema": avg,
                "model_id": checkpoint.model_id(avg or sd),
                "optimizer": self.opt.state_dict(),
                "disc": self.disc.state_dict() if self.disc else None,
                "disc_optimizer": self.disc_opt.state_dict() if self.disc_opt else None,
                "scaler": self.scaler.state_dict(),
                "code_ema": self.code_ema,
                "step": step,
                "rng": rng_state(),
                "metrics": self.last_val,
                "precision": self.precision.name,
            },
        )
