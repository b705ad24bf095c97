"""Tokenizer training images/s and encode images/s, cats64 and lab configs, on this machine."""

import argparse

import torch
from common import ROOT, emit, interleaved, machine

from maskgit_cli import config, vqgan
from maskgit_cli.train.loop import adamw


def bench(name: str, batch: int) -> dict:
    cfg = config.load(ROOT / "configs" / f"{name}.yaml")
    model = vqgan.build(cfg)
    opt = adamw(model.parameters(), lr=1e-4)  # the training loop's optimizer
    x = torch.randn(batch, 3, cfg.data.image_size, cfg.data.image_size)

    def train_step():
        rec, _ids, vq_loss, _z = model(x)
        loss = (rec - x).abs().mean() + vq_loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.train()
    train_s = interleaved({"train": train_step})["train"]
    model.eval()
    with torch.no_grad():
        enc_s = interleaved({"encode": lambda: model.encode(x)})["encode"]
    return {
        "config": name,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "batch": batch,
        "train_images_per_second": batch / train_s,
        "encode_images_per_second": batch / enc_s,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["cats64", "lab"])
    args = ap.parse_args()
    plan = [("cats64", 16), ("lab", 4)]
    emit(
        {
            "benchmark": "tokenizer",
            **machine(),
            "results": [bench(*p) for p in plan if args.only in (None, p[0])],
        }
    )
