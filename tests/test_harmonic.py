"""The harmonic (Laplace) fill: known answers on tiny images."""

import numpy as np
import torch
from conftest import invoke_json

from maskgit_cli import harmonic
from maskgit_cli.harmonic import fill_batch, harmonic_fill


def _ramp(h=12, w=16):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x / w, y / h, 0.3 + 0.02 * x + 0.01 * y]).astype(np.float64)


def test_a_linear_image_is_filled_exactly():
    """Linear functions are harmonic: a hole inside a ramp comes back exactly."""
    img = _ramp()
    missing = np.zeros((12, 16), bool)
    missing[3:9, 4:11] = True
    out = harmonic_fill(np.where(missing, 0.5, img), missing)
    assert np.abs(out - img).max() < 1e-9


def test_one_missing_pixel_is_the_mean_of_its_neighbours_and_known_pixels_stay():
    rng = np.random.default_rng(0)
    img = rng.random((3, 8, 8))
    missing = np.zeros((8, 8), bool)
    missing[4, 5] = True
    out = harmonic_fill(img, missing)
    expect = (img[:, 3, 5] + img[:, 5, 5] + img[:, 4, 4] + img[:, 4, 6]) / 4
    assert np.allclose(out[:, 4, 5], expect)
    assert np.array_equal(out[:, ~missing], img[:, ~missing])


def test_maximum_principle_and_degenerate_holes():
    rng = np.random.default_rng(1)
    img = rng.random((3, 16, 16))
    missing = rng.random((16, 16)) < 0.6
    out = harmonic_fill(img, missing)
    for c in range(3):  # the fill never leaves the range of the known values
        known = img[c][~missing]
        assert (
            known.min() - 1e-9 <= out[c][missing].min()
            and out[c][missing].max() <= known.max() + 1e-9
        )
    assert np.all(harmonic_fill(img, np.ones((16, 16), bool)) == 0.5)  # nothing known: gray
    assert np.array_equal(harmonic_fill(img, np.zeros((16, 16), bool)), img)


def test_fill_batch_takes_uint8_images():
    import torch

    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    missing = torch.zeros(2, 8, 8, dtype=torch.bool)
    missing[:, 2:5, 2:5] = True
    out = fill_batch(x, missing)
    assert out.shape == (2, 3, 8, 8) and out.dtype == torch.float32
    assert torch.equal((out * 255).round().to(torch.uint8)[:, :, ~missing[0]], x[:, :, ~missing[0]])


def test_the_batched_grid_solve_equals_the_sparse_one():
    import torch

    from maskgit_cli.harmonic import harmonic_grid

    g = torch.Generator().manual_seed(0)
    values = torch.rand(3, 3, 16, 16, generator=g)
    unknown = torch.rand(3, 16, 16, generator=g) < 0.4
    unknown[2] = True  # nothing known: the fill value
    out = harmonic_grid(values, unknown, fill=0.25)
    for b in range(2):
        assert (
            np.abs(out[b].numpy() - harmonic_fill(values[b].numpy(), unknown[b].numpy())).max()
            < 1e-5
        )
    assert torch.equal(out[0][:, ~unknown[0]], values[0][:, ~unknown[0]])
    assert torch.allclose(out[2], torch.full_like(out[2], 0.25), atol=1e-5)


def test_poisson_blend_removes_a_constant_colour_error_exactly():
    """Seamless cloning keeps the fill's gradients and meets the known pixels at the hole's edge:
    a fill that is the truth plus a constant offset comes out as the truth."""
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 3, 16, 16, generator=g) * 0.6 + 0.2
    truth_u8 = (truth * 255).round().to(torch.uint8)
    missing = torch.zeros(2, 16, 16, dtype=torch.bool)
    missing[0, 4:11, 3:9] = True
    missing[1, 0:6, 10:16] = True  # touching the image border (no flux there)
    generated = truth_u8.float() / 255 + torch.tensor([0.1, -0.05, 0.08]).view(1, 3, 1, 1)
    out = harmonic.poisson_blend(generated, truth_u8.masked_fill(missing.unsqueeze(1), 0), missing)
    assert torch.allclose(out, truth_u8.float() / 255, atol=1e-5)
    # a fill that already continues the known pixels is left as it is; outside the hole nothing
    # moves
    same = harmonic.poisson_blend(truth_u8.float() / 255, truth_u8, missing)
    assert torch.allclose(same, truth_u8.float() / 255, atol=1e-6)


def test_poisson_blend_cli(runner, tiny_run, tiny_data, tmp_path):
    args = [
        "inpaint",
        str(tiny_data["masked"]),
        "--masks",
        str(tiny_data["masks"]),
        "--model",
        str(tiny_run),
        "--ground-truth",
        str(tiny_data["test"]),
    ]
    plain = invoke_json(runner, [*args, "--out", str(tmp_path / "a")])
    blended = invoke_json(runner, [*args, "--out", str(tmp_path / "b"), "--blend", "poisson"])
    assert blended["settings"]["blend"] == "poisson" and plain["settings"]["blend"] == "none"
    assert blended["metrics"]["psnr"] != plain["metrics"]["psnr"]
    err = invoke_json(
        runner,
        [*args, "--out", str(tmp_path / "c"), "--blend", "poisson", "--no-paste-back"],
        code=1,
    )
    assert "--blend poisson blends into the known pixels pasted back" in err["error"]
