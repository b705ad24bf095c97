"""Transformer training throughput and MFU (model FLOPs / measured fp32 matmul peak), cats64 and
lab.

At the lab config the course's reference loop (benchmarks/reference.py: re-encode every batch of
10 through the lab VQGAN, hand-written attention with dropout, logits at every position) is timed
in the same run, alternating with ours; its published figure is about 0.6 images/s on a 2-core CPU.
Ours trains on cached tokens, so the VQGAN never runs in the loop.
"""

import argparse

import torch
from common import ROOT, emit, interleaved, machine, matmul_peak
from reference import reference_models, reference_train_step

from maskgit_cli import config, data, transformer
from maskgit_cli.mvtm import masked_loss, mvtm_hint, mvtm_mask
from maskgit_cli.train.loop import adamw

PUBLISHED_REFERENCE_IMAGES_PER_SECOND = 0.6


def bench(
    name: str, batch: int, compile: bool = False, reference: bool = False, rounds: int = 3
) -> dict:
    cfg = config.load(ROOT / "configs" / f"{name}.yaml")
    grid, K = cfg.grid, cfg.tokenizer.codebook_size
    torch.manual_seed(0)
    model = transformer.build(cfg.transformer, grid, K)
    net = torch.compile(model) if compile else model
    opt = adamw(model.parameters(), lr=1e-4, betas=(0.9, 0.96))  # the training loop's optimizer
    ids = torch.randint(0, K, (batch, grid * grid))
    g = torch.Generator().manual_seed(0)
    model.train()
    masked = []

    colors = (
        torch.rand(batch, 3, grid, grid) if cfg.transformer.hint else None
    )  # the tokens' mean colours

    def step():
        mask = mvtm_mask(ids, "cosine", g)
        masked.append(mask.float().mean().item())
        loss = masked_loss(net(ids.masked_fill(mask, K), mask, mvtm_hint(colors, mask)), ids, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fns = {"ours": step}
    if reference:
        tok, ref = reference_models(cfg)
        ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-4, betas=(0.9, 0.96))
        images = data.normalize(
            torch.randint(0, 256, (batch, 3, 64, 64), dtype=torch.uint8), cfg.data
        )
        rg = torch.Generator().manual_seed(0)
        fns["reference"] = lambda: reference_train_step(tok, ref, ref_opt, images, cfg, rg)
        fns["reference_encode"] = torch.no_grad()(lambda: tok.encode(images))  # its VQGAN share
    seconds = interleaved(fns, rounds)
    tokens = batch * grid * grid
    frac = sum(masked) / len(masked)  # the last block and head run at the masked positions only
    flops = model.flops_per_token(training=True, out_fraction=frac) * tokens
    row = {
        "config": name,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "batch": batch,
        "compile": compile,
        "step_seconds": seconds["ours"],
        "tokens_per_second": tokens / seconds["ours"],
        "images_per_second": batch / seconds["ours"],
        "model_flops_per_step": flops,
        "achieved_flops": flops / seconds["ours"],
        "speedup_vs_published_reference": batch
        / seconds["ours"]
        / PUBLISHED_REFERENCE_IMAGES_PER_SECOND,
    }
    if reference:
        row["reference_images_per_second"] = batch / seconds["reference"]
        row["reference_step_seconds"] = seconds["reference"]
        row["reference_encode_seconds"] = seconds["reference_encode"]
        row["speedup_vs_measured_reference"] = seconds["reference"] / seconds["ours"]
    return row


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=["cats64", "lab"])
    args = ap.parse_args()
    peak = matmul_peak()
    plan = [("cats64", 64, False), ("lab", 10, True)]
    rows = [
        bench(name, batch, args.compile, reference=ref, rounds=args.rounds)
        for name, batch, ref in plan
        if args.only in (None, name)
    ]
    for r in rows:
        r["mfu"] = r["achieved_flops"] / peak
    emit(
        {
            "benchmark": "transformer_training",
            **machine(),
            "matmul_peak_flops": peak,
            "results": rows,
            "targets": {"lab_mfu": 0.6, "lab_speedup_vs_reference_loop": 2.0},
        }
    )
