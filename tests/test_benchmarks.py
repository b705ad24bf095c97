"""The benchmark scripts still run against the current models (the timing itself is never
asserted: speed targets live in benchmarks/, not in tests). cats64 is the config with the colour
hint, which a benchmark that builds its own inputs must pass like training and decoding do."""

from __future__ import annotations

import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.mark.parametrize("name", ["tiny", "cats64"])
def test_benchmarks_run_on_each_config(name):
    import bench_inpaint
    import bench_tokenizer
    import bench_transformer
    from common import precisions

    precs = precisions("fp32,bf16")  # bf16 only where this CPU has it
    for tok, tr, inp in zip(
        bench_tokenizer.bench(name, 2, precs, rounds=1),
        bench_transformer.bench(name, 2, precs, rounds=1),
        bench_inpaint.bench(name, 2, 2, 2, precs, rounds=1),
        strict=True,
    ):
        assert tok["train_images_per_second"] > 0 and tok["encode_images_per_second"] > 0
        assert tr["tokens_per_second"] > 0 and tr["achieved_flops"] > 0
        assert inp["images_per_second"] > 0 and inp["transformer_achieved_flops"] > 0
        assert tok["precision"] == tr["precision"] == inp["precision"]
