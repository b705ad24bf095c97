"""Transformer training throughput and MFU, cats64, cats64_small and lab, fp32 and bf16 in turn.

MFU = model FLOPs / the peak matmul rate of the precision used, measured in the same run. Each
step is the training loop's own: MVTM masks, the masked-positions head, fused AdamW, and in bf16
autocast with fp32 master weights (and plain-matmul attention on the CPU, as the stage uses).

At the lab config the course's reference loop (benchmarks/reference.py: re-encode every batch of
10 through the lab VQGAN, hand-written attention with dropout, logits at every position, fp32) is
timed in the same run, alternating with ours; its published figure is about 0.6 images/s on a
2-core CPU. Ours trains on cached tokens, so the VQGAN never runs in the loop.
"""

import argparse

import torch
from common import ROOT, emit, interleaved, machine, peaks, precisions
from reference import reference_models, reference_train_step

from maskgit_cli import config, data, transformer
from maskgit_cli.mvtm import masked_loss, mvtm_hint, mvtm_mask
from maskgit_cli.train.loop import adamw

PUBLISHED_REFERENCE_IMAGES_PER_SECOND = 0.6


def bench(
    name: str, batch: int, precs: list, reference: bool = False, rounds: int = 3
) -> list[dict]:
    """One row per precision; the reference loop (fp32) alternates with all of them."""
    cfg = config.load(ROOT / "configs" / f"{name}.yaml")
    grid, K = cfg.grid, cfg.tokenizer.codebook_size
    ids = torch.randint(0, K, (batch, grid * grid))
    colors = torch.rand(batch, 3, grid, grid) if cfg.transformer.hint else None  # token colours
    fns, models, masked = {}, {}, []

    def make_step(prec):
        torch.manual_seed(0)
        model = transformer.build(cfg.transformer, grid, K)
        if prec.math_attention:
            model.set_fast_attention(False)
        opt = adamw(model.parameters(), lr=1e-4, betas=(0.9, 0.96))  # the training loop's optimizer
        g = torch.Generator().manual_seed(0)
        model.train()

        def step():
            mask = mvtm_mask(ids, "cosine", g)
            masked.append(mask.float().mean().item())
            with prec.autocast():
                logits = model(ids.masked_fill(mask, K), mask, mvtm_hint(colors, mask))
                loss = masked_loss(logits, ids, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return model, step

    for prec in precs:
        models[prec.name], fns[prec.name] = make_step(prec)
    if reference:
        tok, ref = reference_models(cfg)
        ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-4, betas=(0.9, 0.96))
        images = data.normalize(
            torch.randint(0, 256, (batch, 3, 64, 64), dtype=torch.uint8), cfg.data
        )
        rg = torch.Generator().manual_seed(0)
        fns["reference"] = lambda: reference_train_step(tok, ref, ref_opt, images, cfg, rg)
    seconds = interleaved(fns, rounds)
    tokens = batch * grid * grid
    frac = sum(masked) / len(masked)  # the last block and head run at the masked positions only
    rows = []
    for prec in precs:
        model = models[prec.name]
        flops = model.flops_per_token(training=True, out_fraction=frac) * tokens
        s = seconds[prec.name]
        row = {
            "config": name,
            "precision": prec.name,
            "batch": batch,
            "step_seconds": s,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "tokens_per_second": tokens / s,
            "images_per_second": batch / s,
            "model_flops_per_step": flops,
            "achieved_flops": flops / s,
            "speedup_vs_published_reference": batch / s / PUBLISHED_REFERENCE_IMAGES_PER_SECOND,
        }
        if reference:
            row["reference_images_per_second"] = batch / seconds["reference"]
            row["speedup_vs_measured_reference"] = seconds["reference"] / s
        rows.append(row)
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=["cats64", "cats64_small", "lab"])
    ap.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16")
    args = ap.parse_args()
    precs = precisions(args.precision)
    peak = peaks(precs)
    plan = [("cats64", 64, False), ("cats64_small", 64, False), ("lab", 10, True)]
    rows = [
        r
        for name, batch, ref in plan
        if args.only in (None, name)
        for r in bench(name, batch, precs, reference=ref, rounds=args.rounds)
    ]
    for r in rows:
        r["mfu"] = r["achieved_flops"] / peak[r["precision"]]
    emit(
        {
            "benchmark": "transformer_training",
            **machine(),
            "matmul_peak_flops": peak,
            "results": rows,
            "targets": {"lab_speedup_vs_reference_loop": 5.0, "large_pass_mfu": 0.5},
        }
    )
