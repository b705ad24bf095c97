"""Harmonic (Laplace) fill: the baseline any inpainting model must beat, with no learning at all.

Inside the hole each channel solves Laplace's equation, every missing pixel the mean of its 4
neighbours, with the known pixels as boundary values (Dirichlet) and no flux across the image
border (Neumann). This is the smoothest fill consistent with the seam: the posterior mean a
model with no knowledge of cats would give. One sparse solve per image.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch


def harmonic_fill(image01: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """image01 (C, H, W) float, missing (H, W) bool -> (C, H, W): known pixels as given, the hole
    harmonic. A hole region that touches no known pixel (a fully missing image) becomes 0.5."""
    C, H, W = image01.shape
    out = image01.astype(np.float64).copy()
    hole = np.flatnonzero(missing.ravel())
    if hole.size == 0:
        return out
    if hole.size == H * W:
        out[:] = 0.5
        return out
    index = np.full(H * W, -1, dtype=np.int64)
    index[hole] = np.arange(hole.size)
    ys, xs = np.divmod(hole, W)
    flat = out.reshape(C, H * W)
    rows, cols, vals = [], [], []
    degree = np.zeros(hole.size)
    rhs = np.zeros((hole.size, C))
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < H) & (nx >= 0) & (nx < W)  # outside the image: no neighbour
        degree += inside
        src = np.flatnonzero(inside)
        nbr = ny[inside] * W + nx[inside]
        unknown = index[nbr] >= 0
        rows.append(src[unknown])
        cols.append(index[nbr[unknown]])
        vals.append(-np.ones(unknown.sum()))
        np.add.at(rhs, src[~unknown], flat[:, nbr[~unknown]].T)  # known neighbours: boundary values
    A = sp.csr_matrix(
        (
            np.concatenate(vals + [degree]),
            (
                np.concatenate(rows + [np.arange(hole.size)]),
                np.concatenate(cols + [np.arange(hole.size)]),
            ),
        ),
        shape=(hole.size, hole.size),
    )
    # Components of the hole with no known neighbour make A singular; pin them to gray by a tiny
    # pull towards 0.5 (it changes a well-posed solution by < 1e-6).
    eps = 1e-9
    solution = spla.spsolve(
        (A + eps * sp.identity(hole.size, format="csr")).tocsc(), rhs + eps * 0.5
    )
    flat[:, hole] = np.asarray(solution).reshape(hole.size, C).T
    return out


def fill_batch(masked_u8: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W), missing (B, H, W) bool -> float (B, 3, H, W) in [0, 1]."""
    x = masked_u8.float().numpy() / 255.0
    m = missing.numpy()
    return (
        torch.from_numpy(np.stack([harmonic_fill(x[i], m[i]) for i in range(len(x))]))
        .float()
        .clamp(0, 1)
    )


def poisson_blend(
    generated01: torch.Tensor, masked_u8: torch.Tensor, missing: torch.Tensor
) -> torch.Tensor:
    """Seamless cloning (Perez et al. 2003) of a generated fill into its hole: inside the hole the
    result keeps the generated image's gradients, and at the hole's edge it meets the known pixels.
    The solution is generated + the harmonic continuation of (known - generated) from the hole's
    boundary: a constant colour error over the hole is removed exactly, and seams vanish.
    generated01 float (B, 3, H, W) in [0, 1], masked_u8 uint8, missing (B, H, W) bool -> float."""
    gen = generated01.double().numpy()
    diff = masked_u8.double().numpy() / 255.0 - gen
    m = missing.numpy()
    out = gen.copy()
    for i in range(len(gen)):
        if m[i].any() and not m[i].all():  # all missing: no boundary, nothing to match
            out[i] += harmonic_fill(np.where(m[i], 0.0, diff[i]), m[i])
    return torch.from_numpy(out).float().clamp(0, 1)


# --------------------------------------------------------------- token resolution (the hint)


def token_colors(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Mean colour of each token's patch: images (B, C, H, W) -> (B, C, grid, grid)."""
    return torch.nn.functional.adaptive_avg_pool2d(x.float(), grid)


def token_hint(colors: torch.Tensor, unknown: torch.Tensor) -> torch.Tensor:
    """The transformer's colour hint: token colours (B, 3, h, w) with the `unknown` tokens ((B, N)
    or (B, h, w) bool) replaced by the harmonic fill of the known ones -> (B, N, 3). Training and
    decoding both build it here."""
    return harmonic_grid(colors.float(), unknown).flatten(2).transpose(1, 2)


def _neighbour_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of the 4 neighbours of every cell, (B, C, h, w); none beyond the border."""
    p = torch.nn.functional.pad(x, (1, 1, 1, 1))
    return p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]


def harmonic_grid(
    values: torch.Tensor,
    unknown: torch.Tensor,
    fill: float = 0.0,
    tol: float = 1e-6,
    max_iter: int = 1000,
) -> torch.Tensor:
    """Harmonic fill on a small grid, batched: values (B, C, h, w), unknown (B, h, w) bool ->
    (B, C, h, w) with every unknown cell the mean of its neighbours and known cells unchanged.

    On a connected grid every unknown region touches a known cell unless nothing is known, so the
    system deg_i x_i - sum_{unknown j ~ i} x_j = sum_{known j ~ i} v_j is symmetric positive
    definite; conjugate gradients with the stencil as a shifted sum solves all samples at once (a
    16x16 token grid in tens of iterations; batched dense solvers are far slower on the CPU).
    Samples with nothing known are `fill`."""
    B, C, h, w = values.shape
    v = values.double()
    u = unknown.to(values.device).view(B, 1, h, w).expand(B, C, h, w)
    uf = u.double()
    degree = _neighbour_sum(torch.ones(1, 1, h, w, dtype=torch.float64, device=values.device))

    def apply(x: torch.Tensor) -> torch.Tensor:  # the operator on the unknown cells (0 elsewhere)
        return uf * (degree * x - _neighbour_sum(uf * x))

    b = uf * _neighbour_sum((1 - uf) * v)
    x = b / degree  # a start: the mean of known neighbours
    r = b - apply(x)
    p = r.clone()
    rr = (r * r).flatten(1).sum(1)
    stop = tol**2 * (b * b).flatten(1).sum(1).clamp_min(1e-30)
    for _ in range(max_iter):
        active = rr > stop  # a converged sample is frozen: iterating on would drive its squared
        if not bool(active.any()):  # residual into denormal floats, which are very slow on the CPU
            break
        Ap = apply(p)
        alpha = torch.where(active, rr / (p * Ap).flatten(1).sum(1).clamp_min(1e-300), 0.0).view(
            B, 1, 1, 1
        )
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = (r * r).flatten(1).sum(1)
        beta = (rr_new / rr.clamp_min(1e-300)).view(B, 1, 1, 1)
        p = torch.where(active.view(B, 1, 1, 1), r + beta * p, torch.zeros_like(p))
        rr = rr_new
    out = torch.where(u, x, v)
    nothing_known = unknown.view(B, -1).all(1).to(values.device)
    out[nothing_known] = fill
    return out.to(values.dtype)
