"""The MVTM objective (mvtm.py): training masks drawn through gamma, loss on the masked positions
only."""

import pytest
import torch

from maskgit_cli.mvtm import fixed_ratio_mask, masked_loss, mvtm_mask


@pytest.mark.parametrize("mode", ["random", "region", "mixed"])
def test_mvtm_mask_count_matches_gamma(mode):
    from maskgit_cli import schedules

    ids = torch.randint(0, 32, (64, 256))
    g = torch.Generator().manual_seed(0)
    mask = mvtm_mask(ids, "cosine", g, mode, image_size=64)
    assert mask.shape == ids.shape and (mask.sum(1) >= 1).all()
    if mode == "random":
        r = torch.rand(64, generator=torch.Generator().manual_seed(0))
        n = torch.ceil(schedules.gamma("cosine", r).float() * 256).long().clamp(1, 256)
        assert torch.equal(mask.sum(1), n)


def test_loss_only_on_masked_positions():
    torch.manual_seed(0)
    logits = torch.randn(2, 8, 5, requires_grad=True)
    target = torch.randint(0, 5, (2, 8))
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, 1] = mask[1, 5] = True
    loss = masked_loss(logits, target, mask)
    loss.backward()
    grad_rows = logits.grad.abs().sum(-1) > 0
    assert torch.equal(grad_rows, mask)  # unmasked positions get no gradient
    expected = torch.nn.functional.cross_entropy(
        torch.stack([logits[0, 1], logits[1, 5]]), target[mask]
    )
    assert loss.item() == pytest.approx(expected.item())


def test_fixed_ratio_masks_are_exact_and_repeatable():
    a = fixed_ratio_mask(4, 100, 0.25, 7)
    assert (a.sum(1) == 25).all() and torch.equal(a, fixed_ratio_mask(4, 100, 0.25, 7))


def test_the_hint_comes_from_the_hole_a_mask_was_drawn_from():
    """Decoding computes the hint once, from the whole initial hole; region-mode training samples
    (a gamma fraction masked inside a hole) therefore take it from the hole, random ones from the
    mask."""
    from maskgit_cli.mvtm import mvtm_mask

    ids = torch.zeros(16, 256, dtype=torch.long)
    plain = mvtm_mask(ids, "cosine", torch.Generator().manual_seed(3), "region")
    mask, hole = mvtm_mask(
        ids, "cosine", torch.Generator().manual_seed(3), "region", with_hole=True
    )
    assert (
        torch.equal(plain, mask) and not (mask & ~hole).any() and (hole.sum(1) >= mask.sum(1)).all()
    )
    assert (hole.sum(1) > mask.sum(1)).any()
    mask, hole = mvtm_mask(
        ids, "cosine", torch.Generator().manual_seed(3), "random", with_hole=True
    )
    assert torch.equal(mask, hole)
