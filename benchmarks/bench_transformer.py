"""Transformer training throughput and MFU (model FLOPs / measured fp32 matmul peak), cats64 and lab.

The course's reference loop re-encodes every batch through its VQGAN and trains at about
0.6 images/s at batch 10 on a 2-core CPU; ours trains on cached tokens.
"""

import argparse

from common import ROOT, emit, machine, matmul_peak, timed

import torch

from maskgit_cli import config, transformer
from maskgit_cli.train import masked_loss, mvtm_mask

REFERENCE_IMAGES_PER_SECOND = 0.6


def bench(name: str, batch: int, compile: bool = False) -> dict:
    cfg = config.load(ROOT / "configs" / f"{name}.yaml")
    grid, K = cfg.grid, cfg.tokenizer.codebook_size
    model = transformer.build(cfg.transformer, grid, K)
    net = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.96))
    ids = torch.randint(0, K, (batch, grid * grid))
    g = torch.Generator().manual_seed(0)
    model.train()

    def step():
        mask = mvtm_mask(ids, "cosine", g)
        loss = masked_loss(net(ids.masked_fill(mask, K)), ids, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = timed(step, warmup=2, repeats=5)
    tokens = batch * grid * grid
    flops = model.flops_per_token(training=True) * tokens
    return {"config": name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "batch": batch,
            "compile": compile, "step_seconds": seconds, "tokens_per_second": tokens / seconds,
            "images_per_second": batch / seconds, "model_flops_per_step": flops, "achieved_flops": flops / seconds}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    peak = matmul_peak()
    rows = [bench("cats64", 64, args.compile), bench("lab", 10, args.compile)]
    for r in rows:
        r["mfu"] = r["achieved_flops"] / peak
        r["speedup_vs_reference_loop"] = r["images_per_second"] / REFERENCE_IMAGES_PER_SECOND
    emit({"benchmark": "transformer_training", **machine(), "matmul_peak_flops": peak, "results": rows,
          "targets": {"lab_mfu": 0.6, "lab_speedup_vs_reference_loop": 2.0}})
