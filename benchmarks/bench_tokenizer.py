"""Tokenizer training and encode images/s, cats64, cats64_small and lab, fp32 and bf16 side by side.

Training is timed on stage 1's own step (`TokenizerStage.step`: reconstruction + VQ loss, fused
AdamW, the weight average, under the precision's autocast with fp32 master weights), fed random
images. A config that turns the patch GAN on partway (`tokenizer_train.disc_start`, as cats64's
does) gets a second figure, the step after the critic starts (generator and critic updates,
the adaptive weight and any feature matching). Encoding runs the weights themselves in the
precision, as `maskgit encode` and inpainting do. MFU is not reported: convolution FLOPs are not
counted here.
"""

import argparse
import dataclasses
import itertools
import tempfile
from pathlib import Path

import torch
from common import ROOT, emit, interleaved, machine, precisions

from maskgit_cli import config, vqgan
from maskgit_cli.train.tokenizer import TokenizerStage


def stage_step(cfg, prec, batch: int, gan: bool, run_dir: Path):
    """A callable running stage 1's real training step on random images, its critic on from the
    first step (gan) or off."""
    tc = dataclasses.replace(
        cfg.tokenizer_train, batch_size=batch, precision=prec.name, disc_start=0 if gan else -1
    )
    cfg = dataclasses.replace(cfg, tokenizer_train=tc)
    size = cfg.data.image_size
    images = torch.randint(0, 256, (batch * 4, 3, size, size), dtype=torch.uint8)
    stage = TokenizerStage(cfg, run_dir, images=images, device=torch.device("cpu"), seed=0)
    stage.setup(resume=False)
    steps = itertools.count()
    return lambda: stage.step(next(steps), tc.lr)


def bench(name: str, batch: int, precs: list, rounds: int = 3) -> list[dict]:
    cfg = config.load(ROOT / "configs" / f"{name}.yaml")
    gan = cfg.tokenizer_train.disc_start >= 0  # the config trains part of stage 1 with a critic
    x = torch.randn(batch, 3, cfg.data.image_size, cfg.data.image_size)
    train, encode = {}, {}  # train: {(precision, critic on): step}, timed in one alternation
    params = sum(p.numel() for p in vqgan.build(cfg).parameters()) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        for prec in precs:
            for on in (False, True) if gan else (False,):
                torch.manual_seed(0)
                run_dir = Path(tmp, f"{prec.name}-{on}")
                train[prec.name, on] = stage_step(cfg, prec, batch, on, run_dir)
            frozen = prec.for_inference(vqgan.build(cfg).eval())
            encode[prec.name] = torch.no_grad()(lambda m=frozen: m.encode(x))
        train_s = interleaved(train, rounds)
        encode_s = interleaved(encode, rounds)
    return [
        {
            "config": name,
            "precision": p.name,
            "params_m": params,
            "batch": batch,
            "train_images_per_second": batch / train_s[p.name, False],
            # null: this config's stage 1 has no critic
            "gan_train_images_per_second": batch / train_s[p.name, True] if gan else None,
            "encode_images_per_second": batch / encode_s[p.name],
        }
        for p in precs
    ]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["cats64", "cats64_small", "lab"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16")
    args = ap.parse_args()
    precs = precisions(args.precision)
    plan = [("cats64", 16), ("cats64_small", 16), ("lab", 4)]
    rows = [
        r
        for name, batch in plan
        if args.only in (None, name)
        for r in bench(name, batch, precs, args.rounds)
    ]
    emit({"benchmark": "tokenizer", **machine(), "results": rows})
