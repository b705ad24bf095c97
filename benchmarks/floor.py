"""Where a tokenizer's floor comes from, on the validation inpainting set that study.py uses.

    python benchmarks/floor.py --val VAL --stats STATS [--model RUN] [--blend poisson|none]

The oracle fill (the tokenizer's reconstruction of the true image, `--fill oracle`) bounds what
any transformer can reach with that tokenizer. This splits it in two. It prints one JSON row:
- the codebook's use on VAL/images: codes used, perplexity, and how far the encoder's latent sits
  from its code (squared distance over squared norm, mean and median over tokens);
- the oracle fill's FID and masked PSNR / SSIM decoded from the codes (what `--fill oracle`
  gives) and decoded from the encoder's latent before quantization.
If the two oracles are close, quantizing costs this tokenizer little: the detail is lost in what
the encoder keeps and the decoder draws (a tokenizer retrained with more codes may still learn to
keep more). The decoder was trained on codes, so the latent row slightly favours the codes; a
large gap is the codebook's cost.

Runs in fp32 on the CPU. Set up VAL and STATS as in study.py. Learned codebooks only (FSQ has no
latent apart from its grid).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import emit, machine

from maskgit_cli import api, data, metrics, pipeline, vqgan
from maskgit_cli.errors import MaskgitError
from maskgit_cli.train.tokenizer import perplexity


def _batches(val: Path, size: int, batch: int):
    paths = data.list_images(val / "images")
    for i in range(0, len(paths), batch):
        chunk = paths[i : i + batch]
        truth = data.load_images(chunk, size)
        masked = data.load_images([val / "masked" / p.name for p in chunk], size)
        missing = torch.stack([data.read_mask(val / "masks" / p.name, size) for p in chunk])
        yield chunk, truth, masked, missing


@torch.no_grad()
def measure(
    model: str | None, val: Path, stats: Path, blend: str, batch: int = 50, dims: int = 2048
) -> dict:
    m = api.load_tokenizer_only(api.model_path(model), device="cpu", precision="fp32")
    tok, cfg = m.tokenizer, m.config
    if not tok.learned_codebook:
        raise MaskgitError("floor.py measures learned codebooks; this tokenizer uses FSQ")
    inp = m.inpainter({"fill": "oracle", "blend": blend})
    counts = torch.zeros(tok.codebook_size)
    gaps: list[torch.Tensor] = []
    scores: dict[str, dict[str, list[torch.Tensor]]] = {"codes": {}, "latent": {}}
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="floor-") as tmp:
        for chunk, truth, masked, missing in _batches(val, cfg.data.image_size, batch):
            z = tok.encode_latent(data.normalize(truth, cfg.data)).float()
            if tok.codebook.l2_codes:
                z = F.normalize(z, dim=1)
            B, D, h, w = z.shape
            flat = z.permute(0, 2, 3, 1).reshape(-1, D)
            ids = tok.codebook.nearest(flat)
            counts += torch.bincount(ids, minlength=tok.codebook_size).float()
            code = tok.codebook.codes().float()[ids]
            gaps.append((flat - code).pow(2).sum(1) / flat.pow(2).sum(1).clamp_min(1e-12))
            context = (
                vqgan.context_input(data.normalize(masked, cfg.data), missing)
                if tok.context is not None
                else None
            )
            latents = {"codes": tok.codebook.lookup(ids.view(B, h, w)), "latent": z}
            for name, lat in latents.items():
                gen01 = data.denormalize(tok.decode(lat, context).float(), cfg.data)
                out = inp.finish(gen01, masked, missing)
                folder = Path(tmp) / name
                folder.mkdir(exist_ok=True)
                for p, img in zip(chunk, out, strict=True):
                    data.save_png(img, folder / p.name)
                per = metrics.all_metrics(out.float() / 255, truth.float() / 255, missing)
                for k in ("psnr_masked", "ssim_masked"):
                    scores[name].setdefault(k, []).append(per[k])
        row: dict = {}
        for name in scores:
            f = pipeline.fid(Path(tmp) / name, stats, dims=dims, device="cpu")
            row[f"oracle_{name}"] = {
                "fid": f.fid,
                "kid": f.kid,
                **{k: float(torch.cat(v).mean()) for k, v in scores[name].items()},
            }
    gap = torch.cat(gaps)
    return {
        "model": model or api.BUNDLED[0],
        "blend": blend,
        "tokens": int(counts.sum()),
        "codebook_size": tok.codebook_size,
        "codes_used": int((counts > 0).sum()),
        "perplexity": perplexity(counts),
        "latent_gap_mean": float(gap.mean()),
        "latent_gap_median": float(gap.median()),
        **row,
        "seconds": time.time() - t0,
        **machine(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="run directory (default: the bundled model)")
    ap.add_argument("--val", type=Path, required=True, help="folder from `maskgit mask`")
    ap.add_argument("--stats", type=Path, required=True, help="FID statistics of VAL/images")
    ap.add_argument("--blend", default="poisson", choices=("poisson", "none"))
    args = ap.parse_args()
    try:
        emit(measure(args.model, args.val, args.stats, args.blend))
    except MaskgitError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
