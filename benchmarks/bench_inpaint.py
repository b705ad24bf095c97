"""Inpainting images/s at (T=12, t=8) and T=8 for cats64 and lab configs, with the MFU of the
transformer passes. Weights are random (speed does not depend on them); the course's reference loop
(batch 1, decoding the image at every step) does about 0.15 images/s at T=12, t=8 on 2 CPU cores."""

from common import ROOT, emit, machine, matmul_peak

import time

import torch

from maskgit_cli import config, transformer, vqgan
from maskgit_cli.inpaint import Inpainter, InpaintSettings

REFERENCE_IMAGES_PER_SECOND = 0.15


def bench(name: str, batch: int, T: int, t: int) -> dict:
    cfg = config.load(ROOT / "configs" / f"{name}.yaml")
    tok = vqgan.build(cfg).eval()
    tr = transformer.build(cfg.transformer, cfg.grid, cfg.tokenizer.codebook_size).eval()
    inp = Inpainter(tok, tr, cfg, InpaintSettings(total_iter=T, sweet_spot=t), torch.device("cpu"))
    S = cfg.data.image_size
    images = torch.randint(0, 256, (batch, 3, S, S), dtype=torch.uint8)
    missing = torch.zeros(batch, S, S, dtype=torch.bool)
    missing[:, S // 4: 3 * S // 4, S // 4: 3 * S // 4] = True  # a central hole, 25 % of the pixels
    gens = [torch.Generator().manual_seed(i) for i in range(batch)]
    inp(images[:2], missing[:2], gens[:2])  # warm-up
    inp.transformer_passes = 0
    start = time.perf_counter()
    inp(images, missing, gens)
    seconds = time.perf_counter() - start
    # transformer-only time, for its MFU
    ids = torch.randint(0, cfg.tokenizer.codebook_size, (batch, cfg.grid * cfg.grid))
    with torch.no_grad():
        tr(ids)
        t0 = time.perf_counter()
        for _ in range(3):
            tr(ids)
        tr_seconds = (time.perf_counter() - t0) / 3
    flops = tr.flops_per_token(training=False) * batch * cfg.grid * cfg.grid
    return {"config": name, "batch": batch, "T": T, "t": t, "seconds": seconds, "images_per_second": batch / seconds,
            "transformer_passes": inp.transformer_passes, "transformer_pass_seconds": tr_seconds,
            "transformer_achieved_flops": flops / tr_seconds,
            "speedup_vs_reference_loop": batch / seconds / REFERENCE_IMAGES_PER_SECOND}


if __name__ == "__main__":
    peak = matmul_peak()
    rows = [bench("cats64", 32, 12, 8), bench("cats64", 32, 8, 8), bench("lab", 16, 12, 8), bench("lab", 16, 8, 8)]
    for r in rows:
        r["transformer_mfu"] = r["transformer_achieved_flops"] / peak
    emit({"benchmark": "inpaint", **machine(), "matmul_peak_flops": peak, "results": rows,
          "targets": {"lab_speedup_vs_reference_loop": 2.0, "lab_transformer_mfu": 0.6}})
