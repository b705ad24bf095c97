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
    A = sp.csr_matrix((np.concatenate(vals + [degree]),
                       (np.concatenate(rows + [np.arange(hole.size)]), np.concatenate(cols + [np.arange(hole.size)]))),
                      shape=(hole.size, hole.size))
    # Components of the hole with no known neighbour make A singular; pin them to gray by a tiny
    # pull towards 0.5 (it changes a well-posed solution by < 1e-6).
    eps = 1e-9
    solution = spla.spsolve((A + eps * sp.identity(hole.size, format="csr")).tocsc(), rhs + eps * 0.5)
    flat[:, hole] = np.asarray(solution).reshape(hole.size, C).T
    return out


def fill_batch(masked_u8: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W), missing (B, H, W) bool -> float (B, 3, H, W) in [0, 1]."""
    x = masked_u8.float().numpy() / 255.0
    m = missing.numpy()
    return torch.from_numpy(np.stack([harmonic_fill(x[i], m[i]) for i in range(len(x))])).float().clamp(0, 1)


# --------------------------------------------------------------- token resolution (the hint)


def token_colors(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Mean colour of each token's patch: images (B, C, H, W) -> (B, C, grid, grid)."""
    return torch.nn.functional.adaptive_avg_pool2d(x.float(), grid)


def _grid_laplacian(h: int, w: int, device) -> torch.Tensor:
    """(h*w, h*w) graph Laplacian of the 4-neighbour grid, no flux across the border."""
    idx = torch.arange(h * w, device=device).view(h, w)
    L = torch.zeros(h * w, h * w, device=device, dtype=torch.float64)
    for a, b in ((idx[:, :-1], idx[:, 1:]), (idx[:-1, :], idx[1:, :])):
        a, b = a.flatten(), b.flatten()
        L[a, b] = -1.0
        L[b, a] = -1.0
    L -= torch.diag(L.sum(1))
    return L


def harmonic_grid(values: torch.Tensor, unknown: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Harmonic fill on a small grid, batched: values (B, C, h, w), unknown (B, h, w) bool ->
    (B, C, h, w) with every unknown cell the mean of its neighbours and known cells unchanged.
    One dense solve per batch (h*w unknowns at most: 256 for a 16x16 token grid). A region with no
    known cell (all unknown) settles at `fill`."""
    B, C, h, w = values.shape
    n = h * w
    u = unknown.reshape(B, n).to(values.device)
    L = _grid_laplacian(h, w, values.device)  # float64: the regularizer below is far below float32's eps
    eye = torch.eye(n, device=values.device, dtype=torch.float64)
    # Unknown cells: deg_i x_i - sum of unknown neighbours = sum of known neighbours' values (+ a
    # tiny pull to `fill`, which only decides regions with nothing known around them). Known cells
    # are decoupled (identity rows and columns), so the matrix is symmetric positive definite and
    # Cholesky needs no pivoting (batched LU with row swaps fails in oneMKL after set_num_threads).
    both = u.unsqueeze(-1) & u.unsqueeze(-2)
    A = torch.where(both, L + 1e-6 * eye, torch.zeros_like(L)) + torch.where(u.unsqueeze(-1), 0.0, 1.0) * eye
    v = values.reshape(B, C, n).transpose(1, 2).double()  # (B, n, C)
    known_v = torch.where(u.unsqueeze(-1), torch.zeros_like(v), v)
    rhs = torch.where(u.unsqueeze(-1), -(L @ known_v) + 1e-6 * fill, v)
    x = torch.cholesky_solve(rhs, torch.linalg.cholesky(A))
    return x.transpose(1, 2).reshape(B, C, h, w).to(values.dtype)
