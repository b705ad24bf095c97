"""The Python API (maskgit_cli.api, re-exported by the package): one test per function."""

import numpy as np
import pytest
import torch
from conftest import TinyFeatures
from PIL import Image

import maskgit_cli as mg
from maskgit_cli import api
from maskgit_cli.errors import DataError


def test_load_model_takes_a_run_folder_or_a_bundled_name(tiny_run):
    m = mg.load_model(tiny_run, device="cpu", precision="fp32")
    assert (
        m.config.data.image_size == 16 and m.transformer is not None and len(m.tokenizer_id) == 16
    )
    bundled = mg.load_model("cats64", device="cpu", precision="fp32")
    assert bundled.config.data.image_size == 64 and api.model_path(None) == api.model_path("cats64")
    with pytest.raises(Exception, match="not found"):
        mg.load_model(tiny_run / "nope")


def test_model_inpaint_returns_what_it_was_given_with_known_pixels_kept(tiny_run, tiny_data):
    m = mg.load_model(tiny_run, device="cpu", precision="fp32")
    path = sorted(tiny_data["masked"].iterdir())[0]
    photo = Image.open(path).convert("RGB").resize((24, 20))
    hole = np.full((20, 24), 255, np.uint8)
    hole[5:12, 6:14] = 0
    out = m.inpaint(photo, Image.fromarray(hole), total_iter=2)
    assert isinstance(out, Image.Image) and out.size == (24, 20)
    known = hole >= 128
    assert (np.asarray(out)[known] == np.asarray(photo)[known]).all()
    batch = torch.from_numpy(np.stack([np.asarray(photo)] * 2)).permute(0, 3, 1, 2)
    missing = torch.from_numpy(~known).expand(2, -1, -1)
    filled = m.inpaint(batch, missing, total_iter=2)
    assert (
        isinstance(filled, list)
        and filled[0].shape == (3, 20, 24)
        and filled[0].dtype == torch.uint8
    )
    assert torch.equal(
        filled[0], m.inpaint(batch[0], missing[0], total_iter=2)
    )  # batch = one by one
    array = m.inpaint(np.asarray(photo), hole, total_iter=2)
    assert isinstance(array, np.ndarray) and array.shape == (20, 24, 3)
    with pytest.raises(DataError, match="2 image"):
        m.inpaint(batch, missing[:1])


def test_inpaint_in_one_call(tiny_run):
    img = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    hole = torch.zeros(16, 16, dtype=torch.bool)
    hole[4:8, 4:8] = True
    out = mg.fill(img, hole, model=tiny_run, device="cpu", precision="fp32", total_iter=2)
    assert torch.equal(out[:, ~hole], img[:, ~hole])


def test_fid_of_tensors_folders_and_pil_images(tiny_data, monkeypatch):
    from maskgit_cli import fid_weights

    monkeypatch.setattr(fid_weights, "load_inception", lambda *a, **k: TinyFeatures(8))
    a = torch.rand(20, 3, 16, 16)
    same = mg.fid_score(a, a, dims=8)
    assert same.fid == pytest.approx(0.0, abs=1e-6) and same.count_a == 20
    folder = mg.fid_score(tiny_data["test"], tiny_data["masked"], dims=8)
    pil = mg.fid_score(
        [Image.open(p) for p in sorted(tiny_data["test"].iterdir())],
        [Image.open(p) for p in sorted(tiny_data["masked"].iterdir())],
        dims=8,
    )
    assert folder.fid > 0 and pil.fid == pytest.approx(folder.fid, rel=1e-6)


def test_package_exports_never_hide_a_module():
    """`from maskgit_cli import fid` must give the module in a fresh interpreter, not an export."""
    import subprocess
    import sys

    code = (
        "import maskgit_cli as mg\n"
        "from maskgit_cli import fid\n"
        "assert hasattr(fid, 'frechet_distance'), fid\n"
        "assert callable(mg.fid_score) and callable(mg.load_model)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    import pkgutil

    modules = {m.name for m in pkgutil.iter_modules(mg.__path__)}
    assert not modules & set(mg.__all__)
