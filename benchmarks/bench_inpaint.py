"""Inpainting images/s at (T=12, t=8) and T=8 for cats64_small and lab, and at the bundled
model's T=12 for cats64, in fp32 and bf16 side by side, with the MFU of the transformer passes
against the peak of the precision used (same run).
Weights are random (speed does not depend on them); bf16 runs the weights in bf16, as
`maskgit inpaint --precision bf16` does.

At the lab config the course's reference loop (benchmarks/reference.py: one image at a time, a
full fp32 transformer pass per step and a VQGAN decode of the image at every step) is timed in
the same run, alternating with ours; its published figure is about 0.15 images/s at T=12, t=8 on
2 CPU cores."""

import argparse

import torch
from common import ROOT, emit, interleaved, machine, peaks, precisions
from reference import reference_inpaint, reference_models

from maskgit_cli import config, data, transformer, vqgan
from maskgit_cli.inpaint import Inpainter, InpaintSettings

PUBLISHED_REFERENCE_IMAGES_PER_SECOND = 0.15


def bench(
    name: str, batch: int, T: int, t: int, precs: list, reference: int = 0, rounds: int = 2
) -> list[dict]:
    cfg = config.load(ROOT / "configs" / f"{name}.yaml")
    S = cfg.data.image_size
    images = torch.randint(0, 256, (batch, 3, S, S), dtype=torch.uint8)
    missing = torch.zeros(batch, S, S, dtype=torch.bool)
    missing[:, S // 4 : 3 * S // 4, S // 4 : 3 * S // 4] = (
        True  # a central hole, 25 % of the pixels
    )
    gens = [torch.Generator().manual_seed(i) for i in range(batch)]
    ids = torch.randint(0, cfg.tokenizer.codebook_size, (batch, cfg.grid * cfg.grid))
    where = data.token_mask(missing, cfg.grid).flatten(1)
    hint = (
        torch.rand(batch, cfg.grid * cfg.grid, 3) if cfg.transformer.hint else None
    )  # hint models need one
    fns, passes, trs = {}, {}, {}
    for prec in precs:
        torch.manual_seed(0)
        tok = vqgan.build(cfg).eval()
        tr = transformer.build(cfg.transformer, cfg.grid, cfg.tokenizer.codebook_size).eval()
        inp = Inpainter(
            tok, tr, cfg, InpaintSettings(total_iter=T, sweet_spot=t), torch.device("cpu"), prec
        )
        fns[prec.name] = lambda inp=inp: inp(images, missing, gens)
        trs[prec.name] = inp.tr  # the transformer passes alone, as decoding calls them, for the MFU
        h = hint.to(torch.bfloat16) if hint is not None and prec.name == "bf16" else hint
        passes[prec.name] = torch.no_grad()(lambda tr=inp.tr, h=h: tr(ids, where, h))
    if reference:
        ref_tok, ref_tr = reference_models(cfg)
        x = data.normalize(images[:reference], cfg.data)
        rg = torch.Generator().manual_seed(0)
        fns["reference"] = lambda: [
            reference_inpaint(
                ref_tok,
                ref_tr,
                x[i : i + 1],
                missing[i : i + 1],
                cfg,
                rg,
                total_iter=T,
                sweet_spot=t,
            )
            for i in range(reference)
        ]
    seconds = interleaved(fns, rounds)
    pass_seconds = interleaved(passes, 3)
    rows = []
    for prec in precs:
        tr = trs[prec.name]
        flops = (
            tr.flops_per_token(training=False, out_fraction=where.float().mean().item())
            * batch
            * cfg.grid**2
        )
        s = seconds[prec.name]
        row = {
            "config": name,
            "precision": prec.name,
            "batch": batch,
            "T": T,
            "t": t,
            "seconds": s,
            "images_per_second": batch / s,
            "transformer_pass_seconds": pass_seconds[prec.name],
            "transformer_achieved_flops": flops / pass_seconds[prec.name],
            "speedup_vs_published_reference": batch / s / PUBLISHED_REFERENCE_IMAGES_PER_SECOND,
        }
        if reference:
            row["reference_images_per_second"] = reference / seconds["reference"]
            row["speedup_vs_measured_reference"] = (batch / s) / (reference / seconds["reference"])
        rows.append(row)
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", choices=["cats64", "cats64_small", "lab"])
    ap.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16")
    args = ap.parse_args()
    precs = precisions(args.precision)
    peak = peaks(precs)
    plan = [
        ("cats64", 32, 12, 12, 0),  # the bundled model's sizes and decode steps
        ("cats64_small", 32, 12, 8, 0),
        ("cats64_small", 32, 8, 8, 0),
        ("lab", 16, 12, 8, 4),
        ("lab", 16, 8, 8, 0),
    ]
    rows = [
        r
        for p in plan
        if args.only in (None, p[0])
        for r in bench(*p[:4], precs, p[4], args.rounds)
    ]
    for r in rows:
        r["transformer_mfu"] = r["transformer_achieved_flops"] / peak[r["precision"]]
    emit(
        {
            "benchmark": "inpaint",
            **machine(),
            "matmul_peak_flops": peak,
            "results": rows,
            "targets": {"lab_speedup_vs_reference_loop": 10.0, "large_pass_mfu": 0.5},
        }
    )
