import dataclasses

import pytest
import torch
from conftest import ROOT

from maskgit_cli import config, transformer


def tiny(norm="pre", head="linear", dropout=0.0):
    cfg = config.load(
        ROOT / "configs" / "tiny.yaml",
        [f"transformer.norm={norm}", f"transformer.head={head}", f"transformer.dropout={dropout}"],
    )
    return transformer.build(cfg.transformer, 4, 32)


@pytest.mark.parametrize("norm,head", [("pre", "linear"), ("post", "tied")])
def test_attention_fast_path_equals_math_path(norm, head):
    torch.manual_seed(0)
    model = tiny(norm, head).eval()
    ids = torch.randint(0, 33, (3, 16))
    fast = model(ids)
    model.set_fast_attention(False)
    slow = model(ids)
    assert (fast - slow).abs().max() < 1e-5


@pytest.mark.parametrize("norm,head", [("pre", "linear"), ("post", "tied")])
def test_logits_cover_the_K_codes_only(norm, head):
    model = tiny(norm, head)
    logits = model(torch.full((2, 16), model.mask_id))
    assert logits.shape == (2, 16, 32) and model.mask_id == 32  # MASK = K is never a class


@pytest.mark.parametrize("norm,head", [("pre", "linear"), ("post", "tied")])
@pytest.mark.parametrize("fast", [True, False])
def test_logits_at_chosen_positions_equal_the_full_pass(norm, head, fast):
    # the last block computes only the wanted rows; the answer must be the full pass's rows
    torch.manual_seed(1)
    model = tiny(norm, head).eval()
    model.set_fast_attention(fast)
    ids = torch.randint(0, 33, (4, 16))
    where = torch.rand(4, 16) < torch.tensor([[0.2], [0.7], [0.0], [1.0]])
    where[0, 3] = True  # sample 0 non-empty, sample 2 empty, sample 3 full
    full = model(ids)
    part = model(ids, where)
    assert part.shape == (int(where.sum()), 32)
    assert (part - full[where]).abs().max() < 1e-5
    assert model(ids, torch.zeros(4, 16, dtype=torch.bool)).shape == (0, 32)


def test_lab_transformer_sizes():
    cfg = config.load(ROOT / "configs" / "lab.yaml")
    t = cfg.transformer
    assert (t.dim, t.layers, t.heads, t.mlp_dim, t.norm, t.head) == (
        768,
        15,
        16,
        1536,
        "post",
        "tied",
    )
    model = transformer.build(t, 16, 1024)
    assert model.blocks[0].attn.qkv.weight.shape == (3 * 768, 768)
    assert model.bias.shape == (256, 1024)
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules())


def test_a_grown_transformer_predicts_what_the_shallow_one_did():
    """transformer.grow: added layers start as the identity, so the deeper model's logits (full
    pass and masked-rows pass) equal the old one's; the old last layer stays last."""
    torch.manual_seed(2)
    old = tiny().eval()
    for p in old.parameters():  # non-zero everywhere, as a trained model is
        p.data.add_(0.05 * torch.randn_like(p))
    cfg = config.load(ROOT / "configs" / "tiny.yaml", ["transformer.layers=4"])
    new = transformer.build(cfg.transformer, 4, 32).eval()
    transformer.grow(old.state_dict(), 2, new)
    ids = torch.randint(0, 33, (3, 16))
    where = torch.rand(3, 16) < 0.5
    assert (new(ids) - old(ids)).abs().max() < 1e-5
    assert (new(ids, where) - old(ids, where)).abs().max() < 1e-5
    assert torch.equal(new.blocks[3].mlp[0].weight, old.blocks[1].mlp[0].weight)
    assert not new.blocks[1].attn.proj.weight.any() and not new.blocks[2].mlp[2].weight.any()
    with pytest.raises(ValueError, match="beyond depth"):
        wider = config.load(ROOT / "configs" / "tiny.yaml", ["transformer.layers=4"])
        wide = transformer.build(dataclasses.replace(wider.transformer, mlp_dim=32), 4, 32)
        transformer.grow(old.state_dict(), 2, wide)
    with pytest.raises(ValueError, match="cannot grow"):
        transformer.grow(old.state_dict(), 2, tiny(norm="post"))
