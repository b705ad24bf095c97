import numpy as np
import pytest
import torch
from conftest import make_images, make_masks
from PIL import Image

from maskgit_cli import data, tokens
from maskgit_cli.config import DataConfig
from maskgit_cli.errors import DataError
from maskgit_cli.pairing import pair_masks


def test_format_is_detected_from_bytes_not_the_name(tmp_path):
    # the lab's ".png" files are JPEG bytes
    make_images(tmp_path, 2, fmt="JPEG")
    x, names = data.load_folder(tmp_path, 16)
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.uint8 and names == ["000.png", "001.png"]


def test_files_are_sorted_and_converted_to_rgb(tmp_path):
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "b.png")  # grayscale
    Image.fromarray(np.zeros((16, 16, 4), np.uint8)).save(tmp_path / "a.png")  # RGBA
    x, names = data.load_folder(tmp_path, 16)
    assert names == ["a.png", "b.png"] and x.shape == (2, 3, 16, 16)


def test_folder_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        data.list_images(tmp_path / "nope")
    with pytest.raises(DataError, match="no images"):
        data.list_images(tmp_path)
    make_images(tmp_path, 1)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="notes.txt: not an image"):
        data.list_images(tmp_path)
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png: cannot read"):
        data.load_folder(tmp_path, 16)


def test_wrong_size_needs_resize(tmp_path):
    make_images(tmp_path, 1, size=20)
    with pytest.raises(DataError, match="20x20, expected 16x16.*--resize"):
        data.load_folder(tmp_path, 16)
    x, _ = data.load_folder(tmp_path, 16, resize=True)
    assert x.shape == (1, 3, 16, 16)


def test_normalize_round_trip():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    for cfg in (DataConfig(), DataConfig(mean=(0.48, 0.43, 0.38), std=(0.26, 0.25, 0.25))):
        y = data.normalize(x, cfg)
        assert torch.equal(data.to_uint8(data.denormalize(y, cfg)), x)
    assert data.normalize(
        torch.tensor([[[[0]], [[255]], [[0]]]], dtype=torch.uint8), DataConfig()
    ).flatten().tolist() == [-1, 1, -1]


def test_token_mask_rules():
    missing = torch.zeros(1, 8, 8, dtype=torch.bool)
    missing[0, 0, 0] = True  # one pixel in token (0, 0)
    missing[0, 4:8, 4:8] = True  # all of token (1, 1)
    missing[0, 0:3, 4:8] = True  # 12 of 16 pixels of token (0, 1)
    assert data.token_mask(missing, 2, "any")[0].tolist() == [[True, True], [False, True]]
    assert data.token_mask(missing, 2, "all")[0].tolist() == [[False, False], [False, True]]
    assert data.token_mask(missing, 2, "majority")[0].tolist() == [[False, True], [False, True]]
    one = torch.zeros(1, 16, 16, dtype=torch.bool)
    one[0, 8, 8] = True
    assert data.token_mask(one, 4, "any", dilate=1).sum() == 9


def test_masks_zero_means_missing(tmp_path):
    make_masks(tmp_path, 1)
    m = data.read_mask(tmp_path / "000.png", 16)
    raw = np.asarray(Image.open(tmp_path / "000.png"))
    assert torch.equal(m, torch.from_numpy(raw == 0))
    assert torch.equal(data.read_mask(tmp_path / "000.png", 16, "white"), ~m)


def test_pairing_by_name_and_by_lab_number(tmp_path):
    make_images(tmp_path / "img", 3, prefix="image_")
    make_masks(tmp_path / "mask", 3, prefix="mask_")
    pairs = pair_masks(tmp_path / "img", tmp_path / "mask").pairs
    assert [(a.name, b.name) for a, b in pairs][1] == ("image_001.png", "mask_001.png")
    (tmp_path / "mask" / "mask_002.png").unlink()
    with pytest.raises(DataError, match="no mask .* for: image_002.png"):
        pair_masks(tmp_path / "img", tmp_path / "mask")


def _touch(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.new("L", (4, 4)).save(folder / n, format="PNG")


@pytest.mark.parametrize(
    "images,masks,expect",
    [
        # digits as written first: img_1 <-> mask_1 and img_01 <-> mask_01, never both on one mask
        (
            ["img_1.png", "img_01.png"],
            ["mask_1.png", "mask_01.png"],
            {"img_1.png": "mask_1.png", "img_01.png": "mask_01.png"},
        ),
        # names without image suffixes: cat.jpg.png <-> cat.jpg, cat.png <-> cat.png
        (
            ["cat.png", "cat.jpg.png"],
            ["cat.png", "cat.jpg"],
            {"cat.png": "cat.png", "cat.jpg.png": "cat.jpg"},
        ),
        # the lab: different zero padding still pairs by number when it is unique on both sides
        (
            ["image_7.png", "image_12.png"],
            ["mask_007.png", "mask_012.png"],
            {"image_7.png": "mask_007.png", "image_12.png": "mask_012.png"},
        ),
        (
            ["000.png", "001.png"],
            ["000.jpg", "001.jpg", "002.jpg"],
            {"000.png": "000.jpg", "001.png": "001.jpg"},
        ),
    ],
)
def test_pairing_rules(tmp_path, images, masks, expect):
    _touch(tmp_path / "i", images)
    _touch(tmp_path / "m", masks)
    pairing = pair_masks(tmp_path / "i", tmp_path / "m")
    assert {a.name: b.name for a, b in pairing.pairs} == expect
    assert sorted(p.name for p in pairing.unused) == sorted(set(masks) - set(expect.values()))


def test_pairing_refuses_to_share_or_guess(tmp_path):
    _touch(tmp_path / "i", ["img_1.png", "img_01.png"])
    _touch(
        tmp_path / "m", ["mask_1.png"]
    )  # img_01 has no mask of its own: an error, not mask_1 twice
    with pytest.raises(DataError, match="no mask .* for: img_01.png"):
        pair_masks(tmp_path / "i", tmp_path / "m")
    _touch(tmp_path / "i2", ["a_1.png", "b_1.png"])
    _touch(tmp_path / "m2", ["m_1.png", "n_1.png"])
    with pytest.raises(
        DataError,
        match="ambiguous pairing of images and masks .*a_1.png, b_1.png, m_1.png, n_1.png",
    ):
        pair_masks(tmp_path / "i2", tmp_path / "m2")


def test_token_file_round_trip_and_errors(tmp_path):
    ids = torch.randint(0, 1024, (3, 4, 4))
    tf = tokens.TokenFile(ids=ids, files=["a", "b", "c"], tokenizer_id="abc", codebook_size=1024)
    tokens.save_tokens(tmp_path / "t.npz", tf)
    back = tokens.load_tokens(tmp_path / "t.npz")
    assert (
        torch.equal(back.ids, ids) and back.files == ["a", "b", "c"] and back.tokenizer_id == "abc"
    )
    assert np.load(tmp_path / "t.npz")["ids"].dtype == np.uint16
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="corrupt token file"):
        tokens.load_tokens(tmp_path / "bad.npz")
    with pytest.raises(DataError, match="not found"):
        tokens.load_tokens(tmp_path / "none.npz")
    np.savez(
        tmp_path / "empty.npz",
        ids=np.zeros((0, 4, 4), np.uint16),
        files=np.array([]),
        tokenizer_id=np.array("x"),
        grid=np.array(4),
        codebook_size=np.array(8),
    )
    with pytest.raises(DataError, match="no token grids"):
        tokens.load_tokens(tmp_path / "empty.npz")


def test_region_masks_cover_a_sensible_fraction():
    m = data.random_region_masks(64, 64, torch.Generator().manual_seed(0))
    frac = m.float().mean((1, 2))
    assert (frac > 0.03).all() and 0.15 < frac.mean() < 0.35  # like the test split (mean 25 %)
