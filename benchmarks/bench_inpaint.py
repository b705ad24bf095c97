"""Inpainting images/s at (T=12, t=8) and T=8 for cats64 and lab configs, with the MFU of the
transformer passes. Weights are random (speed does not depend on them).

At the lab config the course's reference loop (benchmarks/reference.py: one image at a time, a full
transformer pass per step and a VQGAN decode of the image at every step) is timed in the same run,
alternating with ours; its published figure is about 0.15 images/s at T=12, t=8 on 2 CPU cores."""

import argparse

import torch
from common import ROOT, emit, interleaved, machine, matmul_peak
from reference import reference_inpaint, reference_models

from maskgit_cli import config, data, transformer, vqgan
from maskgit_cli.inpaint import Inpainter, InpaintSettings

PUBLISHED_REFERENCE_IMAGES_PER_SECOND = 0.15


def bench(name: str, batch: int, T: int, t: int, reference: int = 0, rounds: int = 2) -> dict:
    cfg = config.load(ROOT / "configs" / f"{name}.yaml")
    torch.manual_seed(0)
    tok = vqgan.build(cfg).eval()
    tr = transformer.build(cfg.transformer, cfg.grid, cfg.tokenizer.codebook_size).eval()
    inp = Inpainter(tok, tr, cfg, InpaintSettings(total_iter=T, sweet_spot=t), torch.device("cpu"))
    S = cfg.data.image_size
    images = torch.randint(0, 256, (batch, 3, S, S), dtype=torch.uint8)
    missing = torch.zeros(batch, S, S, dtype=torch.bool)
    missing[:, S // 4 : 3 * S // 4, S // 4 : 3 * S // 4] = (
        True  # a central hole, 25 % of the pixels
    )
    gens = [torch.Generator().manual_seed(i) for i in range(batch)]
    fns = {"ours": lambda: inp(images, missing, gens)}
    if reference:
        ref_tok, ref_tr = reference_models(cfg)
        ref_tr.load_state_dict(tr.state_dict())
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
    # transformer passes alone, as decoding calls them (logits at the masked positions), for the MFU
    ids = torch.randint(0, cfg.tokenizer.codebook_size, (batch, cfg.grid * cfg.grid))
    where = data.token_mask(missing, cfg.grid).flatten(1)
    hint = (
        torch.rand(batch, cfg.grid * cfg.grid, 3) if cfg.transformer.hint else None
    )  # a hint model needs one
    with torch.no_grad():
        tr_seconds = interleaved({"pass": lambda: tr(ids, where, hint)}, 3)["pass"]
    flops = (
        tr.flops_per_token(training=False, out_fraction=where.float().mean().item())
        * batch
        * cfg.grid**2
    )
    row = {
        "config": name,
        "batch": batch,
        "T": T,
        "t": t,
        "seconds": seconds["ours"],
        "images_per_second": batch / seconds["ours"],
        "transformer_pass_seconds": tr_seconds,
        "transformer_achieved_flops": flops / tr_seconds,
        "speedup_vs_published_reference": batch
        / seconds["ours"]
        / PUBLISHED_REFERENCE_IMAGES_PER_SECOND,
    }
    if reference:
        row["reference_images_per_second"] = reference / seconds["reference"]
        row["speedup_vs_measured_reference"] = (batch / seconds["ours"]) / (
            reference / seconds["reference"]
        )
    return row


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", choices=["cats64", "lab"])
    args = ap.parse_args()
    peak = matmul_peak()
    plan = [
        ("cats64", 32, 12, 8, 0),
        ("cats64", 32, 8, 8, 0),
        ("lab", 16, 12, 8, 4),
        ("lab", 16, 8, 8, 0),
    ]
    rows = [bench(*p, rounds=args.rounds) for p in plan if args.only in (None, p[0])]
    for r in rows:
        r["transformer_mfu"] = r["transformer_achieved_flops"] / peak
    emit(
        {
            "benchmark": "inpaint",
            **machine(),
            "matmul_peak_flops": peak,
            "results": rows,
            "targets": {"lab_speedup_vs_reference_loop": 2.0, "lab_transformer_mfu": 0.6},
        }
    )
