"""The Python API: the same core the `maskgit` commands use, for scripts and notebooks.

    import maskgit_cli as mg

    model = mg.load_model()                    # the bundled cats64 model; or a run folder
    filled = model.inpaint(photo, hole)        # PIL images or uint8 tensors, any size
    result = mg.fid_score("out/", "test/images")     # folders, .npz statistics, or image tensors
    print(result.fid, result.kid)

Masks follow the command line's convention: 0 (black) = missing, or `mask_missing="white"`; a
bool tensor is True where the pixel is missing. Known pixels come back bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskgit_cli import checkpoint, data, runtime
from maskgit_cli import precision as precision_mod
from maskgit_cli.config import Config
from maskgit_cli.errors import DataError

ASSETS = Path(__file__).parent / "assets"
BUNDLED = ("cats64",)  # models shipped in the package, by name


def model_path(model: str | Path | None) -> Path:
    """A run folder (or checkpoint) by path, or a bundled model by name (None = cats64)."""
    if model is None:
        model = BUNDLED[0]
    p = Path(model)
    if str(model) in BUNDLED and not p.exists():
        p = ASSETS / str(model)
        if not (p / checkpoint.TRANSFORMER).is_file():
            raise DataError(
                f"the bundled model '{model}' is not in this install; pass a run folder"
            )
    return p


def bundled(model: str | Path | None) -> bool:
    return model is None or (str(model) in BUNDLED and not Path(model).exists())


@dataclass
class Model:
    """A loaded inpainting model: tokenizer, transformer (None when only the oracle fill needs a
    tokenizer) and their config, on a device, in a precision."""

    tokenizer: torch.nn.Module
    transformer: torch.nn.Module | None
    config: Config
    source: str
    tokenizer_id: str
    transformer_id: str | None  # hashes of the weights as loaded (before a bf16 cast)
    device: torch.device
    precision: precision_mod.Precision
    folder: Path | None = None  # where its files are (the Token-Critic is read from there)
    _critic: torch.nn.Module | None = None

    def critic(self) -> torch.nn.Module | None:
        """The transformer's Token-Critic (FOLDER/critic.pt), loaded on first use; None if the
        model has none."""
        if self._critic is None and self.folder is not None and self.transformer_id:
            self._critic = checkpoint.load_critic(
                self.folder, self.tokenizer_id, self.transformer_id, self.device
            )
        return self._critic

    def inpainter(self, settings: Any = None):
        """An Inpainter with the model's own decode defaults, `settings` (a dict, None = the
        model's value) on top."""
        from maskgit_cli.inpaint import Inpainter, InpaintSettings

        s = InpaintSettings.resolve(self.config.decode, settings)
        critic = self.critic() if s.fill == "maskgit" and s.remask == "critic" else None
        return Inpainter(
            self.tokenizer,
            self.transformer,
            self.config,
            s,
            self.device,
            self.precision,
            critic=critic,
        )

    def inpaint(
        self,
        images,
        masks,
        *,
        seed: int = 0,
        mask_missing: str = "black",
        fit: str = "pad",
        **settings,
    ):
        """Fill the holes of one image or a list (PIL images, uint8 (3, H, W) / (B, 3, H, W)
        tensors, or HxWx3 uint8 arrays), any size; returns the same kind. `settings`: decode
        options (schedule, total_iter, top_p, blend, ...), None = the model's own."""
        from maskgit_cli.photos import fill

        images_t, single, kind = _as_images(images)
        masks_t, _, _ = _as_masks(masks, mask_missing, len(images_t))
        for i, (x, m) in enumerate(zip(images_t, masks_t, strict=True)):
            if x.shape[1:] != m.shape:
                h, w = x.shape[1:]
                raise DataError(f"mask {i} is {m.shape[1]}x{m.shape[0]} but its image is {w}x{h}")
        runtime.check_seed(seed)
        out = fill(self.inpainter(settings), images_t, masks_t, seed=seed, fit_mode=fit).images
        return _like(out, single, kind)


def load_model(
    model: str | Path | None = None, *, device: str = "auto", precision: str = "auto"
) -> Model:
    """A run folder (tokenizer.pt + transformer.pt), an exported model, or a bundled model by
    name (None = cats64), loaded for inference on `device` in `precision` (precision.py)."""
    dev = runtime.resolve_device(device)
    prec = precision_mod.resolve(precision, dev)
    path = model_path(model)
    tokenizer, transformer, cfg = checkpoint.load_transformer(path, dev)
    tok_id = tokenizer.model_id
    source = str(model) if model is not None else BUNDLED[0]
    tr_id = checkpoint.model_id(transformer.state_dict())
    return Model(
        prec.for_inference(tokenizer),
        prec.for_inference(transformer),
        cfg,
        source,
        tok_id,
        tr_id,
        dev,
        prec,
        folder=path if path.is_dir() else path.parent,
    )


def load_tokenizer_only(
    model: str | Path, *, device: str = "auto", precision: str = "auto"
) -> Model:
    """A run folder with a tokenizer and no transformer (enough for the oracle fill)."""
    dev = runtime.resolve_device(device)
    prec = precision_mod.resolve(precision, dev)
    p = Path(model)
    tokenizer, cfg, tok_id = checkpoint.load_tokenizer(
        p / checkpoint.TOKENIZER if p.is_dir() else p, device=dev
    )
    return Model(prec.for_inference(tokenizer), None, cfg, str(model), tok_id, None, dev, prec)


def fill(
    images,
    masks,
    *,
    model: str | Path | None = None,
    seed: int = 0,
    mask_missing: str = "black",
    device: str = "auto",
    precision: str = "auto",
    **settings,
):
    """load_model(model).inpaint(images, masks, ...) in one call."""
    return load_model(model, device=device, precision=precision).inpaint(
        images, masks, seed=seed, mask_missing=mask_missing, **settings
    )


def fid_score(
    a,
    b,
    *,
    dims: int = 2048,
    inception_weights: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 50,
):
    """FID and KID (pytorch-fid's convention) between two image sets: folders, .npz statistics,
    float tensors (N, 3, H, W) in [0, 1] or uint8, or lists of PIL images. -> fid.FidResult."""
    import time

    from maskgit_cli import fid as fid_mod
    from maskgit_cli.fid_weights import load_inception

    dev = runtime.resolve_device(device)
    cache: dict[str, Any] = {}

    def extractor():
        if "m" not in cache:
            cache["m"] = load_inception(dims, inception_weights, dev)
        return cache["m"]

    def stats(x):
        if isinstance(x, (str, Path)):
            return fid_mod.statistics(x, extractor, batch_size, dev)
        images = _as_images(x)[0]
        floats = [t.float() / 255 for t in images]
        return fid_mod.Stats.of(fid_mod.features(floats, extractor(), batch_size, dev))

    t0 = time.time()
    return fid_mod.compare(stats(a), stats(b), dims, time.time() - t0)


# ------------------------------------------------------------------------- images in, out


def _as_images(x) -> tuple[list[torch.Tensor], bool, str]:
    """-> (uint8 (3, H, W) tensors, was it one image, 'pil' | 'tensor' | 'array')."""
    from PIL import Image

    if isinstance(x, Image.Image):
        return [_pil_rgb(x)], True, "pil"
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.array(x, copy=True)).permute(
            *((2, 0, 1) if x.ndim == 3 else (0, 3, 1, 2))
        )
        out, single, _ = _as_images(x)
        return out, single, "array"
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point:
            x = data.to_uint8(x.clamp(0, 1))
        if x.dim() == 3:
            return [x.cpu()], True, "tensor"
        if x.dim() == 4:
            return list(x.cpu()), False, "tensor"
        raise DataError(f"an image tensor is (3, H, W) or (B, 3, H, W), got {tuple(x.shape)}")
    if isinstance(x, (list, tuple)):
        items = [_as_images(i) for i in x]
        return [i[0][0] for i in items], False, items[0][2] if items else "tensor"
    raise DataError(f"images must be PIL images, uint8 tensors or arrays, got {type(x).__name__}")


def _pil_rgb(img) -> torch.Tensor:
    from PIL import ImageOps

    arr = np.array(ImageOps.exif_transpose(img).convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _as_masks(x, mask_missing: str, n: int) -> tuple[list[torch.Tensor], bool, str]:
    """One mask per image -> bool (H, W) tensors, True = missing. A bool tensor is taken as it
    is; a PIL image, array or numeric tensor reads like a mask file (data.holes)."""
    from PIL import Image

    if isinstance(x, (list, tuple)):
        masks = [_as_masks(m, mask_missing, 1)[0][0] for m in x]
    elif isinstance(x, torch.Tensor) and x.dtype == torch.bool:
        masks = [x.cpu()] if x.dim() == 2 else list(x.cpu())
    elif isinstance(x, Image.Image):
        from PIL import ImageOps

        masks = [data.holes(data.mask_plane(ImageOps.exif_transpose(x)), mask_missing)]
    else:
        arr = np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x)
        planes = [arr] if arr.ndim == 2 else list(arr)
        masks = [data.holes(p, mask_missing, f"mask {i}") for i, p in enumerate(planes)]
    if len(masks) != n:
        raise DataError(f"{n} image(s) but {len(masks)} mask(s); give one mask per image")
    return masks, n == 1, ""


def _like(images: list[torch.Tensor], single: bool, kind: str):
    from PIL import Image

    if kind == "pil":
        out = [Image.fromarray(t.permute(1, 2, 0).numpy()) for t in images]
    elif kind == "array":
        out = [t.permute(1, 2, 0).numpy() for t in images]
    else:
        out = images
    return out[0] if single else out
