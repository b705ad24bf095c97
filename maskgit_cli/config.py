"""Typed configuration: defaults in frozen dataclasses, YAML files hold only overrides.

    cfg = load("configs/tiny.yaml", ["transformer.dim=64", "tokenizer_train.lr=3e-4"])

Every value is coerced to its field's type (PyYAML reads ``3e-4`` as a string, ``--set`` gives
strings), and an unknown key fails with the list of valid ones.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from maskgit_cli.errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    image_size: int = 64
    # x_normalized = (x - mean) / std with x in [0, 1]; 0.5 / 0.5 gives [-1, 1].
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    # The lab de-normalizes its outputs with slightly different statistics; empty = mean/std.
    denorm_mean: tuple[float, ...] = ()
    denorm_std: tuple[float, ...] = ()
    hflip: bool = True  # random horizontal flips while training


@dataclass(frozen=True)
class TokenizerConfig:
    arch: str = "vqgan"  # "vqgan" (ours) or "lab" (the course's VQGAN, exact state_dict)
    channels: tuple[int, ...] = (64, 128, 128)  # encoder width per resolution level
    dec_channels: tuple[int, ...] = ()  # lab only; ours mirrors `channels`
    res_blocks: int = 1  # residual blocks per level
    attn_resolutions: tuple[int, ...] = ()  # feature-map sizes that get self-attention
    codebook_size: int = 1024  # K
    code_dim: int = 64
    beta: float = 0.25  # commitment weight
    l2_codes: bool = False  # cosine-similarity lookup (ViT-VQGAN); helps codebook usage


@dataclass(frozen=True)
class TokenizerTrainConfig:
    batch_size: int = 32
    epochs: int = 10
    max_steps: int = 0  # 0 = run all epochs
    lr: float = 4e-4
    weight_decay: float = 0.0
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    loss: str = "l1"  # "l1" or "l2"
    disc_start: int = -1  # step at which the patch discriminator switches on; -1 = never
    disc_weight: float = 0.1
    disc_lr: float = 2e-4
    restart_every: int = 100  # revive dead codes every N steps (0 = never)
    dead_threshold: float = 0.03  # a code is dead below this EMA count per batch
    log_every: int = 10
    checkpoint_every: int = 500


@dataclass(frozen=True)
class TransformerConfig:
    dim: int = 256
    layers: int = 8
    heads: int = 8
    mlp_dim: int = 1024
    dropout: float = 0.1  # on the embedding and the residual branches
    # on the attention probabilities; > 0 forces SDPA onto its slow math path on the CPU
    attn_dropout: float = 0.0
    norm: str = "pre"  # "pre" (default) or "post" (the lab's layout)
    head: str = "linear"  # "linear" or "tied" (token embedding + per-position bias, the lab's)


@dataclass(frozen=True)
class TransformerTrainConfig:
    batch_size: int = 64
    epochs: int = 20
    max_steps: int = 0
    lr: float = 5e-4
    beta1: float = 0.9
    beta2: float = 0.96
    weight_decay: float = 0.05
    warmup_steps: int = 300
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1
    label_smoothing: float = 0.1
    ema: float = 0.0  # EMA decay of the weights, 0 = off
    schedule: str = "cosine"  # gamma used to draw the mask ratio
    mask_mode: str = "random"  # "random", "region" or "mixed"
    val_ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    log_every: int = 10
    checkpoint_every: int = 500


@dataclass(frozen=True)
class DecodeConfig:
    schedule: str = "cosine"
    total_iter: int = 12  # T
    sweet_spot: int = 0  # t; 0 = T
    choice_temperature: float = 4.5
    temperature: float = 1.0
    sampling: str = "sample"  # "sample" or "greedy"
    token_mask: str = "any"  # pixel mask -> token mask: "any", "all", "majority"
    dilate: int = 0


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    tokenizer_train: TokenizerTrainConfig = field(default_factory=TokenizerTrainConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    transformer_train: TransformerTrainConfig = field(default_factory=TransformerTrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @property
    def grid(self) -> int:
        """Side of the token grid h = w."""
        if self.tokenizer.arch == "lab":
            return self.data.image_size // 4
        return self.data.image_size // 2 ** (len(self.tokenizer.channels) - 1)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerce a YAML or command-line value to the annotated type of a field."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        (inner, *_rest) = typing.get_args(tp)
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [
                v for v in value.split(",") if v.strip()
            ]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_coerce(v, inner, key) for v in value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], key)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) else int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        name = getattr(tp, "__name__", str(tp))
        raise ConfigError(f"config key '{key}': {value!r} is not a valid {name}") from None
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _apply(obj: Any, overrides: dict[str, Any], prefix: str = "") -> Any:
    hints = _hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    changes = {}
    for key, value in overrides.items():
        full = f"{prefix}{key}"
        if key not in names:
            valid = ", ".join(f"{prefix}{n}" for n in names)
            raise ConfigError(f"unknown config key '{full}'; valid keys: {valid}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{full}' is a section; set '{full}.<key>' instead")
            changes[key] = _apply(current, value, f"{full}.")
        else:
            changes[key] = _coerce(value, hints[key], full)
    return dataclasses.replace(obj, **changes)


def _nest(dotted: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{key}' conflicts with another override")
        node[parts[-1]] = value
    return out


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """['a.b=1', 'c=x'] -> nested dict; values stay strings and are coerced later."""
    flat: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        flat[key.strip()] = value.strip()
    return _nest(flat)


def _validate(cfg: Config) -> Config:
    tok, tr = cfg.tokenizer, cfg.transformer
    if tok.arch not in ("vqgan", "lab"):
        raise ConfigError(f"tokenizer.arch must be 'vqgan' or 'lab', got '{tok.arch}'")
    if tr.dim % tr.heads:
        raise ConfigError(f"transformer.dim ({tr.dim}) must be divisible by heads ({tr.heads})")
    if tr.norm not in ("pre", "post"):
        raise ConfigError(f"transformer.norm must be 'pre' or 'post', got '{tr.norm}'")
    if tr.head not in ("linear", "tied"):
        raise ConfigError(f"transformer.head must be 'linear' or 'tied', got '{tr.head}'")
    if cfg.tokenizer_train.loss not in ("l1", "l2"):
        raise ConfigError("tokenizer_train.loss must be 'l1' or 'l2'")
    if cfg.transformer_train.mask_mode not in ("random", "region", "mixed"):
        raise ConfigError("transformer_train.mask_mode must be 'random', 'region' or 'mixed'")
    if len(cfg.data.mean) != 3 or len(cfg.data.std) != 3:
        raise ConfigError("data.mean and data.std need 3 values (R, G, B)")
    if cfg.data.image_size % (cfg.data.image_size // cfg.grid or 1):
        raise ConfigError("data.image_size must be divisible by the tokenizer's downsampling")
    return cfg


def from_dict(data: dict[str, Any] | None, source: str = "config") -> Config:
    try:
        return _validate(_apply(Config(), data or {}))
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- --set overrides, validated."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return apply_overrides(from_dict(data, str(path) if path else "config"), overrides)


def apply_overrides(cfg: Config, overrides: list[str] | None) -> Config:
    """cfg with `key=value` overrides applied, validated like the file."""
    if not overrides:
        return cfg
    return from_dict(_merge(cfg.to_dict(), parse_overrides(overrides)), "--set")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def dump(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
