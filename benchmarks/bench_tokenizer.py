"""Tokenizer training and encode images/s, cats64, cats64_small and lab, fp32 and bf16 side by side.

The training step is stage 1's (reconstruction + VQ loss, fused AdamW), under the precision's
autocast with fp32 master weights; encoding runs the weights themselves in the precision, as
`maskgit encode` and inpainting do. MFU is not reported: convolution FLOPs are not counted here.
"""

import argparse

import torch
from common import ROOT, emit, interleaved, machine, precisions

from maskgit_cli import config, vqgan
from maskgit_cli.train.loop import adamw


def bench(name: str, batch: int, precs: list, rounds: int = 3) -> list[dict]:
    cfg = config.load(ROOT / "configs" / f"{name}.yaml")
    x = torch.randn(batch, 3, cfg.data.image_size, cfg.data.image_size)
    train, encode, params = {}, {}, 0.0
    for prec in precs:
        torch.manual_seed(0)
        model = vqgan.build(cfg).train()
        opt = adamw(model.parameters(), lr=1e-4)  # the training loop's optimizer
        params = sum(p.numel() for p in model.parameters()) / 1e6

        def train_step(model=model, opt=opt, prec=prec):
            with prec.autocast():
                rec, _ids, vq_loss, _z = model(x)
                loss = (rec.float() - x).abs().mean() + vq_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        frozen = prec.for_inference(vqgan.build(cfg).eval())
        train[prec.name] = train_step
        encode[prec.name] = torch.no_grad()(lambda m=frozen: m.encode(x))
    train_s = interleaved(train, rounds)
    encode_s = interleaved(encode, rounds)
    return [
        {
            "config": name,
            "precision": p.name,
            "params_m": params,
            "batch": batch,
            "train_images_per_second": batch / train_s[p.name],
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
