"""Stage 2b: the Token-Critic (`critic.py`) of a trained stage-2 run (`--stage critic`). The run's
transformer stays frozen and draws the critic's training grids; the critic learns which tokens it
drew. Its checkpoint, RUN/critic.pt, names the tokenizer and the transformer it was trained
against: decoding refuses it beside any other."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from maskgit_cli import checkpoint, critic, precision, runtime, tokens
from maskgit_cli.errors import CheckpointError, ConfigError, DataError
from maskgit_cli.mvtm import mvtm_hint, mvtm_mask
from maskgit_cli.precision import check_resume
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
)
from maskgit_cli.train.transformer import param_groups, stage_tokens


@dataclass
class CriticResult:
    stage: str
    steps: int
    final_loss: float | None
    val_loss: float | None
    val_accuracy: float | None
    tokens_per_second: float
    checkpoint: str
    seconds: float
    precision: str = "fp32"
    interrupted: bool = False
    epochs: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@torch.no_grad()
def evaluate_critic(
    model,
    generator,
    ids: torch.Tensor,
    colors: torch.Tensor | None,
    settings,
    image_size: int,
    device,
    sampling: tuple[float, float],
    batch_size: int = 128,
    seed: int = 1234,
    precision=None,
) -> dict[str, float]:
    """Loss and accuracy (logit > 0 = the data's) on val grids corrupted as in training (the
    masks of `settings`, a CriticTrainConfig), from a fixed seed: runs compare. Fixed-ratio
    scattered masks would mislead here: at ratio 0.5 the drawn tokens are hard to tell apart,
    while decoding asks the critic about holes. `precision`: the run's (its autocasts)."""
    model.eval()
    ids = ids.flatten(1)
    g = torch.Generator().manual_seed(seed)
    loss, correct, count = 0.0, 0, 0
    for i in range(0, len(ids), batch_size):
        x = ids[i : i + batch_size]
        mask, hole = mvtm_mask(
            x, settings.schedule, g, settings.mask_mode, image_size, with_hole=True
        )
        hint = mvtm_hint(colors[i : i + batch_size], hole) if colors is not None else None
        with precision.inference_autocast() if precision else contextlib.nullcontext():
            fake, replaced = critic.corrupt(
                generator,
                x.to(device),
                mask.to(device),
                hint.to(device) if hint is not None else None,
                g,
                *sampling,
            )
        with precision.autocast() if precision else contextlib.nullcontext():
            logits = model(fake)
        loss += critic.critic_loss(logits, replaced).item() * logits.numel()
        correct += ((logits > 0) == ~replaced).sum().item()
        count += logits.numel()
    model.train()
    return {"val_loss": loss / count, "val_accuracy": correct / count}


class CriticStage(Stage):
    name = "critic"
    section = "critic_train"
    checkpoint_file = checkpoint.CRITIC
    metrics_file = "metrics_critic.jsonl"
    files = (
        "metrics_critic.jsonl",
        checkpoint.CRITIC,
        "tokens_train.npz",
        "tokens_val.npz",
        tokens.partial_name("train"),
        tokens.partial_name("val"),
    )
    depends_on = ("critic_train",)
    unit = "tokens"
    summary = "stage 2b: a Token-Critic for RUN's transformer"

    def __init__(
        self,
        cfg,
        run_dir,
        *,
        generator,
        generator_id,
        tokenizer_id,
        ids,
        colors,
        val_ids,
        val_colors,
        **kw,
    ):
        super().__init__(cfg, run_dir, **kw)
        self.generator, self.generator_id, self.tokenizer_id = generator, generator_id, tokenizer_id
        self.ids, self.colors = ids.flatten(1), colors
        self.val_ids, self.val_colors = val_ids, val_colors
        self.last_val: dict[str, float] | None = None
        # the critic learns the tokens the generator draws as decoding draws them
        self.sampling = (cfg.decode.temperature, cfg.decode.top_p)

    @classmethod
    def open(
        cls, cfg, run_dir, *, data, val, tokenizer, resize, device, seed, compile, overwrite, status
    ):
        rank, world, device = runtime.init_distributed(device)
        if world > 1:
            raise ConfigError("--stage critic trains in one process: run it without torchrun")
        if tokenizer is not None:
            raise DataError(
                "--stage critic uses RUN's own tokenizer and transformer: drop --tokenizer"
            )
        if not (run_dir / checkpoint.TRANSFORMER).is_file():
            raise DataError(
                f"{run_dir} has no {checkpoint.TRANSFORMER}: train stage 2 there first "
                "(--stage transformer), or give --out a model folder"
            )
        tok_model, gen, run_cfg = checkpoint.load_transformer(run_dir, device)
        tok_id = tok_model.model_id
        # the run's own models are the authority; only the critic's settings come from the command
        cfg = dataclasses.replace(run_cfg, critic_train=cfg.critic_train)
        prec = precision.resolve(cfg.critic_train.precision, device)
        train, val_tokens = stage_tokens(
            cfg, run_dir, data, val, tok_model, tok_id, device, resize, rank, prec, status
        )
        if gen.cfg.hint and (train.colors is None or (val_tokens and val_tokens.colors is None)):
            raise DataError("the run's transformer uses colour hints: its tokens need colours")
        return cls(
            cfg,
            run_dir,
            generator=gen,
            generator_id=checkpoint.model_id(gen.state_dict()),
            tokenizer_id=tok_id,
            ids=train.ids,
            colors=train.colors if gen.cfg.hint else None,
            val_ids=val_tokens.ids if val_tokens else None,
            val_colors=val_tokens.colors if val_tokens and gen.cfg.hint else None,
            device=device,
            seed=seed,
            overwrite=overwrite,
        )

    def setup(self, resume: bool) -> tuple[int, list[str]]:
        cfg, tc, device = self.cfg, self.settings, self.device
        torch.manual_seed(self.seed)
        self.model = critic.build(cfg.transformer, cfg.grid, cfg.tokenizer.codebook_size).to(device)
        notes: list[str] = []
        ck = checkpoint.load(self.checkpoint_path, "critic") if resume else None
        if ck is None and tc.from_transformer:
            if self.generator.cfg.norm != "pre" or self.generator.cfg.head != "linear":
                raise ConfigError(
                    "critic_train.from_transformer needs a pre-norm transformer with a linear "
                    "head (the critic's own layout); set critic_train.from_transformer=false"
                )
            self.model.start_from(self.generator.state_dict())
            notes.append("started from the trunk of the run's transformer")
        self.generator = self.precision.for_inference(self.generator)
        self.opt = adamw(
            param_groups(self.model, tc.weight_decay), lr=tc.lr, betas=(tc.beta1, tc.beta2)
        )
        self.scaler = self.precision.grad_scaler()
        self.steps(len(self.ids), tc.batch_size)
        step = 0
        if ck is not None:
            path = self.checkpoint_path
            if ck.get("transformer_id") != self.generator_id:
                raise CheckpointError(
                    f"{path} was trained against another transformer than {self.run_dir}'s; "
                    "start it again with --overwrite"
                )
            notes = resume_changes(ck["config"], cfg, self, path)
            past_total(ck["step"], self.total, path)
            self.model.load_state_dict(ck["model"])
            self.opt.load_state_dict(ck["optimizer"])
            if note := check_resume(ck, self.precision, self.scaler, path):
                notes.append(note)
            step = ck["step"]
            set_rng_state(ck["rng"])
        return step, notes

    def pairs(self, ids: torch.Tensor, colors, g: torch.Generator):
        """(fake grids, replaced) for a batch of real token grids, as in training."""
        tc = self.settings
        mask, hole = mvtm_mask(
            ids, tc.schedule, g, tc.mask_mode, self.cfg.data.image_size, with_hole=True
        )
        hint = mvtm_hint(colors, hole)
        with self.precision.inference_autocast():
            return critic.corrupt(
                self.generator,
                ids.to(self.device),
                mask.to(self.device),
                hint.to(self.device) if hint is not None else None,
                g,
                *self.sampling,
            )

    def step(self, step: int, lr: float) -> StepOut:
        tc = self.settings
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        g = runtime.step_generator(self.seed, step, self.rank)
        idx = batch_indices(len(self.ids), tc.batch_size, self.seed, step, self.rank, self.world)
        fake, replaced = self.pairs(
            self.ids[idx], self.colors[idx] if self.colors is not None else None, g
        )
        with self.precision.autocast():
            loss = critic.critic_loss(self.model(fake), replaced)
        check_finite(loss, step, self.checkpoint_path, "lower critic_train.lr")
        self.scaler.scale(loss).backward()
        optimizer_step(self.opt, self.scaler, self.model.parameters(), tc.grad_clip)
        return StepOut(loss.item(), fake.numel(), lambda: {"lr": lr})

    def epoch_fields(self, lr: float, rate: float) -> dict[str, Any]:
        return {"lr": lr, "tokens_per_second": rate}

    def evaluate(self, step: int) -> dict[str, Any]:
        if self.val_ids is None:
            return {}
        self.last_val = evaluate_critic(
            self.model,
            self.generator,
            self.val_ids,
            self.val_colors,
            self.settings,
            self.cfg.data.image_size,
            self.device,
            self.sampling,
            precision=self.precision,
        )
        return dict(self.last_val)

    def save(self, step: int, final: bool = False) -> None:
        if self.rank != 0:
            return
        checkpoint.save(
            self.checkpoint_path,
            {
                "kind": "critic",
                "config": self.cfg.to_dict(),
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "scaler": self.scaler.state_dict(),
                "step": step,
                "rng": rng_state(),
                "tokenizer_id": self.tokenizer_id,
                "transformer_id": self.generator_id,
                "precision": self.precision.name,
                "metrics": (self.last_val or {}) if final else {},
            },
        )

    def result(self, run: Run) -> CriticResult:
        return CriticResult(
            stage=self.name,
            steps=run.steps,
            final_loss=run.final_loss,
            val_loss=self.last_val["val_loss"] if self.last_val else None,
            val_accuracy=self.last_val["val_accuracy"] if self.last_val else None,
            tokens_per_second=run.rate,
            precision=self.precision.name,
            checkpoint=str(self.checkpoint_path),
            seconds=run.seconds,
            interrupted=run.interrupted,
            epochs=run.epochs,
            warnings=run.warnings,
        )
