"""A bootstrap over images for FID: how far a FID, or a difference of two FIDs, would move had
other images of the same kind been drawn.

Decoding seeds measure only the sampler's noise; with 500 images the choice of images moves a
difference between two models several times more. Here the images are resampled with
replacement, the FID recomputed on each resample, and the standard deviation over resamples
reported as the images' standard error (Efron's bootstrap).

Pairing: when both sets hold the same images (a fill and the truths it was made from, matched by
name), each resample draws the same images on both sides, as a new test set would; otherwise each
set is resampled on its own. Several fills of the same inputs are always resampled together, so a
difference between them keeps only what the images add to it.

Every resampled FID is exact and cheap: with S = W^T W for the centred, scaled features W
(N x d), tr sqrt(S_a S_b) is the sum of the singular values of W_a W_b^T (N_a x N_b), and every
term is a sum over the features' Gram matrices, so when N <= d a resample costs one N x N
eigendecomposition and no d x d matrix is formed. A resample repeats images, which biases its
FID upward (fewer distinct images); the spread, not the level, is what is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskgit_cli.errors import ConfigError, DataError

MAX_RESAMPLES = 10_000


@dataclass
class FidSpread:
    """The images' standard error of one FID, and of its difference from a second fill's."""

    resamples: int
    paired: bool  # the reference was drawn with the same images as the fills
    se: float  # standard deviation of the FID over resamples
    difference_se: float | None = None  # of FID(A) - FID(versus), the same images drawn for both


def check_resamples(n: int, flag: str = "--bootstrap") -> None:
    if not 0 <= n <= MAX_RESAMPLES:
        raise ConfigError(f"{flag} takes 0 (off) to {MAX_RESAMPLES:,} resamples, got {n}")
    if n == 1:
        raise ConfigError(f"{flag} needs at least 2 resamples for a spread (50-200 is usual)")


def fid_of_features(a: np.ndarray, b: np.ndarray) -> float:
    """The Frechet distance between the Gaussians fitted to two feature sets (rows = images)."""
    from maskgit_cli import fid

    if len(a) < 2 or len(b) < 2:
        raise DataError("FID needs at least 2 images per set")
    return fid.distance(fid.Stats.of(a), fid.Stats.of(b))


def align(
    a_names: list[str] | None, b_names: list[str] | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Row orders that put the same image on both sides, or None when the two sets do not hold
    the same images (or a side does not know its images' names)."""
    if not a_names or not b_names or sorted(a_names) != sorted(b_names):
        return None
    if len(set(a_names)) != len(a_names):
        return None
    order_a = np.argsort(np.array(a_names, dtype=object), kind="stable")
    order_b = np.argsort(np.array(b_names, dtype=object), kind="stable")
    return order_a, order_b


def in_order_of(
    feats: np.ndarray, names: list[str] | None, order_names: list[str]
) -> np.ndarray | None:
    """`feats` (one row per image in `names`) re-ordered to follow `order_names`, or None when the
    two do not name the same images."""
    order = align(order_names, names)
    if order is None:
        return None
    return feats[order[1]][np.argsort(order[0])]


def resampled_fids(
    reference: np.ndarray,
    sets: list[np.ndarray],
    resamples: int,
    seed: int = 0,
    paired: bool = True,
) -> np.ndarray:
    """(resamples, len(sets)) FIDs of each set against the reference, every set resampled with
    the same draw. Paired: the reference too, with the same indices (its rows must match the
    sets' rows image for image); unpaired: the reference drawn on its own."""
    if not sets:
        return np.zeros((resamples, 0))
    n, n_ref = len(sets[0]), len(reference)
    if any(len(s) != n for s in sets):
        raise DataError("the sets resampled together must hold the same images")
    if paired and n_ref != n:
        raise DataError(f"a paired bootstrap needs the same images on both sides ({n_ref} vs {n})")
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        draws.append((idx, idx if paired else rng.integers(0, n_ref, n_ref)))
    out = np.empty((resamples, len(sets)))
    if min(n, n_ref) > reference.shape[1]:  # more images than dims: resample the features
        for r, (idx, ridx) in enumerate(draws):
            for j, s in enumerate(sets):
                out[r, j] = fid_of_features(s[idx], reference[ridx])
        return out
    # fewer images than dims: every term of a resample's FID is a sum over the N x N Gram
    # matrices of the features, so each resample costs one N x N singular value decomposition
    ref = np.asarray(reference, np.float64)
    g_rr = ref @ ref.T
    for j, s in enumerate(sets):
        s = np.asarray(s, np.float64)
        g_ss, g_sr = s @ s.T, s @ ref.T
        for r, (idx, ridx) in enumerate(draws):
            out[r, j] = _fid_from_grams(
                g_ss[np.ix_(idx, idx)], g_rr[np.ix_(ridx, ridx)], g_sr[np.ix_(idx, ridx)]
            )
    return out


def _centred(g: np.ndarray) -> np.ndarray:
    """C g C for the centring matrix C = I - 1 1^T / n on each side (g may be rectangular)."""
    return g - g.mean(0, keepdims=True) - g.mean(1, keepdims=True) + g.mean()


def _fid_from_grams(g_aa: np.ndarray, g_bb: np.ndarray, g_ab: np.ndarray) -> float:
    """FID from the Gram matrices of two feature sets A (n_a x d), B (n_b x d): g_aa = A A^T,
    g_bb = B B^T, g_ab = A B^T. |mu_a - mu_b|^2 and the covariances' traces are sums of their
    entries; tr sqrt(S_a S_b) is the nuclear norm of the centred g_ab over
    sqrt((n_a-1)(n_b-1)), from the eigenvalues of its symmetric square (an SVD is several times
    slower here)."""
    na, nb = len(g_aa), len(g_bb)
    mean_term = g_aa.mean() + g_bb.mean() - 2 * g_ab.mean()
    tr_a = (np.trace(g_aa) - g_aa.sum() / na) / (na - 1)
    tr_b = (np.trace(g_bb) - g_bb.sum() / nb) / (nb - 1)
    m = _centred(g_ab)
    mm = m @ m.T if na <= nb else m.T @ m  # its eigenvalues are m's squared singular values
    eig = np.linalg.eigvalsh((mm + mm.T) / 2)
    nuclear = np.sqrt(np.clip(eig, 0, None)).sum() / np.sqrt((na - 1) * (nb - 1))
    return max(float(mean_term + tr_a + tr_b - 2 * nuclear), 0.0)


def spread(values: np.ndarray) -> float:
    """The standard deviation over resamples (ddof 1)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def fid_spread(
    a: np.ndarray,
    b: np.ndarray,
    resamples: int,
    seed: int = 0,
    a_names: list[str] | None = None,
    b_names: list[str] | None = None,
    versus: np.ndarray | None = None,
    versus_names: list[str] | None = None,
    labels: tuple[str, str] = ("A", "--versus"),
) -> FidSpread:
    """The images' standard error of FID(a, b), and with `versus` (a second fill of a's images)
    that of FID(a, b) - FID(versus, b). The reference b is drawn with the fills when the names
    say it holds the same images, on its own otherwise."""
    check_resamples(resamples)
    sets, names = [a], a_names
    if versus is not None:
        both = align(a_names, versus_names)
        if both is not None:
            sets, names = [a[both[0]], versus[both[1]]], sorted(a_names)
        elif (a_names and versus_names) or len(a) != len(versus):
            raise DataError(
                f"{labels[1]} holds other images than {labels[0]} ({len(versus)} against "
                f"{len(a)}, or other names): a difference over resampled images needs two fills "
                "of the same images"
            )
        else:  # a side that does not name its images: rows taken in the order they are
            sets = [a, versus]
    order = align(names, b_names)
    if order is not None:
        sets, b = [s[order[0]] for s in sets], b[order[1]]
    fids = resampled_fids(b, sets, resamples, seed, paired=order is not None)
    return FidSpread(
        resamples=resamples,
        paired=order is not None,
        se=spread(fids[:, 0]),
        difference_se=spread(fids[:, 0] - fids[:, 1]) if versus is not None else None,
    )
