"""Training loops: train_tokenizer() (stage 1, VQGAN) and train_transformer() (stage 2, MVTM).

Each is one readable loop. Both are exactly resumable on the CPU: the learning rate is a function
of the step, the data order a function of (seed, epoch), and every random draw inside a step comes
from a generator seeded by (seed, step); model, optimizer, scaler, EMA and the global RNG (dropout)
are saved in the checkpoint. Progress goes out through the `on_step` / `on_epoch` callbacks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from maskgit_cli import checkpoint, data, runtime, vqgan
from maskgit_cli.metrics import psnr
from maskgit_cli.config import Config, dump
from maskgit_cli.errors import CheckpointError, ConfigError, DataError, TrainingDiverged

Callback = Callable[[dict[str, Any]], None] | None


def lr_at(step: int, total: int, base: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup, then cosine decay to base * min_ratio at `total`."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch, the same on every rank and after a resume."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_777 + epoch))


def batch_indices(n: int, batch: int, seed: int, step: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Indices of the global batch `step` (the last batch of an epoch may be short), this rank's
    share of it."""
    per_epoch = math.ceil(n / batch)
    epoch, i = divmod(step, per_epoch)
    idx = epoch_order(n, seed, epoch)[i * batch:(i + 1) * batch]
    return idx[rank::world]


class MetricsLog:
    """RUN_DIR/metrics.jsonl, one JSON line per logged step or epoch; truncated on resume to the
    checkpoint's step so the file matches the run."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        lines = []
        if resume_step is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        lines.append(line)
                except json.JSONDecodeError:
                    continue
        path.write_text("".join(line + "\n" for line in lines))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


def _rng_state() -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def adamw(params, **kw) -> torch.optim.AdamW:
    """AdamW with the fused kernel (CPU and CUDA): one pass over all parameters per step instead of
    a loop of small ops per tensor (tokenizer step ~15 % faster on the CPU)."""
    return torch.optim.AdamW(params, fused=True, **kw)


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _optimizer_step(opt: torch.optim.Optimizer, scaler, params, clip: float) -> None:
    """Unscale (fp16 AMP), clip the global gradient norm, step, update the scaler."""
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(params, clip)
    scaler.step(opt)
    scaler.update()


def _check_finite(loss: torch.Tensor, step: int, ckpt_path: Path, hint: str) -> None:
    if not torch.isfinite(loss):
        kept = f"the last good checkpoint is {ckpt_path}" if ckpt_path.exists() else "no checkpoint was written yet"
        raise TrainingDiverged(f"loss became {loss.item()} at step {step}; {kept}; {hint}")


# What a resumed run may change: how long it trains and how often it logs and saves.
_RESUMABLE = ("epochs", "max_steps", "log_every", "checkpoint_every")
# The sections each stage's weights depend on (decode defaults are free to change).
_STAGE_SECTIONS = {"tokenizer": ("data", "tokenizer", "tokenizer_train"),
                   "decoder": ("data", "tokenizer", "decoder_train"),
                   "transformer": ("data", "tokenizer", "transformer", "transformer_train")}


def resume_changes(saved: dict[str, Any], cfg: Config, stage: str, path: Path) -> list[str]:
    """Compare a checkpoint's config with the one a resume asks for. Training longer (epochs,
    max_steps) or logging differently is allowed and described; any other change to what the
    stage depends on is a CheckpointError naming the keys."""
    from maskgit_cli.config import from_dict

    saved = from_dict(saved, f"{path} (saved config)").to_dict()  # keys added since: their defaults
    now = cfg.to_dict()
    changed, notes = [], []
    for section in _STAGE_SECTIONS[stage]:
        for key, new in now[section].items():
            old = saved[section][key]
            if old == new:
                continue
            name = f"{section}.{key}"
            if section == f"{stage}_train" and key in _RESUMABLE:
                notes.append(f"{name} {old} -> {new}" + (": the learning-rate schedule follows the new total "
                                                         "(its cosine continues from the current step)"
                                                         if key in ("epochs", "max_steps") else ""))
            else:
                changed.append(f"{name} ({old} -> {new})")
    if changed:
        raise CheckpointError(f"{path}: cannot resume with {', '.join(changed[:3])}"
                              f"{f' and {len(changed) - 3} more' if len(changed) > 3 else ''}: only "
                              f"{', '.join(_RESUMABLE)} may change; resume with the run's own config "
                              f"({path.parent / 'config.yaml'}) or start a new --out")
    return notes


def _past_total(step: int, total: int, path: Path) -> None:
    if step > total:
        raise CheckpointError(f"{path}: the run is already at step {step}, past the new total of {total} steps; "
                              "raise --max-steps / --epochs to train further")


def _prepare_run_dir(run_dir: Path, cfg: Config) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    data.atomic_write(run_dir / "config.yaml", lambda tmp: tmp.write_text(dump(cfg)))


# =========================================================================== stage 1: VQGAN


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
    interrupted: bool = False
    epochs: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@torch.no_grad()
def evaluate_tokenizer(model, images: torch.Tensor, cfg: Config, device, batch_size: int = 64) -> dict[str, float]:
    """Reconstruction PSNR and codebook health over a set of uint8 images."""
    model.eval()
    psnrs, counts = [], torch.zeros(model.codebook_size, dtype=torch.long)
    for i in range(0, len(images), batch_size):
        x8 = images[i:i + batch_size].to(device)
        x = data.normalize(x8, cfg.data)
        with runtime.autocast(device):
            rec, ids, _, _ = model(x)
        psnrs.append(psnr(data.denormalize(rec.float(), cfg.data), x8.float() / 255).cpu())
        counts += torch.bincount(ids.flatten().cpu(), minlength=model.codebook_size)
    p = counts.float() / counts.sum()
    perplexity = torch.exp(-(p[p > 0] * p[p > 0].log()).sum()).item()
    return {"psnr": torch.cat(psnrs).mean().item(), "usage": (counts > 0).float().mean().item(),
            "perplexity": perplexity}


def _step_inputs(images: torch.Tensor, cfg: Config, tc, seed: int, step: int, total: int, opt, device):
    """A stage-1 / 1b step's generator, its batch (each image mirrored with probability 1/2 under
    data.hflip; uint8 and normalized) and its learning rate, already set on `opt`."""
    g = runtime.step_generator(seed, step)
    x8 = images[batch_indices(len(images), tc.batch_size, seed, step)]
    if cfg.data.hflip:
        flip = torch.rand(len(x8), generator=g) < 0.5
        x8 = torch.where(flip.view(-1, 1, 1, 1), x8.flip(-1), x8)
    lr = lr_at(step, total, tc.lr, tc.warmup_steps, tc.min_lr_ratio)
    _set_lr(opt, lr)
    return g, x8, data.normalize(x8.to(device), cfg.data), lr


def _tokenizer_epoch(model, step: int, per_epoch: int, losses: list[float], val_images: torch.Tensor | None,
                     cfg: Config, device) -> tuple[dict[str, Any], dict[str, float]]:
    """The epoch's row (train loss; val PSNR, codebook usage and perplexity) and the val metrics."""
    row = {"epoch": math.ceil(step / per_epoch), "step": step, "train_loss": sum(losses) / len(losses)}
    val: dict[str, float] = {}
    if val_images is not None:
        val = evaluate_tokenizer(model, val_images, cfg, device)
        row.update({"val_psnr": val["psnr"], "codebook_usage": val["usage"], "perplexity": val["perplexity"]})
    return row, val


class _Bookkeeper:
    """What the stage-1 and stage-1b loops share after each step: the logged record (with the
    batch PSNR and throughput), periodic checkpoints, epoch rows with val figures, the result."""

    def __init__(self, model, cfg: Config, tc, log: MetricsLog, save: Callable[[], None], total: int,
                 per_epoch: int, val_images: torch.Tensor | None, device, on_step: Callback, on_epoch: Callback,
                 epochs: list[dict[str, Any]] | None = None):
        self.model, self.cfg, self.tc, self.log, self.save = model, cfg, tc, log, save
        self.total, self.per_epoch, self.val_images, self.device = total, per_epoch, val_images, device
        self.on_step, self.on_epoch = on_step, on_epoch
        self.epochs = epochs if epochs is not None else []
        self.losses: list[float] = []
        self.last_val: dict[str, float] = {}
        self.loss: float | None = None
        self.seen, self.t0, self.interrupted = 0, time.time(), False

    def after_step(self, step: int, loss: float, x8: torch.Tensor, rec: torch.Tensor,
                   fields: Callable[[], dict[str, Any]]) -> None:
        self.seen += len(x8)
        self.loss = loss
        self.losses.append(loss)
        if step % self.tc.log_every == 0 or step == self.total:
            with torch.no_grad():
                batch_psnr = psnr(data.denormalize(rec.detach().float(), self.cfg.data),
                                  x8.float().to(self.device) / 255).mean().item()
            record = {"step": step, "loss": loss, **fields(), "psnr": batch_psnr,
                      "images_per_second": self.seen / max(1e-9, time.time() - self.t0)}
            self.log.write(record)
            if self.on_step:
                self.on_step({**record, "total": self.total})
        if step % self.tc.checkpoint_every == 0:
            self.save()
        if step % self.per_epoch == 0 or step == self.total:
            row, self.last_val = _tokenizer_epoch(self.model, step, self.per_epoch, self.losses, self.val_images,
                                                  self.cfg, self.device)
            self.losses = []
            self.epochs.append(row)
            self.log.write(row)
            if self.on_epoch:
                self.on_epoch(row)

    def result(self, stage: str, images: torch.Tensor, **fields) -> "TokenizerResult":
        """Evaluates once more if the last epoch's figures are missing (an interrupted run)."""
        val = self.last_val
        if not val or self.interrupted:
            val = evaluate_tokenizer(self.model, self.val_images if self.val_images is not None else images[:512],
                                     self.cfg, self.device)
        seconds = time.time() - self.t0
        return TokenizerResult(stage=stage, final_loss=self.loss,
                               val_psnr=val["psnr"] if self.val_images is not None else None,
                               codebook_usage=val["usage"], perplexity=val["perplexity"], seconds=seconds,
                               images_per_second=self.seen / max(seconds, 1e-9), interrupted=self.interrupted,
                               epochs=self.epochs, **fields)


def _restart_dead_codes(model, code_ema: torch.Tensor, z_e: torch.Tensor, threshold: float,
                        generator: torch.Generator) -> int:
    """Move codes that have gone unused onto random encoder outputs of the current batch
    (codebook restarts, as in Jukebox / Dhariwal et al.), so most codes stay in use."""
    dead = (code_ema < threshold).nonzero().flatten()
    if len(dead) == 0:
        return 0
    z = z_e.detach().permute(0, 2, 3, 1).reshape(-1, z_e.shape[1]).float()
    pick = torch.randint(0, len(z), (len(dead),), generator=generator).to(z.device)
    noise = 0.01 * z.std() * torch.randn(len(dead), z.shape[1], generator=generator).to(z.device)
    with torch.no_grad():
        model.codebook.embedding.weight[dead.to(z.device)] = (z[pick] + noise).to(model.codebook.embedding.weight.dtype)
    code_ema[dead] = 1.0  # give revived codes a grace period
    return len(dead)


def train_tokenizer(cfg: Config, images: torch.Tensor, run_dir: Path, *, val_images: torch.Tensor | None = None,
                    device: torch.device = torch.device("cpu"), seed: int = 0, resume: bool = False,
                    on_step: Callback = None, on_epoch: Callback = None) -> TokenizerResult:
    """Train the VQGAN on uint8 images (N, 3, H, W). Writes RUN_DIR/tokenizer.pt."""
    tc = cfg.tokenizer_train
    run_dir = Path(run_dir)
    ckpt_path = run_dir / checkpoint.TOKENIZER
    torch.manual_seed(seed)
    model = vqgan.build(cfg).to(device)
    opt = adamw(model.parameters(), lr=tc.lr, betas=(0.5, 0.9), weight_decay=tc.weight_decay)
    use_disc = tc.disc_start >= 0
    disc = vqgan.PatchDiscriminator().to(device) if use_disc else None
    disc_opt = adamw(disc.parameters(), lr=tc.disc_lr, betas=(0.5, 0.9)) if disc else None
    scaler = runtime.grad_scaler(device)
    code_ema = torch.zeros(model.codebook_size)
    step = 0
    N = len(images)
    per_epoch = math.ceil(N / tc.batch_size)
    total = tc.max_steps if tc.max_steps > 0 else tc.epochs * per_epoch

    notes: list[str] = []
    if resume:
        ck = checkpoint.load(ckpt_path, "tokenizer")
        if ck.get("decoder_train") is not None:
            raise CheckpointError(f"{ckpt_path}: its decoder was fine-tuned (--stage decoder) after stage 1, so "
                                  "stage 1 cannot be resumed from it; start a new --out")
        notes = resume_changes(ck["config"], cfg, "tokenizer", ckpt_path)
        _past_total(ck["step"], total, ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if disc is not None and ck.get("disc") is not None:
            disc.load_state_dict(ck["disc"])
            disc_opt.load_state_dict(ck["disc_optimizer"])
        scaler.load_state_dict(ck["scaler"])
        code_ema = ck["code_ema"]
        step = ck["step"]
        _set_rng_state(ck["rng"])
    _prepare_run_dir(run_dir, cfg)
    log = MetricsLog(run_dir / "metrics.jsonl", step if resume else None)

    def save() -> None:
        sd = model.state_dict()
        checkpoint.save(ckpt_path, {
            "kind": "tokenizer", "config": cfg.to_dict(), "model": sd, "model_id": checkpoint.model_id(sd),
            "optimizer": opt.state_dict(), "disc": disc.state_dict() if disc else None,
            "disc_optimizer": disc_opt.state_dict() if disc_opt else None, "scaler": scaler.state_dict(),
            "code_ema": code_ema, "step": step, "rng": _rng_state(), "metrics": book.last_val,
        })

    book = _Bookkeeper(model, cfg, tc, log, save, total, per_epoch, val_images, device, on_step, on_epoch)
    try:
        while step < total:
            model.train()
            g, x8, x, lr = _step_inputs(images, cfg, tc, seed, step, total, opt, device)

            if step == 0 and not resume and model.learned_codebook:
                # data-dependent codebook init: codes start on encoder outputs, not near zero
                with torch.no_grad():
                    z = model.encode_latent(x)
                _restart_dead_codes(model, torch.zeros(model.codebook_size), z, 1.0, g)

            with runtime.autocast(device):
                rec, ids, vq_loss, z_e = model(x)
                rec_err = rec.float() - x
                rec_loss = rec_err.abs().mean() if tc.loss == "l1" else rec_err.pow(2).mean()
                loss = rec_loss + vq_loss
                if disc is not None and step >= tc.disc_start:
                    loss = loss - tc.disc_weight * disc(rec).mean()  # hinge generator loss
            _check_finite(loss, step, ckpt_path, "lower tokenizer_train.lr")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            _optimizer_step(opt, scaler, model.parameters(), tc.grad_clip)

            if disc is not None and step >= tc.disc_start:
                hinge_disc_step(disc, disc_opt, x, rec, device)

            counts = torch.bincount(ids.flatten().cpu(), minlength=model.codebook_size).float()
            code_ema.mul_(0.99).add_(counts, alpha=0.01)
            if tc.restart_every and model.learned_codebook and (step + 1) % tc.restart_every == 0:
                _restart_dead_codes(model, code_ema, z_e, tc.dead_threshold, g)

            step += 1
            book.after_step(step, loss.item(), x8, rec, lambda: {
                "rec_loss": rec_loss.item(), "vq_loss": vq_loss.item(), "usage": (counts > 0).float().mean().item(),
                "lr": lr})
    except KeyboardInterrupt:
        book.interrupted = True
    save()
    return book.result("tokenizer", images, steps=step, checkpoint=str(ckpt_path), warnings=notes)


# =========================================================================== stage 1b: decoder + GAN


def hinge_disc_step(disc, disc_opt, real: torch.Tensor, fake: torch.Tensor, device) -> float:
    """One discriminator update on the hinge loss (real -> +1, fake -> -1); returns the loss."""
    with runtime.autocast(device):
        d_loss = F.relu(1 - disc(real)).mean() + F.relu(1 + disc(fake.detach())).mean()
    disc_opt.zero_grad(set_to_none=True)
    d_loss.backward()
    disc_opt.step()
    return d_loss.item()


def adaptive_gan_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last: torch.Tensor,
                        factor: float) -> torch.Tensor:
    """VQGAN's balance of the two losses (Esser et al. 2021, eq. 7): factor * |d rec / d last| /
    |d gan / d last| at the decoder's last layer, so the GAN term neither vanishes nor swamps the
    reconstruction whatever the discriminator's scale. Both losses may be AMP-scaled alike."""
    g_rec = torch.autograd.grad(rec_loss, last, retain_graph=True)[0].float().norm()
    g_gan = torch.autograd.grad(gan_loss, last, retain_graph=True)[0].float().norm()
    return (factor * g_rec / (g_gan + 1e-4)).clamp(0, 1e4).detach()


STAGE1_BACKUP = "tokenizer_stage1.pt"


@torch.no_grad()
def inpainting_pool(run_dir: Path, images: torch.Tensor, size: int, seed: int, device,
                    batch_size: int = 64) -> dict[str, torch.Tensor]:
    """The token grids a decoder meets when it inpaints: `size` train images (drawn with `seed`) with
    random holes (data.random_region_masks, gray 128 like `maskgit mask`), filled by RUN_DIR's
    transformer with its own decode defaults. -> {"index" (P,), "missing" (P, H, W) bool, "ids"
    (P, h, w) int16}. The grids depend only on the encoder, codebook and transformer, which a
    decoder fine-tune leaves alone."""
    from maskgit_cli.inpaint import Inpainter, InpaintSettings

    if not (run_dir / checkpoint.TRANSFORMER).is_file():
        raise CheckpointError(f"{run_dir}: decoder_train.generated needs the run's transformer, and there is no "
                              f"{checkpoint.TRANSFORMER}; train stage 2 there first (--stage transformer "
                              f"--out {run_dir}) or set decoder_train.generated=0")
    tok, tr, cfg = checkpoint.load_transformer(run_dir, device)
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(images), generator=g)[:size]
    missing = data.random_region_masks(len(index), cfg.data.image_size, g)
    inpainter = Inpainter(tok, tr, cfg, InpaintSettings.resolve(cfg.decode, {"blend": "none"}), device)
    ids = []
    for i in range(0, len(index), batch_size):
        truth, hole = images[index[i:i + batch_size]], missing[i:i + batch_size]
        gens = [runtime.image_generator(seed, i + j) for j in range(len(truth))]
        ids.append(inpainter(data.mask_out(truth, hole), hole, gens).ids.to(torch.int16))
    return {"index": index, "missing": missing, "ids": torch.cat(ids)}


def train_decoder(cfg: Config, images: torch.Tensor, run_dir: Path, *, val_images: torch.Tensor | None = None,
                  device: torch.device = torch.device("cpu"), seed: int = 0, resume: bool = False,
                  overwrite: bool = False, on_step: Callback = None, on_epoch: Callback = None) -> TokenizerResult:
    """Fine-tune RUN_DIR/tokenizer.pt's decoder (and post-quant conv) against a patch
    discriminator; encoder and codebook stay frozen, so every image keeps its tokens and the
    checkpoint keeps its id (a transformer trained on those tokens still pairs with it). The
    stage-1 checkpoint is kept as RUN_DIR/tokenizer_stage1.pt; --overwrite restarts from it."""
    run_dir = Path(run_dir)
    ckpt_path, backup = run_dir / checkpoint.TOKENIZER, run_dir / STAGE1_BACKUP
    ck = checkpoint.load(ckpt_path, "tokenizer")
    if ck["kind"] != "tokenizer":
        raise CheckpointError(f"{ckpt_path}: is a {ck['kind']} checkpoint, expected a tokenizer")
    state = ck.get("decoder_train")
    if resume and state is None:
        raise CheckpointError(f"{ckpt_path}: its decoder was never fine-tuned, so there is nothing to resume; "
                              "run --stage decoder without --resume")
    if not resume and state is not None:
        if not overwrite:
            raise CheckpointError(f"{ckpt_path}: its decoder is already fine-tuned ({state['step']} steps); "
                                  "continue with --resume, or pass --overwrite to restart from "
                                  f"{STAGE1_BACKUP}")
        if not backup.is_file():
            raise CheckpointError(f"{ckpt_path}: --overwrite restarts from {backup}, which is missing; "
                                  "continue with --resume instead")
        ck = checkpoint.load(backup, "tokenizer")
    cfg = dataclasses.replace(checkpoint.config_of(ck), decoder_train=cfg.decoder_train)
    tc = cfg.decoder_train
    tokens_id = checkpoint.tokens_id(ck)
    base = {k: v for k, v in ck.items() if k not in ("path", "version", "decoder_train")}
    notes: list[str] = []
    N = len(images)
    per_epoch = math.ceil(N / tc.batch_size)
    total = tc.max_steps if tc.max_steps > 0 else tc.epochs * per_epoch
    if tc.generated >= tc.batch_size:
        raise ConfigError(f"decoder_train.generated ({tc.generated}) must be less than decoder_train.batch_size "
                          f"({tc.batch_size}): each batch keeps some whole images to reconstruct")
    if resume:
        notes = resume_changes(ck["config"], cfg, "decoder", ckpt_path)
        _past_total(state["step"], total, ckpt_path)

    torch.manual_seed(seed)
    model = vqgan.build(cfg).to(device)
    checkpoint.load_state(model, ck["model"], str(ckpt_path))
    model.requires_grad_(False)
    params = [*model.post_quant_conv.parameters(), *model.decoder.parameters()]
    for p in params:
        p.requires_grad_(True)
    last = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight
    opt = adamw(params, lr=tc.lr, betas=(0.5, 0.9))
    disc = vqgan.PatchDiscriminator().to(device)
    disc_opt = adamw(disc.parameters(), lr=tc.disc_lr, betas=(0.5, 0.9))
    scaler = runtime.grad_scaler(device)
    step, start_val, pool = 0, {}, None
    if tc.generated:
        pool = state.get("pool") if resume else None
        if pool is None:
            pool = inpainting_pool(run_dir, images, tc.pool, seed, device)
        pool_truth = images[pool["index"]]
    if resume:
        opt.load_state_dict(state["optimizer"])
        disc.load_state_dict(state["disc"])
        disc_opt.load_state_dict(state["disc_optimizer"])
        scaler.load_state_dict(state["scaler"])
        step, start_val = state["step"], state.get("start_metrics", {})
        _set_rng_state(state["rng"])
    elif state is None:  # a first fine-tune keeps its stage-1 start (an --overwrite restart loaded it from there)
        checkpoint.save(backup, base)
    log = MetricsLog(run_dir / "metrics_decoder.jsonl", step if resume else None)
    epochs: list[dict[str, Any]] = []
    if not resume and val_images is not None:
        start_val = evaluate_tokenizer(model, val_images, cfg, device)
        epochs.append({"epoch": 0, "step": 0, "val_psnr": start_val["psnr"]})
        log.write(epochs[-1])

    def save() -> None:
        sd = model.state_dict()
        checkpoint.save(ckpt_path, {**base, "config": cfg.to_dict(), "model": sd, "model_id": tokens_id,
                                    "metrics": book.last_val or base.get("metrics", {}), "decoder_train": {
                                        "step": step, "optimizer": opt.state_dict(), "disc": disc.state_dict(),
                                        "disc_optimizer": disc_opt.state_dict(), "scaler": scaler.state_dict(),
                                        "rng": _rng_state(), "weights_id": checkpoint.model_id(sd),
                                        "start_metrics": start_val, "pool": pool}})

    book = _Bookkeeper(model, cfg, tc, log, save, total, per_epoch, val_images, device, on_step, on_epoch,
                       epochs=epochs)
    whole = dataclasses.replace(tc, batch_size=tc.batch_size - tc.generated)  # encoder-token images per batch
    try:
        while step < total:
            model.train()
            g, x8, x, lr = _step_inputs(images, cfg, whole, seed, step, total, opt, device)
            with torch.no_grad(), runtime.autocast(device):
                ids = model.encode(x)
            real = x
            if pool is not None:  # the transformer's fills: their truth outside the hole is the target
                pick = torch.randint(0, len(pool["ids"]), (tc.generated,), generator=g)
                ids = torch.cat([ids, pool["ids"][pick].long().to(device)])
                real = torch.cat([x, data.normalize(pool_truth[pick].to(device), cfg.data)])
                known = torch.ones_like(real[:, :1])
                known[len(x):] = (~pool["missing"][pick]).unsqueeze(1).to(known)
            disc.requires_grad_(False)  # the generator pass needs no discriminator gradients
            with runtime.autocast(device):
                rec_all = model.decode_ids(ids)
                rec_err = rec_all.float() - real
                rec_loss = rec_err.abs() if tc.loss == "l1" else rec_err.pow(2)
                if pool is None:
                    rec_loss = rec_loss.mean()
                else:  # averaged over the known pixels only
                    rec_loss = (rec_loss * known).sum() / (known.sum() * rec_loss.shape[1])
                gan_loss = -disc(rec_all).float().mean()
            weight = adaptive_gan_weight(scaler.scale(rec_loss), scaler.scale(gan_loss), last, tc.disc_weight)
            loss = rec_loss + weight * gan_loss
            _check_finite(loss, step, ckpt_path, "lower decoder_train.lr")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            _optimizer_step(opt, scaler, params, tc.grad_clip)
            disc.requires_grad_(True)
            d_loss = hinge_disc_step(disc, disc_opt, real, rec_all, device)

            step += 1
            book.after_step(step, loss.item(), x8, rec_all[:len(x8)], lambda: {
                "rec_loss": rec_loss.item(), "gan_loss": gan_loss.item(), "gan_weight": weight.item(),
                "disc_loss": d_loss, "lr": lr})
    except KeyboardInterrupt:
        book.interrupted = True
    save()
    return book.result("decoder", images, steps=step, checkpoint=str(ckpt_path), warnings=notes)


# =========================================================================== stage 2: MVTM


def mvtm_mask(ids: torch.Tensor, schedule: str, generator: torch.Generator, mode: str = "random",
              image_size: int = 64, with_hole: bool = False):
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
        use = torch.ones(B, dtype=torch.bool) if mode == "region" else torch.rand(B, generator=generator) < 0.5
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


def masked_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy over the masked positions only. logits (B, N, K), or (M, K) already taken at
    the mask as `model(ids, mask)` returns them; target (B, N), mask (B, N)."""
    if logits.dim() == 3:
        logits = logits[mask]
    return F.cross_entropy(logits.float(), target[mask], label_smoothing=label_smoothing)


@dataclass
class TransformerResult:
    stage: str
    steps: int
    final_loss: float | None
    val_loss: float | None
    val_accuracy: dict[str, float] | None
    tokens_per_second: float
    checkpoint: str
    best_checkpoint: str | None
    seconds: float
    interrupted: bool = False
    epochs: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def fixed_ratio_mask(B: int, N: int, ratio: float, seed: int) -> torch.Tensor:
    """Exactly round(ratio * N) masked positions per sample, from a fixed seed (comparable runs)."""
    g = torch.Generator().manual_seed(seed)
    rank = torch.rand(B, N, generator=g).argsort(dim=1).argsort(dim=1)
    return rank < max(1, round(ratio * N))


@torch.no_grad()
def evaluate_transformer(model, ids: torch.Tensor, ratios: tuple[float, ...], device, batch_size: int = 128,
                         seed: int = 1234, colors: torch.Tensor | None = None) -> dict[str, Any]:
    """Loss and masked-token accuracy at fixed mask ratios; val_loss is their mean. `colors` (M, 3,
    h, w): token colours, for a model with hints."""
    model.eval()
    K = model.K
    if model.cfg.hint and colors is None:
        raise DataError("this transformer uses colour hints: evaluating it needs the token colours")
    ids = ids.flatten(1)
    out: dict[str, Any] = {"accuracy": {}, "loss": {}}
    for j, ratio in enumerate(ratios):
        mask = fixed_ratio_mask(len(ids), ids.shape[1], ratio, seed + j)
        total_loss, correct, count = 0.0, 0, 0
        for i in range(0, len(ids), batch_size):
            x, m = ids[i:i + batch_size].to(device), mask[i:i + batch_size].to(device)
            hint = mvtm_hint(colors[i:i + batch_size], m) if model.cfg.hint else None
            with runtime.autocast(device):
                logits = model(x.masked_fill(m, K), m, hint=hint.to(device) if hint is not None else None)
            total_loss += F.cross_entropy(logits.float(), x[m], reduction="sum").item()
            correct += (logits.argmax(-1) == x[m]).sum().item()
            count += m.sum().item()
        out["loss"][str(ratio)] = total_loss / count
        out["accuracy"][str(ratio)] = correct / count
    out["val_loss"] = sum(out["loss"].values()) / len(ratios)
    return out


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only: not on biases, norms or embeddings' positions."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and not name.endswith("pos_emb") else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_transformer(cfg: Config, ids: torch.Tensor, run_dir: Path, *, tokenizer_id: str,
                      colors: torch.Tensor | None = None, val_colors: torch.Tensor | None = None,
                      val_ids: torch.Tensor | None = None, device: torch.device = torch.device("cpu"),
                      seed: int = 0, resume: bool = False, compile: bool = False,
                      on_step: Callback = None, on_epoch: Callback = None) -> TransformerResult:
    """Train the MVTM transformer on token grids ids (M, h, w). Writes RUN_DIR/transformer.pt
    (and transformer_best.pt by val loss). Under torchrun: DDP, rank 0 writes."""
    from maskgit_cli import transformer as transformer_mod

    tc = cfg.transformer_train
    if cfg.transformer.hint and (colors is None or (val_ids is not None and val_colors is None)):
        raise DataError("transformer.hint needs the token colours of the training (and val) tokens")
    if not cfg.transformer.hint:
        colors = val_colors = None
    rank, world = runtime.dist_info()
    run_dir = Path(run_dir)
    ckpt_path, best_path = run_dir / checkpoint.TRANSFORMER, run_dir / "transformer_best.pt"
    grid, K = int(ids.shape[-1]), cfg.tokenizer.codebook_size
    ids = ids.flatten(1)
    M, N = ids.shape
    torch.manual_seed(seed)
    model = transformer_mod.build(cfg.transformer, grid, K).to(device)
    ema = transformer_mod.build(cfg.transformer, grid, K).to(device).eval() if tc.ema > 0 else None
    if ema is not None:
        ema.load_state_dict(model.state_dict())
        ema.requires_grad_(False)
    opt = adamw(_param_groups(model, tc.weight_decay), lr=tc.lr, betas=(tc.beta1, tc.beta2))
    scaler = runtime.grad_scaler(device)
    step, best = 0, float("inf")
    per_epoch = math.ceil(M / tc.batch_size / tc.grad_accum)
    total = tc.max_steps if tc.max_steps > 0 else tc.epochs * per_epoch
    notes: list[str] = []
    if resume:
        ck = checkpoint.load(ckpt_path, "transformer")
        notes = resume_changes(ck["config"], cfg, "transformer", ckpt_path)
        _past_total(ck["step"], total, ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        scaler.load_state_dict(ck["scaler"])
        if ema is not None and ck.get("ema") is not None:
            ema.load_state_dict(ck["ema"])
        step, best = ck["step"], ck.get("best_val_loss", float("inf"))
        _set_rng_state(ck["rng"])
    if rank == 0:
        _prepare_run_dir(run_dir, cfg)
    log = MetricsLog(run_dir / "metrics_transformer.jsonl", step if resume else None) if rank == 0 else None
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        net = torch.compile(net)
    eval_model = ema if ema is not None else model

    def save(path: Path, metrics: dict[str, Any]) -> None:
        if rank != 0:
            return
        checkpoint.save(path, {
            "kind": "transformer", "config": cfg.to_dict(), "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None, "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict(), "step": step, "rng": _rng_state(), "tokenizer_id": tokenizer_id,
            "best_val_loss": best, "metrics": metrics,
        })

    t0, tokens_seen, loss_value, last_val = time.time(), 0, None, None
    epochs: list[dict[str, Any]] = []
    epoch_losses: list[float] = []
    interrupted = False
    try:
        while step < total:
            net.train()
            lr = lr_at(step, total, tc.lr, tc.warmup_steps, tc.min_lr_ratio)
            _set_lr(opt, lr)
            opt.zero_grad(set_to_none=True)
            step_loss = 0.0
            for micro in range(tc.grad_accum):
                g = runtime.step_generator(seed, step * tc.grad_accum + micro, rank)
                idx = batch_indices(M, tc.batch_size, seed, step * tc.grad_accum + micro, rank, world)
                target = ids[idx]
                mask, hole = mvtm_mask(target, tc.schedule, g, tc.mask_mode, cfg.data.image_size, with_hole=True)
                hint = mvtm_hint(colors[idx] if colors is not None else None, hole)
                target, mask = target.to(device), mask.to(device)
                with runtime.autocast(device):
                    logits = net(target.masked_fill(mask, K), mask,  # the last block and head at the mask only
                                 hint=hint.to(device) if hint is not None else None)
                    loss = masked_loss(logits, target, mask, tc.label_smoothing) / tc.grad_accum
                _check_finite(loss, step, ckpt_path, "lower transformer_train.lr")
                scaler.scale(loss).backward()
                step_loss += loss.item()
                tokens_seen += target.numel() * world
            _optimizer_step(opt, scaler, model.parameters(), tc.grad_clip)
            if ema is not None:
                with torch.no_grad():
                    for pe, pm in zip(ema.parameters(), model.parameters()):
                        pe.lerp_(pm, 1 - tc.ema)
            step += 1
            loss_value = step_loss
            epoch_losses.append(step_loss)
            tps = tokens_seen / max(1e-9, time.time() - t0)
            if rank == 0 and (step % tc.log_every == 0 or step == total):
                rec = {"step": step, "loss": step_loss, "lr": lr, "tokens_per_second": tps}
                log.write(rec)
                if on_step:
                    on_step({**rec, "total": total})
            if step % tc.checkpoint_every == 0:
                save(ckpt_path, {})
            if step % per_epoch == 0 or step == total:
                row = {"epoch": math.ceil(step / per_epoch), "step": step,
                       "train_loss": sum(epoch_losses) / len(epoch_losses), "lr": lr, "tokens_per_second": tps}
                epoch_losses = []
                if val_ids is not None and rank == 0:
                    last_val = evaluate_transformer(eval_model, val_ids, tc.val_ratios, device, colors=val_colors)
                    row["val_loss"] = last_val["val_loss"]
                    row.update({f"val_acc@{r}": a for r, a in last_val["accuracy"].items()})
                    if last_val["val_loss"] < best:
                        best = last_val["val_loss"]
                        save(best_path, last_val)
                if rank == 0:
                    epochs.append(row)
                    log.write(row)
                    if on_epoch:
                        on_epoch(row)
    except KeyboardInterrupt:
        interrupted = True
    save(ckpt_path, last_val or {})
    seconds = time.time() - t0
    return TransformerResult(
        stage="transformer", steps=step, final_loss=loss_value,
        val_loss=last_val["val_loss"] if last_val else None,
        val_accuracy=last_val["accuracy"] if last_val else None,
        tokens_per_second=tokens_seen / max(seconds, 1e-9), checkpoint=str(ckpt_path),
        best_checkpoint=str(best_path) if best_path.exists() else None, seconds=seconds,
        interrupted=interrupted, epochs=epochs, warnings=notes)
