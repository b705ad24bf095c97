"""Stage 1b: the tokenizer's decoder against a patch GAN (`--stage decoder`), tokens frozen.

Fine-tunes RUN/tokenizer.pt's decoder (and post-quant conv) against a patch discriminator, with
VQGAN's adaptive weight (Esser et al. 2021); the encoder and codebook stay frozen, so every image
keeps its tokens and the checkpoint keeps its id (a transformer trained on those tokens still
pairs with it). The stage-1 checkpoint is kept as RUN/tokenizer_stage1.pt; --overwrite restarts
from it. With `decoder_train.generated`, part of each batch is the run's own transformer's fills;
with `decoder_train.add_context`, the decoder learns to see the known pixels around a random hole.
The critic starts fresh, or as stage 1 left it with `decoder_train.keep_critic`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from maskgit_cli import checkpoint, data, vqgan
from maskgit_cli.errors import CheckpointError, ConfigError
from maskgit_cli.precision import check_resume
from maskgit_cli.train import ema
from maskgit_cli.train.loop import (
    StepOut,
    adamw,
    check_finite,
    optimizer_step,
    past_total,
    resume_changes,
    rng_state,
    set_rng_state,
)
from maskgit_cli.train.tokenizer import (
    ImageStage,
    adaptive_gan_weight,
    decoder_last_weight,
    evaluate_tokenizer,
    feature_matching,
    hinge_disc_step,
    patch_mean,
)

STAGE1_BACKUP = "tokenizer_stage1.pt"


class DecoderStage(ImageStage):
    name = "decoder"
    section = "decoder_train"
    checkpoint_file = checkpoint.TOKENIZER
    metrics_file = "metrics_decoder.jsonl"
    files = (checkpoint.TOKENIZER, STAGE1_BACKUP, "metrics_decoder.jsonl")
    depends_on = ("data", "tokenizer", "decoder_train")
    summary = "stage 1b, the tokenizer's decoder against a patch GAN (tokens unchanged)"

    @classmethod
    def saved_state(cls, ck: dict) -> dict:
        return ck.get("decoder_train") or {}  # stage 1's own state stays at the top level

    @classmethod
    def check_start(cls, run_dir, resume: bool, overwrite: bool) -> None:
        from maskgit_cli.errors import DataError

        if not (run_dir / cls.checkpoint_file).exists():
            raise DataError(
                f"no {cls.checkpoint_file} in {run_dir} to fine-tune: train one there first "
                f"(--stage tokenizer --out {run_dir})"
            )

    def setup(self, resume: bool) -> tuple[int, list[str]]:
        path, backup = self.checkpoint_path, self.run_dir / STAGE1_BACKUP
        ck = checkpoint.load(path, "tokenizer")
        state = ck.get("decoder_train")
        if resume and state is None:
            raise CheckpointError(
                f"{path}: its decoder was never fine-tuned, so there is nothing to resume; "
                "run --stage decoder without --resume"
            )
        if not resume and state is not None:
            if not self.overwrite:
                raise CheckpointError(
                    f"{path}: its decoder is already fine-tuned ({state['step']} steps); "
                    "continue with --resume, or pass --overwrite to restart from "
                    f"{STAGE1_BACKUP}"
                )
            if not backup.is_file():
                raise CheckpointError(
                    f"{path}: --overwrite restarts from {backup}, which is missing; "
                    "continue with --resume instead"
                )
            ck = checkpoint.load(backup, "tokenizer")
        cfg = self.cfg = dataclasses.replace(
            checkpoint.config_of(ck), decoder_train=self.cfg.decoder_train
        )
        tc, device = cfg.decoder_train, self.device
        self.tokens_id = checkpoint.tokens_id(ck)
        self.base = {k: v for k, v in ck.items() if k not in ("path", "version", "decoder_train")}
        notes: list[str] = []
        self.steps(len(self.images), tc.batch_size)
        if tc.generated >= tc.batch_size:
            raise ConfigError(
                f"decoder_train.generated ({tc.generated}) must be less than "
                "decoder_train.batch_size "
                f"({tc.batch_size}): each batch keeps some whole images to reconstruct"
            )
        if not resume and tc.keep_critic and ck.get("disc") is None:  # before any slow set-up
            raise ConfigError(
                f"{path}: holds no critic to keep (its stage 1 ran without one, or it is a "
                "copy without the training state); drop decoder_train.keep_critic or point "
                "at stage 1's own run folder"
            )
        if resume:
            notes = resume_changes(ck["config"], cfg, self, path)
            past_total(state["step"], self.total, path)

        torch.manual_seed(self.seed)
        if not resume and tc.add_context and cfg.tokenizer.context:
            raise ConfigError(
                f"{path}: its decoder already sees the known pixels (tokenizer.context); drop "
                "decoder_train.add_context"
            )
        if resume or not (tc.add_res_blocks or tc.add_context):
            model = vqgan.build(cfg).to(device)
            # a first fine-tune starts from what stage 1 hands on (its weight average, if any)
            checkpoint.load_state(
                model, ck["model"] if resume else checkpoint.weights(ck), str(path)
            )
        else:  # a grown tokenizer that starts out drawing what the checkpoint's draws
            old = vqgan.build(cfg)
            checkpoint.load_state(old, checkpoint.weights(ck), str(path))
            tok = cfg.tokenizer
            if tc.add_res_blocks:
                depth = (tok.decoder_res_blocks or tok.res_blocks) + tc.add_res_blocks
                tok = dataclasses.replace(tok, decoder_res_blocks=depth)
                notes.append(
                    f"decoder deepened to {depth} residual blocks per level (the new ones start "
                    "as the identity)"
                )
            else:
                tok = dataclasses.replace(tok, context=True)
                notes.append(
                    "the decoder now sees the known pixels (its context branch starts at zero)"
                )
            cfg = self.cfg = dataclasses.replace(cfg, tokenizer=tok)
            model = vqgan.build(cfg)
            (vqgan.grow_decoder if tc.add_res_blocks else vqgan.add_context)(model, old)
            model = model.to(device)
        if tc.hole_critic and model.context is None:
            raise ConfigError(
                "decoder_train.hole_critic judges the holes a context decoder draws: set "
                "decoder_train.add_context=true too"
            )
        self.model = model
        model.requires_grad_(False)
        self.params = [
            *model.post_quant_conv.parameters(),
            *model.decoder.parameters(),
            *(model.context.parameters() if model.context is not None else ()),
        ]
        for p in self.params:
            p.requires_grad_(True)
        self.last = decoder_last_weight(model)
        self.ema = ema.maybe(model, tc.ema)
        self.opt = adamw(self.params, lr=tc.lr, betas=(0.5, 0.9))
        # a critic carried on (a resume's, or stage 1's under keep_critic) keeps its own shape
        carried = state["disc"] if resume else ck["disc"] if tc.keep_critic else None
        self.disc = (
            vqgan.PatchDiscriminator.like(carried)
            if carried is not None
            else vqgan.PatchDiscriminator(layers=cfg.tokenizer_train.disc_layers)
        ).to(device)
        self.disc_opt = adamw(self.disc.parameters(), lr=tc.disc_lr, betas=(0.5, 0.9))
        self.scaler = self.precision.grad_scaler()
        step, self.start_val, self.pool = 0, {}, None
        if tc.generated:
            self.pool = state.get("pool") if resume else None
            if self.pool is None:  # the run's own transformer fills the holes
                from maskgit_cli.inpaint import inpainting_pool

                self.pool = inpainting_pool(
                    self.run_dir, self.images, tc.pool, self.seed, device, self.precision
                )
            self.pool_truth = self.images[self.pool["index"]]
        if resume:
            self.opt.load_state_dict(state["optimizer"])
            self.disc.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_optimizer"])
            if note := check_resume(state, self.precision, self.scaler, path):
                notes.append(note)  # the run changed precision
            if self.ema is not None:
                self.ema.load_state_dict(checkpoint.weights(ck))
            step, self.start_val = state["step"], state.get("start_metrics", {})
            set_rng_state(state["rng"])
        elif tc.keep_critic:
            self.disc.load_state_dict(ck["disc"])
            self.disc_opt.load_state_dict(ck["disc_optimizer"])
            for group in self.disc_opt.param_groups:  # this stage's rate, stage 1's moments
                group["lr"] = tc.disc_lr
        if not resume and state is None:
            # a first fine-tune keeps its stage-1 start (--overwrite restarts from there)
            checkpoint.save(backup, self.base)
        self.whole = tc.batch_size - tc.generated  # encoder-token images per batch
        return step, notes

    def first_rows(self, resume: bool) -> list[dict[str, Any]]:
        if resume or self.val_images is None:
            return []
        self.start_val = evaluate_tokenizer(
            self.eval_model, self.val_images, self.cfg, self.device, self.precision
        )
        return [{"epoch": 0, "step": 0, "val_psnr": self.start_val["psnr"]}]

    def step(self, step: int, lr: float) -> StepOut:
        model, tc, disc, pool, device, cfg = (
            self.model,
            self.settings,
            self.disc,
            self.pool,
            self.device,
            self.cfg,
        )
        model.train()
        g, x8, x = self.batch(step, self.whole)
        with torch.no_grad(), self.precision.autocast():
            ids = model.encode(x)
        real = x
        if pool is not None:  # the transformer's fills: their truth outside the hole is the target
            pick = torch.randint(0, len(pool["ids"]), (tc.generated,), generator=g)
            ids = torch.cat([ids, pool["ids"][pick].long().to(device)])
            real = torch.cat([x, data.normalize(self.pool_truth[pick].to(device), cfg.data)])
            known = torch.ones_like(real[:, :1])
            known[len(x) :] = (~pool["missing"][pick]).unsqueeze(1).to(known)
        context, where = None, None
        if model.context is not None:  # a random hole in each image, or nothing known
            missing = data.random_region_masks(len(x), x.shape[-1], g)
            missing = missing | (torch.rand(len(x), generator=g) < tc.context_drop).view(-1, 1, 1)
            context = vqgan.context_input(x, missing)
            if tc.hole_critic:
                where = missing.unsqueeze(1).to(device)
        disc.requires_grad_(False)  # the generator pass needs no discriminator gradients
        with self.precision.autocast():
            rec_all = model.decode_ids(ids, context)
            rec_err = rec_all.float() - real
            rec_loss = rec_err.abs() if tc.loss == "l1" else rec_err.pow(2)
            if pool is None:
                rec_loss = rec_loss.mean()
            else:  # averaged over the known pixels only
                rec_loss = (rec_loss * known).sum() / (known.sum() * rec_loss.shape[1])
            fake = disc.features(rec_all)  # its last entry is disc(rec_all)
            gan_loss = -patch_mean(fake[-1].float(), where)
            feat_loss = feature_matching(fake, disc, x) if tc.feature_weight > 0 else None
        weight = adaptive_gan_weight(
            self.scaler.scale(rec_loss), self.scaler.scale(gan_loss), self.last, tc.disc_weight
        )
        loss = rec_loss + weight * gan_loss
        if feat_loss is not None:
            loss = loss + tc.feature_weight * feat_loss
        check_finite(loss, step, self.checkpoint_path, "lower decoder_train.lr")
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        optimizer_step(self.opt, self.scaler, self.params, tc.grad_clip)
        if self.ema is not None:
            self.ema.update(model, step)
        disc.requires_grad_(True)
        d_loss = hinge_disc_step(disc, self.disc_opt, real, rec_all, self.precision, where)
        return StepOut(
            loss.item(),
            len(x8),
            lambda: {
                "rec_loss": rec_loss.item(),
                "gan_loss": gan_loss.item(),
                "gan_weight": weight.item(),
                **({"feature_loss": feat_loss.item()} if feat_loss is not None else {}),
                "disc_loss": d_loss,
                "lr": lr,
                "psnr": self.batch_psnr(rec_all[: len(x8)], x8),
            },
        )

    def save(self, step: int, final: bool = False) -> None:
        sd = self.model.state_dict()
        checkpoint.save(
            self.checkpoint_path,
            {
                **self.base,
                "config": self.cfg.to_dict(),
                "model": sd,
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "model_id": self.tokens_id,
                # without --val the new decoder's PSNR is unknown: the stage-1 figure would
                # describe other weights (codebook usage and perplexity stay: tokens are frozen)
                "metrics": self.last_val
                or {k: v for k, v in self.base.get("metrics", {}).items() if k != "psnr"},
                "decoder_train": {
                    "step": step,
                    "optimizer": self.opt.state_dict(),
                    "disc": self.disc.state_dict(),
                    "disc_optimizer": self.disc_opt.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "rng": rng_state(),
                    "weights_id": checkpoint.model_id(sd),
                    "start_metrics": self.start_val,
                    "pool": self.pool,
                    "precision": self.precision.name,
                },
            },
        )
