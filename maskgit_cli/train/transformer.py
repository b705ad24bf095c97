"""Stage 2: the bidirectional transformer, trained by masked visual token modeling
(`--stage transformer`) on the run tokenizer's tokens of the images (cached in the run), with
EMA, gradient accumulation, validation at fixed mask ratios, a best checkpoint by val loss, and
DDP under torchrun (rank 0 writes)."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from maskgit_cli import checkpoint, precision, runtime, tokens
from maskgit_cli.errors import CheckpointError, ConfigError, DataError
from maskgit_cli.mvtm import fixed_ratio_mask, masked_loss, mvtm_hint, mvtm_mask
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

BEST = "transformer_best.pt"


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
    precision: str = "fp32"
    interrupted: bool = False
    epochs: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@torch.no_grad()
def evaluate_transformer(
    model,
    ids: torch.Tensor,
    ratios: tuple[float, ...],
    device,
    batch_size: int = 128,
    seed: int = 1234,
    colors: torch.Tensor | None = None,
    precision=None,
) -> dict[str, Any]:
    """Loss and masked-token accuracy at fixed mask ratios; val_loss is their mean. `colors` (M, 3,
    h, w): token colours, for a model with hints; `precision`: the autocast to run under."""
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
            x, m = ids[i : i + batch_size].to(device), mask[i : i + batch_size].to(device)
            hint = mvtm_hint(colors[i : i + batch_size], m) if model.cfg.hint else None
            with precision.autocast() if precision is not None else contextlib.nullcontext():
                logits = model(
                    x.masked_fill(m, K), m, hint=hint.to(device) if hint is not None else None
                )
            total_loss += F.cross_entropy(logits.float(), x[m], reduction="sum").item()
            correct += (logits.argmax(-1) == x[m]).sum().item()
            count += m.sum().item()
        out["loss"][str(ratio)] = total_loss / count
        out["accuracy"][str(ratio)] = correct / count
    out["val_loss"] = sum(out["loss"].values()) / len(ratios)
    return out


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only: not on biases, norms or embeddings' positions."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and not name.endswith("pos_emb") else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def run_tokenizer(cfg, out: Path, tokenizer: str | Path | None, device: torch.device, rank: int):
    """The tokenizer a transformer run uses, copied into RUN/tokenizer.pt so the run directory is
    self-contained. Returns (model, tokenizer id)."""
    from maskgit_cli.api import model_path

    dest = out / checkpoint.TOKENIZER
    src = model_path(tokenizer) if tokenizer else dest  # a bundled model's name (cats64) as well
    if src.is_dir():
        src = src / checkpoint.TOKENIZER
    if not src.is_file():
        raise DataError(
            f"no tokenizer at {src}: train one with --stage tokenizer --out {out}, or pass "
            "--tokenizer"
        )
    model, tok_cfg, tok_id = checkpoint.load_tokenizer(src, cfg, device)
    if model.codebook_size != cfg.tokenizer.codebook_size:
        raise ConfigError(
            f"tokenizer {src} has {model.codebook_size} codes but the config says "
            f"tokenizer.codebook_size={cfg.tokenizer.codebook_size}; fix the config"
        )
    if tok_cfg.grid != cfg.grid or tok_cfg.data.image_size != cfg.data.image_size:
        raise ConfigError(
            f"tokenizer {src} makes a {tok_cfg.grid}x{tok_cfg.grid} grid from "
            f"{tok_cfg.data.image_size}px images but the config gives {cfg.grid}x{cfg.grid} "
            f"from {cfg.data.image_size}px; fix the config"
        )
    if rank == 0 and src.resolve() != dest.resolve():
        if dest.exists():
            existing = checkpoint.load(dest)
            if checkpoint.tokens_id(existing) != tok_id:
                raise DataError(f"{dest} holds another tokenizer than {src}; use a new --out")
        else:
            checkpoint.save(
                dest,
                {
                    "kind": "tokenizer",
                    "config": tok_cfg.to_dict(),
                    "model": model.state_dict(),
                    "model_id": tok_id,
                    "step": None,
                    "metrics": {},
                },
            )
    return model, tok_id


def stage_tokens(cfg, run_dir, data, val, tok_model, tok_id, device, resize, rank, prec, status):
    """The train (with mirrored copies when data.hflip) and val (None without --val) tokens of a
    stage that trains on tokens, encoded once in the run's precision and cached in the run; the
    tokenizer is not kept for the training loop. -> (TokenFile, TokenFile | None)."""
    common = dict(
        cfg=cfg,
        tok_model=prec.for_inference(tok_model),
        tok_id=tok_id,
        run_dir=run_dir,
        device=device,
        resize=resize,
        rank=rank,
        precision=prec,
    )
    train = tokens.run_tokens(
        data,
        "train",
        flips=cfg.data.hflip,
        on_progress=lambda i, n: status("encoding train images", i, n),
        **common,
    )
    val_tokens = None
    if val:
        val_tokens = tokens.run_tokens(
            val, "val", on_progress=lambda i, n: status("encoding val images", i, n), **common
        )
    return train, val_tokens


class TransformerStage(Stage):
    name = "transformer"
    section = "transformer_train"
    checkpoint_file = checkpoint.TRANSFORMER
    metrics_file = "metrics_transformer.jsonl"
    files = (
        "config.yaml",
        "metrics_transformer.jsonl",
        checkpoint.TRANSFORMER,
        BEST,
        checkpoint.TOKENIZER,
        "tokens_train.npz",
        "tokens_val.npz",
        tokens.partial_name("train"),
        tokens.partial_name("val"),
    )
    depends_on = ("data", "tokenizer", "transformer", "transformer_train")
    unit = "tokens"
    summary = "stage 2, the MVTM transformer"

    def __init__(
        self,
        cfg,
        run_dir,
        *,
        ids: torch.Tensor,
        tokenizer_id: str,
        colors: torch.Tensor | None = None,
        val_ids: torch.Tensor | None = None,
        val_colors: torch.Tensor | None = None,
        compile: bool = False,
        **kw,
    ):
        super().__init__(cfg, run_dir, **kw)
        if cfg.transformer.hint and (
            colors is None or (val_ids is not None and val_colors is None)
        ):
            raise DataError(
                "transformer.hint needs the token colours of the training (and val) tokens"
            )
        if not cfg.transformer.hint:
            colors = val_colors = None
        self.grid = int(ids.shape[-1])
        self.ids, self.colors, self.val_ids, self.val_colors = (
            ids.flatten(1),
            colors,
            val_ids,
            val_colors,
        )
        self.tokenizer_id, self.compile = tokenizer_id, compile
        self.best, self.last_val = float("inf"), None

    @classmethod
    def open(
        cls, cfg, run_dir, *, data, val, tokenizer, resize, device, seed, compile, overwrite, status
    ):
        rank, _world, device = runtime.init_distributed(device)
        tok_model, tok_id = run_tokenizer(cfg, run_dir, tokenizer, device, rank)
        prec = precision.resolve(cfg.transformer_train.precision, device)
        train, val_tokens = stage_tokens(
            cfg, run_dir, data, val, tok_model, tok_id, device, resize, rank, prec, status
        )
        return cls(
            cfg,
            run_dir,
            ids=train.ids,
            tokenizer_id=tok_id,
            colors=train.colors,
            val_ids=val_tokens.ids if val_tokens else None,
            val_colors=val_tokens.colors if val_tokens else None,
            compile=compile,
            device=device,
            seed=seed,
            overwrite=overwrite,
        )

    def setup(self, resume: bool) -> tuple[int, list[str]]:
        from maskgit_cli import transformer as transformer_mod

        cfg, tc, device = self.cfg, self.settings, self.device
        K = cfg.tokenizer.codebook_size
        torch.manual_seed(self.seed)
        ck = checkpoint.load(self.checkpoint_path, "transformer") if resume else None
        if tc.add_layers:  # init's transformer deepened (start_from), or a resume of one
            depth = cfg.transformer.layers + tc.add_layers
            saved = ((ck or {}).get("config") or {}).get("transformer") or {}
            if not resume or saved.get("layers") == depth:
                deeper = dataclasses.replace(cfg.transformer, layers=depth)
                cfg = self.cfg = dataclasses.replace(cfg, transformer=deeper)
        self.model = transformer_mod.build(cfg.transformer, self.grid, K).to(device)
        notes: list[str] = []
        if tc.init and not resume:
            notes.append(self.start_from(tc.init))
        self.ema = ema.maybe(self.model, tc.ema)
        self.opt = adamw(
            param_groups(self.model, tc.weight_decay), lr=tc.lr, betas=(tc.beta1, tc.beta2)
        )
        self.scaler = self.precision.grad_scaler()
        if self.precision.math_attention:
            self.model.set_fast_attention(False)
        self.steps(len(self.ids), tc.batch_size * tc.grad_accum)
        step = 0
        if ck is not None:
            path = self.checkpoint_path
            notes = resume_changes(ck["config"], cfg, self, path)
            past_total(ck["step"], self.total, path)
            self.model.load_state_dict(ck["model"])
            self.opt.load_state_dict(ck["optimizer"])
            if note := check_resume(ck, self.precision, self.scaler, path):
                notes.append(note)  # the run changed precision
            if self.ema is not None and ck.get("ema") is not None:
                self.ema.load_state_dict(ck["ema"])
            step, self.best = ck["step"], ck.get("best_val_loss", float("inf"))
            set_rng_state(ck["rng"])
        if self.rank == 0:
            write_config(self.run_dir, cfg)
        self.net = self.model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if self.compile:
            self.net = torch.compile(self.net)
        self.eval_model = self.ema.model if self.ema is not None else self.model
        return step, notes

    def start_from(self, source: str) -> str:
        """Load transformer_train.init's weights (its weight average, if it kept one) into the
        fresh model; its tokens must be this run's."""
        from maskgit_cli.api import model_path

        ck = checkpoint.load(model_path(source), "transformer")  # or a bundled model's name
        path = ck["path"]
        if ck.get("tokenizer_id") != self.tokenizer_id:
            raise CheckpointError(
                f"transformer_train.init: {path} was trained on the tokens of tokenizer "
                f"{ck.get('tokenizer_id')}, but this run's tokenizer is {self.tokenizer_id}; "
                "start from a transformer of this run's tokenizer, or from random weights"
            )
        state = checkpoint.weights(ck)
        if not self.settings.add_layers:
            checkpoint.load_state(
                self.model,
                state,
                path,
                hint="transformer_train.init must have this config's transformer section",
            )
            return f"started from the weights of {path}"
        from maskgit_cli.transformer import grow

        old = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        asked = len(self.model.blocks) - self.settings.add_layers
        if old != asked:
            raise CheckpointError(
                f"transformer_train.init: {path} has {old} layers, but transformer.layers is "
                f"{asked}: set transformer.layers={old} (transformer_train.add_layers adds to it)"
            )
        checkpoint.check_finite(state, path)
        try:
            grow(state, old, self.model)
        except ValueError as err:
            raise CheckpointError(
                f"transformer_train.init: {path}: cannot add layers to it: {err}; "
                "transformer.layers must be its depth and the other transformer settings its own"
            ) from None
        return (
            f"started from the weights of {path}, deepened from {old} to {len(self.model.blocks)} "
            "layers (the new ones start as the identity)"
        )

    def step(self, step: int, lr: float) -> StepOut:
        tc, device, K = self.settings, self.device, self.cfg.tokenizer.codebook_size
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        step_loss, count, M = 0.0, 0, len(self.ids)
        for micro in range(tc.grad_accum):
            g = runtime.step_generator(self.seed, step * tc.grad_accum + micro, self.rank)
            idx = batch_indices(
                M, tc.batch_size, self.seed, step * tc.grad_accum + micro, self.rank, self.world
            )
            target = self.ids[idx]
            mask, hole = mvtm_mask(
                target, tc.schedule, g, tc.mask_mode, self.cfg.data.image_size, with_hole=True
            )
            hint = mvtm_hint(self.colors[idx] if self.colors is not None else None, hole)
            target, mask = target.to(device), mask.to(device)
            with self.precision.autocast():
                logits = self.net(
                    target.masked_fill(mask, K),
                    mask,  # the last block and head at the mask only
                    hint=hint.to(device) if hint is not None else None,
                )
                loss = masked_loss(logits, target, mask, tc.label_smoothing) / tc.grad_accum
            check_finite(loss, step, self.checkpoint_path, "lower transformer_train.lr")
            self.scaler.scale(loss).backward()
            step_loss += loss.item()
            count += target.numel() * self.world
        optimizer_step(self.opt, self.scaler, self.model.parameters(), tc.grad_clip)
        if self.ema is not None:
            self.ema.update(self.model, step)
        return StepOut(step_loss, count, lambda: {"lr": lr})

    def epoch_fields(self, lr: float, rate: float) -> dict[str, Any]:
        return {"lr": lr, "tokens_per_second": rate}

    def evaluate(self, step: int) -> dict[str, Any]:
        if self.val_ids is None:
            return {}
        self.last_val = evaluate_transformer(
            self.eval_model,
            self.val_ids,
            self.settings.val_ratios,
            self.device,
            colors=self.val_colors,
            precision=self.precision,
        )
        if self.last_val["val_loss"] < self.best:
            self.best = self.last_val["val_loss"]
            self._write(self.run_dir / BEST, self.last_val, step)
        return {
            "val_loss": self.last_val["val_loss"],
            **{f"val_acc@{r}": a for r, a in self.last_val["accuracy"].items()},
        }

    def save(self, step: int, final: bool = False) -> None:
        self._write(self.checkpoint_path, (self.last_val or {}) if final else {}, step)

    def _write(self, path: Path, metrics: dict[str, Any], step: int) -> None:
        if self.rank != 0:
            return
        checkpoint.save(
            path,
            {
                "kind": "transformer",
                "config": self.cfg.to_dict(),
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": self.opt.state_dict(),
                "scaler": self.scaler.state_dict(),
                "step": step,
                "rng": rng_state(),
                "tokenizer_id": self.tokenizer_id,
                "best_val_loss": self.best,
                "precision": self.precision.name,
                "metrics": metrics,
            },
        )

    def result(self, run: Run) -> TransformerResult:
        best = self.run_dir / BEST
        return TransformerResult(
            stage=self.name,
            steps=run.steps,
            final_loss=run.final_loss,
            val_loss=self.last_val["val_loss"] if self.last_val else None,
            val_accuracy=self.last_val["accuracy"] if self.last_val else None,
            tokens_per_second=run.rate,
            precision=self.precision.name,
            checkpoint=str(self.checkpoint_path),
            best_checkpoint=str(best) if best.exists() else None,
            seconds=run.seconds,
            interrupted=run.interrupted,
            epochs=run.epochs,
            warnings=run.warnings,
        )
