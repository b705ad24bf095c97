"""Checkpoints: one self-describing dict, written atomically, loaded strictly.

    {kind, version, config, model, model_id, optimizer, step, rng, metrics, ...}

A run directory holds `tokenizer.pt`, `transformer.pt` (+ `transformer_best.pt`), the resolved
`config.yaml` and `metrics_<stage>.jsonl`. A bare state_dict (the course's VQGAN.pt) loads too,
given a config that builds the matching architecture.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
from pathlib import Path
from typing import Any

import torch

from maskgit_cli import config as config_mod
from maskgit_cli.config import Config
from maskgit_cli.errors import CheckpointError
from maskgit_cli.outputs import atomic_write

VERSION = 1
TOKENIZER, TRANSFORMER, CRITIC = "tokenizer.pt", "transformer.pt", "critic.pt"
KINDS = ("tokenizer", "transformer", "critic")


def model_id(state_dict: dict[str, torch.Tensor]) -> str:
    """A short hash of the weights: the tokenizer's identity in token files."""
    h = hashlib.sha1()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(t.float().numpy().tobytes() if t.is_floating_point() else t.numpy().tobytes())
    return h.hexdigest()[:16]


def weights(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights a checkpoint's users load: the EMA average when the run kept one, else the
    trained weights (a resume loads both, each where it belongs)."""
    return ckpt.get("ema") or ckpt["model"]


def tokens_id(ckpt: dict[str, Any]) -> str:
    """The id a tokenizer checkpoint's tokens go by: the stored one (a decoder fine-tune keeps it,
    since the tokens do not change), else the hash of its weights (a bare state_dict)."""
    return ckpt.get("model_id") or model_id(weights(ckpt))


def save(path: Path, ckpt: dict[str, Any]) -> None:
    ckpt = {"version": VERSION, **ckpt}
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(buf.getvalue()))


def refused_pickle(err: Exception) -> bool:
    """torch.load(weights_only=True) refused a file because it names Python objects (classes,
    functions) that unpickling would import and run, not because the bytes are no pickle at all."""
    text = str(err).lower()
    return isinstance(err, pickle.UnpicklingError) and (
        "allowed global" in text or "unsupported global" in text
    )


LFS_POINTER = b"version https://git-lfs"


def unreadable(path: Path, err: Exception, what: str = "PyTorch checkpoint") -> str:
    """Why torch.load could not read `path`, in words a user can act on."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        head = b""
    if head.startswith(LFS_POINTER):
        return (
            f"{path}: a Git LFS pointer, not the file itself; fetch the real file (`git lfs pull`) "
            "or "
            "download it again"
        )
    if refused_pickle(err):
        return (
            f"{path}: not a plain weights file (it holds Python objects that would run code when "
            "unpickled), so it was not loaded"
        )
    if not head:
        return f"{path}: the file is empty; re-create or re-download it"
    if head.startswith(b"PK"):
        return (
            f"{path}: not a readable {what} ({err.__class__.__name__}); it may be truncated, "
            "re-create or "
            "re-download it"
        )
    return f"{path}: not a readable {what} (its bytes are no checkpoint format); check the path"


def check_finite(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Weights with NaN or infinite values (a diverged run, a damaged file) would give black
    fills or crash sampling later: refuse them when they load."""
    for key, t in state.items():
        if (
            isinstance(t, torch.Tensor)
            and t.is_floating_point()
            and not bool(torch.isfinite(t).all())
        ):
            raise CheckpointError(
                f"{path}: weight {key} holds NaN or infinite values (a diverged run or a "
                "damaged file); use an earlier checkpoint"
            )


def load(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Load a checkpoint (or a bare state_dict, returned as kind 'state_dict')."""
    path = Path(path)
    if path.is_dir():
        path = path / {"transformer": TRANSFORMER, "critic": CRITIC}.get(kind or "", TOKENIZER)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read it ({err.strerror})") from None
    except Exception as err:
        raise CheckpointError(unreadable(path, err)) from None
    if isinstance(obj, dict) and "kind" in obj and "model" in obj:
        if obj["kind"] not in KINDS or not isinstance(obj["model"], dict):
            raise CheckpointError(f"{path}: not a maskgit checkpoint (kind {obj['kind']!r})")
        if kind is not None and obj["kind"] != kind:
            raise CheckpointError(f"{path}: is a {obj['kind']} checkpoint, expected a {kind}")
        version = obj.get("version", 0)
        if not isinstance(version, int) or version > VERSION:
            raise CheckpointError(f"{path}: written by a newer maskgit (format {version}); upgrade")
        if obj.get("config") is not None and not isinstance(obj["config"], dict):
            raise CheckpointError(
                f"{path}: its saved config is a {type(obj['config']).__name__}, not a mapping; "
                "the file is damaged"
            )
        obj["path"] = str(path)
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"kind": "state_dict", "model": obj, "config": None, "path": str(path)}
    raise CheckpointError(f"{path}: not a maskgit checkpoint or a state_dict")


def config_of(ckpt: dict[str, Any], fallback: Config | None = None) -> Config:
    """The config a checkpoint was made with; a bare state_dict needs --config."""
    if ckpt.get("config") is not None:
        return config_mod.from_dict(ckpt["config"], f"{ckpt['path']} (saved config)")
    if fallback is None:
        raise CheckpointError(
            f"{ckpt['path']}: a bare state_dict has no config; pass --config "
            "(e.g. configs/lab.yaml for the course's VQGAN.pt)"
        )
    return fallback


SAVED_CONFIG_HINT = "the file does not match its own saved config: it is damaged or was edited"


def load_state(
    model: torch.nn.Module, state: dict[str, torch.Tensor], path: str, hint: str = SAVED_CONFIG_HINT
) -> None:
    """Strict load with a one-line summary of what does not match; `hint` says what to fix.
    Weights with NaN or infinite values are refused."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
        if shapes:
            k = shapes[0]
            parts.append(
                f"{len(shapes)} of another shape (e.g. {k}: {tuple(state[k].shape)} "
                f"vs {tuple(own[k].shape)})"
            )
        raise CheckpointError(
            f"{path}: weights do not fit the configured model: {'; '.join(parts)}; {hint}"
        )
    check_finite(state, path)
    model.load_state_dict(state)


def load_tokenizer(
    path: str | Path, fallback: Config | None = None, device: str | torch.device = "cpu"
):
    """-> (model in eval mode, config, model_id). EMA weights are used when the run kept them."""
    from maskgit_cli import vqgan

    ckpt = load(path, "tokenizer") if Path(path).is_dir() else load(path)
    if ckpt["kind"] not in ("tokenizer", "state_dict"):
        raise CheckpointError(
            f"{ckpt['path']}: is a {ckpt['kind']} checkpoint, expected a tokenizer"
        )
    cfg = config_of(ckpt, fallback)
    model = vqgan.build(cfg)
    load_state(
        model,
        weights(ckpt),
        ckpt["path"],
        SAVED_CONFIG_HINT if ckpt.get("config") is not None else "check --config",
    )
    mid = tokens_id(ckpt)
    model.model_id = mid  # its tokens' identity travels with the module (token files, runs)
    return model.to(device).eval(), cfg, mid


def load_transformer(path: str | Path, device: str | torch.device = "cpu"):
    """A transformer run directory (or transformer.pt beside its tokenizer.pt) ->
    (tokenizer, transformer, config). EMA weights are used when the run kept them."""
    from maskgit_cli import transformer as transformer_mod

    path = Path(path)
    ckpt = load(path, "transformer")
    run_dir = Path(ckpt["path"]).parent
    tok_path = run_dir / TOKENIZER
    if not tok_path.is_file():
        raise CheckpointError(
            f"{run_dir}: no {TOKENIZER} beside the transformer; a run directory must be "
            "self-contained (train the transformer with --out in this directory)"
        )
    tokenizer, tok_cfg, tok_id = load_tokenizer(tok_path, device=device)
    cfg = config_of(ckpt)
    if ckpt.get("tokenizer_id") and ckpt["tokenizer_id"] != tok_id:
        raise CheckpointError(
            f"{run_dir}: the transformer was trained on tokenizer {ckpt['tokenizer_id']} "
            f"but {tok_path} is {tok_id}; use the tokenizer it was trained with"
        )
    if cfg.tokenizer.codebook_size != tokenizer.codebook_size:
        raise CheckpointError(
            f"{run_dir}: tokenizer has {tokenizer.codebook_size} codes but the transformer "
            f"predicts {cfg.tokenizer.codebook_size}; they do not belong together"
        )
    model = transformer_mod.build(cfg.transformer, tok_cfg.grid, tokenizer.codebook_size)
    load_state(model, weights(ckpt), ckpt["path"])
    # the transformer's own config, except what the tokenizer file is the authority for: its data,
    # architecture and the training that made it (stage 1 and 1b)
    return (
        tokenizer,
        model.to(device).eval(),
        dataclasses.replace(
            cfg,
            data=tok_cfg.data,
            tokenizer=tok_cfg.tokenizer,
            tokenizer_train=tok_cfg.tokenizer_train,
            decoder_train=tok_cfg.decoder_train,
        ),
    )


def load_critic(
    run_dir: str | Path,
    tokenizer_id: str,
    transformer_id: str,
    device: str | torch.device = "cpu",
):
    """RUN_DIR/critic.pt, the Token-Critic of the run's transformer -> model in eval mode, or None
    when the run has none. It must have been trained against exactly this tokenizer and
    transformer (their weight hashes)."""
    from maskgit_cli import critic as critic_mod

    path = Path(run_dir) / CRITIC
    if not path.is_file():
        return None
    ckpt = load(path, "critic")
    for name, want in (("tokenizer", tokenizer_id), ("transformer", transformer_id)):
        if ckpt.get(f"{name}_id") != want:
            raise CheckpointError(
                f"{path} was trained against another {name} than the one beside it; train it "
                "again (maskgit train --stage critic --overwrite) or remove it"
            )
    cfg = config_of(ckpt)
    model = critic_mod.build(cfg.transformer, cfg.grid, cfg.tokenizer.codebook_size)
    load_state(model, weights(ckpt), ckpt["path"])
    return model.to(device).eval()
