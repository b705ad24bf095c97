"""Training: one loop (`loop.py`) that every stage plugs into, and the stages.

    STAGES  name -> where its Stage subclass lives, and what it trains (for --help)

The CLI's choices, the pipeline and resume checks all read this registry. Adding a stage means
one file with a Stage subclass and one line here. Importing this package does not import torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class StageEntry:
    module: str  # maskgit_cli.train.<module>
    cls: str
    summary: str
    shows: tuple[str, ...]  # the logged figures a progress line shows


STAGES: dict[str, StageEntry] = {
    "tokenizer": StageEntry(
        "tokenizer",
        "TokenizerStage",
        "stage 1: the VQGAN tokenizer, on images",
        ("loss", "psnr", "usage", "images_per_second"),
    ),
    "decoder": StageEntry(
        "decoder",
        "DecoderStage",
        "stage 1b: fine-tune RUN's tokenizer decoder against a patch GAN, tokens unchanged",
        ("loss", "psnr", "gan_weight", "images_per_second"),
    ),
    "transformer": StageEntry(
        "transformer",
        "TransformerStage",
        "stage 2: the MVTM transformer, on RUN's tokenizer's tokens",
        ("loss", "lr", "tokens_per_second"),
    ),
    "critic": StageEntry(
        "critic",
        "CriticStage",
        "stage 2b: a Token-Critic for RUN's transformer (decode with --remask critic)",
        ("loss", "lr", "tokens_per_second"),
    ),
}


def stage_class(name: str):
    """The Stage subclass registered under `name`."""
    entry = STAGES[name]
    return getattr(importlib.import_module(f"maskgit_cli.train.{entry.module}"), entry.cls)
