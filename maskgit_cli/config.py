"""Typed configuration: defaults in frozen dataclasses, YAML files hold only overrides.

    cfg = load("configs/tiny.yaml", ["transformer.dim=64", "tokenizer_train.lr=3e-4"])

Every value is coerced to its field's type (PyYAML reads ``3e-4`` as a string, ``--set`` gives
strings), and an unknown key fails with the list of valid ones.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from maskgit_cli.errors import ConfigError


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML
    silently keeps the last, dropping a whole section written twice)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _value in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise ConfigError(f"key '{key}' appears twice (lines {seen[key]} and {line}); keep one")
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


# ----------------------------------------------------------------------------- rules
# A field's rule lives in its metadata: one place for a value that can arrive from a YAML file,
# --set, `maskgit export --set` or a command-line flag. A rule returns what is wrong, or None.

Rule = typing.Callable[[Any], "str | None"]

PRECISIONS = (
    "auto",
    "fp32",
    "bf16",
    "fp16",
)  # precision.py: what each means, where each is refused


def at_least(lo: float) -> Rule:
    return lambda v: None if v >= lo else f"must be at least {lo}"


def positive(v: float) -> str | None:
    return None if v > 0 else "must be positive"


def below(lo: float, hi: float) -> Rule:
    """lo <= v < hi."""
    return lambda v: None if lo <= v < hi else f"must be in [{lo}, {hi})"


def one_of(*choices: str) -> Rule:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _schedule(v: str) -> str | None:
    from maskgit_cli.schedules import SCHEDULES

    return None if v in SCHEDULES else f"must be one of {', '.join(SCHEDULES)}"


def ruled(
    default: Any, rule: Rule | None, help: str = "", short: str = "", choices: tuple[str, ...] = ()
) -> Any:
    """A dataclass field with a validation rule (for a tuple, each element is checked). `help`,
    `short` and `choices` describe its command-line flag where one is generated from the field
    (the decode options of inpaint and compare-schedules)."""
    return field(
        default=default, metadata={"rule": rule, "help": help, "short": short, "choices": choices}
    )


def choice(default: str, *choices: str, help: str = "", short: str = "") -> Any:
    """A field that takes one of `choices`."""
    return ruled(default, one_of(*choices), help, short, choices)


def check_value(cls: type, name: str, value: Any, label: str) -> None:
    """Raise ConfigError if `value` breaks the rule of field `name` of `cls`; `label` is how the
    user wrote it (`decode.temperature` or `--temperature`). Floats must be finite."""
    f = cls.__dataclass_fields__[name]
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{label} must be a finite number, got {v}")
        rule = f.metadata.get("rule")
        problem = rule(v) if rule else None
        if problem:
            raise ConfigError(f"{label} {problem}, got {v!r}")


@dataclass(frozen=True)
class DataConfig:
    image_size: int = ruled(64, at_least(1))
    # x_normalized = (x - mean) / std with x in [0, 1]; 0.5 / 0.5 gives [-1, 1].
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = ruled((0.5, 0.5, 0.5), positive)
    # The lab de-normalizes its outputs with slightly different statistics; empty = mean/std.
    denorm_mean: tuple[float, ...] = ()
    denorm_std: tuple[float, ...] = ruled((), positive)
    hflip: bool = True  # random horizontal flips while training


@dataclass(frozen=True)
class TokenizerConfig:
    arch: str = ruled(
        "vqgan", one_of("vqgan", "lab")
    )  # ours, or the course's VQGAN (exact state_dict)
    channels: tuple[int, ...] = ruled(
        (64, 128, 128), at_least(1)
    )  # encoder width per resolution level
    dec_channels: tuple[int, ...] = ruled((), at_least(1))  # lab only; ours mirrors `channels`
    res_blocks: int = ruled(1, at_least(1))  # residual blocks per level
    # the decoder's blocks per level when it differs (an asymmetric VQGAN, Zhu et al. 2023: a
    # deeper decoder draws more from the same tokens); 0 = res_blocks. Ours only
    decoder_res_blocks: int = ruled(0, at_least(0))
    attn_resolutions: tuple[int, ...] = ()  # feature-map sizes that get self-attention
    codebook_size: int = ruled(1024, at_least(2))  # K
    code_dim: int = ruled(64, at_least(1))
    beta: float = ruled(0.25, at_least(0))  # commitment weight
    l2_codes: bool = False  # cosine-similarity lookup (ViT-VQGAN); helps codebook usage
    # FSQ instead of a learned codebook when given (Mentzer et al. 2023): levels per latent
    # channel, e.g. [8, 5, 5, 5]; codebook_size must equal their product
    fsq_levels: tuple[int, ...] = ruled((), at_least(2))
    # the decoder also sees the known pixels (the asymmetric VQGAN's conditional branch, Zhu et
    # al. 2023): the masked image and its mask, encoded at each of the decoder's resolutions and
    # added in. Inpainting hands it the input; elsewhere it sees nothing known. Ours only
    context: bool = False


@dataclass(frozen=True)
class TokenizerTrainConfig:
    batch_size: int = ruled(32, at_least(1))
    epochs: int = ruled(10, at_least(1))
    max_steps: int = ruled(0, at_least(0))  # 0 = run all epochs
    lr: float = ruled(4e-4, positive)
    weight_decay: float = ruled(0.0, at_least(0))
    warmup_steps: int = ruled(200, at_least(0))
    min_lr_ratio: float = ruled(0.1, below(0, 1.0001))
    grad_clip: float = ruled(1.0, positive)
    loss: str = ruled("l1", one_of("l1", "l2"))
    # a patch GAN from this step on, with the encoder and codebook training too (VQGAN's own
    # stage 1, Esser et al. 2021); -1 = never (stage 1b then adds one to the decoder alone)
    disc_start: int = ruled(-1, at_least(-1))
    # the generator's hinge loss times VQGAN's adaptive weight, as in stage 1b
    disc_weight: float = ruled(0.5, at_least(0))
    disc_lr: float = ruled(2e-4, positive)
    # the patch critic's stride-2 layers: each logit sees a patch of 94 (4), 46 (3), 22 (2) or 10
    # (1) pixels a side. Stage 1b's fresh critic has the same depth; a kept one keeps its own
    disc_layers: int = ruled(3, at_least(1))
    # feature matching against the critic's hidden activations once the GAN is on (as
    # decoder_train.feature_weight); 0 = off
    feature_weight: float = ruled(0.0, at_least(0))
    restart_every: int = ruled(100, at_least(0))  # revive dead codes every N steps (0 = never)
    dead_threshold: float = ruled(
        0.03, at_least(0)
    )  # a code is dead below this EMA count per batch
    # EMA decay of the weights (0 = off); validation, encode, stage 1b and exports use the
    # average. The codebook is copied, not averaged (train/ema.py)
    ema: float = ruled(0.0, below(0, 1))
    # auto: bf16 where the hardware multiplies bf16 natively, else fp32 (precision.py); fp32
    # master weights either way. A resume keeps the run's precision where the hardware has it.
    precision: str = choice("auto", *PRECISIONS)
    log_every: int = ruled(10, at_least(1))
    checkpoint_every: int = ruled(500, at_least(1))


@dataclass(frozen=True)
class DecoderTrainConfig:
    """Stage 1b (`--stage decoder`): fine-tune only the tokenizer's decoder, reconstruction loss
    plus a patch discriminator, with the encoder and codebook frozen: the tokens do not change,
    so a transformer trained on them stays valid."""

    batch_size: int = ruled(16, at_least(1))
    epochs: int = ruled(1, at_least(1))
    max_steps: int = ruled(0, at_least(0))  # 0 = run all epochs
    lr: float = ruled(1e-4, positive)
    warmup_steps: int = ruled(50, at_least(0))
    min_lr_ratio: float = ruled(1.0, below(0, 1.0001))  # 1 = constant after warmup
    grad_clip: float = ruled(1.0, positive)
    loss: str = ruled("l1", one_of("l1", "l2"))
    # the generator's hinge loss is weighted adaptively (Esser et al. 2021): disc_weight times
    # |grad of the reconstruction loss| / |grad of the GAN loss| at the decoder's last layer
    disc_weight: float = ruled(0.5, at_least(0))
    disc_lr: float = ruled(2e-4, positive)
    # start from the critic stage 1 trained (tokenizer_train.disc_start >= 0) and its optimizer
    # state, instead of a fresh one: the decoder goes on against the judge it already knows
    keep_critic: bool = False
    # feature matching (pix2pixHD): L1 between the critic's activations of each reconstruction and
    # of its image, averaged over its layers, times this weight; a perceptual loss learned by the
    # run's own critic, not by a pretrained network. 0 = off
    feature_weight: float = ruled(0.0, at_least(0))
    # this many grids of each batch are the run's own transformer's inpainting fills
    # (RUN/transformer.pt,
    # its decode defaults, holes like `maskgit mask`'s): the token grids the decoder meets when it
    # inpaints, hole tokens that no encoder made. Only their known pixels have an L1 target; the
    # critic judges them whole. 0 = off (encoder tokens only).
    generated: int = ruled(0, at_least(0))
    pool: int = ruled(512, at_least(1))  # fills made once before the first step, then drawn from
    ema: float = ruled(0.0, below(0, 1))  # EMA decay of the decoder's weights, 0 = off
    # deepen the decoder by this many residual blocks per level when the stage starts (not on a
    # resume): the new blocks begin as the identity (last convolution zero), so training starts
    # from the checkpoint's own reconstructions. The tokens do not change. 0 = keep its depth
    add_res_blocks: int = ruled(0, at_least(0))
    # give the decoder a view of the known pixels (tokenizer.context) when the stage starts (not
    # on a resume): the branch's projections begin at zero, so training starts from the
    # checkpoint's own reconstructions. Each image is trained with a random hole
    # (data.random_region_masks), or with nothing known in a `context_drop` share of them
    add_context: bool = False
    context_drop: float = ruled(0.1, below(0, 1))
    # with a context decoder: the critic and the generator's GAN loss count only the patches that
    # touch each image's hole (outside it the decoder copies the known pixels, so those patches
    # tell the critic nothing)
    hole_critic: bool = False
    # auto: bf16 where the hardware multiplies bf16 natively, else fp32 (precision.py); fp32
    # master weights either way. A resume keeps the run's precision where the hardware has it.
    precision: str = choice("auto", *PRECISIONS)
    log_every: int = ruled(10, at_least(1))
    checkpoint_every: int = ruled(100, at_least(1))


@dataclass(frozen=True)
class TransformerConfig:
    dim: int = ruled(256, at_least(1))
    layers: int = ruled(8, at_least(1))
    heads: int = ruled(8, at_least(1))
    mlp_dim: int = ruled(1024, at_least(1))
    dropout: float = ruled(0.1, below(0, 1))  # on the embedding and the residual branches
    # on the attention probabilities; > 0 forces SDPA onto its slow math path on the CPU
    attn_dropout: float = ruled(0.0, below(0, 1))
    norm: str = ruled("pre", one_of("pre", "post"))  # pre (default) or post (the lab's layout)
    head: str = ruled(
        "linear", one_of("linear", "tied")
    )  # or token embedding + per-position bias (the lab's)
    # masked positions also see the hole's coarse colour: the mean colours of the known tokens,
    # harmonically interpolated across the masked ones (harmonic.harmonic_grid)
    hint: bool = False


@dataclass(frozen=True)
class TransformerTrainConfig:
    batch_size: int = ruled(64, at_least(1))
    epochs: int = ruled(20, at_least(1))
    max_steps: int = ruled(0, at_least(0))
    lr: float = ruled(5e-4, positive)
    beta1: float = ruled(0.9, below(0, 1))
    beta2: float = ruled(0.96, below(0, 1))
    weight_decay: float = ruled(0.05, at_least(0))
    warmup_steps: int = ruled(300, at_least(0))
    min_lr_ratio: float = ruled(0.1, below(0, 1.0001))
    grad_clip: float = ruled(1.0, positive)
    grad_accum: int = ruled(1, at_least(1))
    label_smoothing: float = ruled(0.1, below(0, 1))
    ema: float = ruled(0.0, below(0, 1))  # EMA decay of the weights, 0 = off (train/ema.py)
    # fine-tune: a transformer checkpoint, model folder or bundled model's name (cats64) whose
    # weights start the run instead of random ones, with a fresh optimizer and schedule; it must
    # be trained on this run's tokens and be of this config's size. A resume ignores it. "" =
    # random start
    init: str = ""
    # deepen init's transformer by this many layers when the run starts (not on a resume): the new
    # ones go before its last layer and begin as the identity (their output projections zero), so
    # training starts from init's own predictions. Pre-norm only; `transformer.layers` is init's
    # depth. 0 = keep its depth
    add_layers: int = ruled(0, at_least(0))
    schedule: str = ruled("cosine", _schedule)  # gamma used to draw the mask ratio
    mask_mode: str = ruled("random", one_of("random", "region", "mixed"))
    val_ratios: tuple[float, ...] = ruled((0.25, 0.5, 0.75), below(0.001, 1.0001))
    # auto: bf16 where the hardware multiplies bf16 natively, else fp32 (precision.py); fp32
    # master weights either way. A resume keeps the run's precision where the hardware has it.
    precision: str = choice("auto", *PRECISIONS)
    log_every: int = ruled(10, at_least(1))
    checkpoint_every: int = ruled(500, at_least(1))


@dataclass(frozen=True)
class CriticTrainConfig:
    """Stage 2b, the Token-Critic (critic.py): trained against a run's frozen transformer, which
    draws its training grids with the run's decode temperature and top_p."""

    batch_size: int = ruled(64, at_least(1))
    epochs: int = ruled(6, at_least(1))
    max_steps: int = ruled(0, at_least(0))
    lr: float = ruled(3e-4, positive)
    beta1: float = ruled(0.9, below(0, 1))
    beta2: float = ruled(0.96, below(0, 1))
    weight_decay: float = ruled(0.01, at_least(0))
    warmup_steps: int = ruled(50, at_least(0))
    min_lr_ratio: float = ruled(0.0, below(0, 1.0001))
    grad_clip: float = ruled(1.0, positive)
    # start from the trunk of the run's transformer (embeddings and blocks; the head is new)
    from_transformer: bool = True
    schedule: str = ruled("cosine", _schedule)  # gamma used to draw the mask ratio
    mask_mode: str = ruled("mixed", one_of("random", "region", "mixed"))
    precision: str = choice("auto", *PRECISIONS)
    log_every: int = ruled(10, at_least(1))
    checkpoint_every: int = ruled(100, at_least(1))


@dataclass(frozen=True)
class DecodeConfig:
    """How a model inpaints (MaskGIT decoding, sec. 3.2 of the paper); a model's own defaults live
    in its config's `decode` section. Each field is also a flag of `inpaint` and
    `compare-schedules` (cli.decode_options), with the help given here: adding a decode option is
    one field here plus its use in decode.py / inpaint.py."""

    prefill: str = choice(
        "none",
        "none",
        "harmonic",
        help=(
            "What the hole holds when the known context is encoded: none (the input as given, the "
            "lab's way) or "
            "harmonic (Laplace-filled first: far fewer known tokens change)."
        ),
    )
    schedule: str = ruled(
        "cosine", _schedule, "Mask schedule gamma (how many tokens stay masked after each step)."
    )
    total_iter: int = ruled(12, at_least(1), "Total decoding iterations T.", short="-T")
    sweet_spot: int = ruled(
        0,
        at_least(0),
        "Run t <= T steps of the T-step schedule, then commit every sampled token (0 = T).",
        short="-t",
    )
    choice_temperature: float = ruled(
        4.5,
        at_least(0),
        "Gumbel noise added to the confidences, annealed by "
        "1 - (t+1)/T (0 = keep the most confident tokens).",
    )
    temperature: float = ruled(1.0, positive, "Sampling temperature of the token distribution.")
    # confidences stay the model's own log-probabilities whatever top_k / top_p sample from
    top_k: int = ruled(0, at_least(0), "Sample only among the K most likely codes (0 = all).")
    top_p: float = ruled(
        1.0,
        lambda v: None if 0 < v <= 1 else "must be in (0, 1]",
        "Sample only within the nucleus of probability P (1 = all).",
    )
    sampling: str = choice(
        "sample", "sample", "greedy", help="Sample tokens, or take the most likely one."
    )
    token_mask: str = choice(
        "any",
        "any",
        "all",
        "majority",
        help=(
            "Pixel to token mask: a token is masked if any (the lab's rule), all or most of its "
            "pixels are missing."
        ),
    )
    dilate: int = ruled(0, at_least(0), "Grow the token mask by K tokens.")
    blend: str = choice(
        "none",
        "none",
        "poisson",
        help=(
            "How the fill meets the known pixels: none, or poisson (seamless cloning, Perez et al. "
            "2003: the "
            "fill's gradients inside the hole, the known pixels at its edge)."
        ),
    )
    candidates: int = ruled(
        1,
        at_least(1),
        "Decode each hole N times and keep the fill that best continues the "
        "known pixels around it (least seam error); N x the time.",
    )
    remask: str = choice(
        "confidence",
        "confidence",
        "critic",
        help=(
            "What decides which sampled tokens are masked again: confidence (the transformer's own "
            "probability of each, as in MaskGIT) or critic (a Token-Critic, Lezama et al. 2022, "
            "trained with `maskgit train --stage critic`)."
        ),
    )
    critic_scope: str = choice(
        "hole",
        "hole",
        "step",
        help=(
            "With --remask critic: hole (every token of the hole competes to stay at each step, so "
            "an early one can be drawn again) or step (only the tokens sampled this step)."
        ),
    )


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    tokenizer_train: TokenizerTrainConfig = field(default_factory=TokenizerTrainConfig)
    decoder_train: DecoderTrainConfig = field(default_factory=DecoderTrainConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    transformer_train: TransformerTrainConfig = field(default_factory=TransformerTrainConfig)
    critic_train: CriticTrainConfig = field(default_factory=CriticTrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @property
    def downsampling(self) -> int:
        """Pixels per token side: 4 for the lab's VQGAN, 2^(levels - 1) for ours."""
        return 4 if self.tokenizer.arch == "lab" else 2 ** (len(self.tokenizer.channels) - 1)

    @property
    def grid(self) -> int:
        """Side of the token grid h = w."""
        return self.data.image_size // self.downsampling


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
            value = (
                _yaml_value(value, key)
                if value.strip().startswith("[")
                else [v for v in value.split(",") if v.strip()]
            )
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_coerce(v, inner, key) for v in value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], key)
    name = getattr(tp, "__name__", str(tp))
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
        if tp in (int, float) and (
            isinstance(value, bool) or not isinstance(value, (int, float, str))
        ):
            raise ValueError(value)  # `yes`, a list or a mapping is not a number
        if tp is int:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, float):
                if not math.isfinite(number):
                    raise ConfigError(
                        f"config key '{key}' must be a finite whole number, got {value!r}"
                    )
                if not number.is_integer():
                    raise ValueError(value)
            return int(number)
        if tp is float:
            return float(value)
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"config key '{key}': {value!r} is not a valid {name}") from None
    return value


def _yaml_value(text: str, key: str) -> Any:
    """A `--set` value written as YAML (a list: `[16, 32]`)."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as err:
        problem = str(err).splitlines()[0]
        raise ConfigError(f"config key '{key}': {text!r} is not a valid list ({problem})") from None


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
    for section in dataclasses.fields(cfg):
        part = getattr(cfg, section.name)
        for f in dataclasses.fields(part):
            check_value(type(part), f.name, getattr(part, f.name), f"{section.name}.{f.name}")
    tok, tr = cfg.tokenizer, cfg.transformer
    if not tok.channels:
        raise ConfigError("tokenizer.channels needs at least one width, e.g. [64, 128, 128]")
    if tok.fsq_levels:
        if tok.arch != "vqgan":
            raise ConfigError(
                "tokenizer.fsq_levels needs tokenizer.arch 'vqgan' (the lab's VQGAN has a codebook)"
            )
        if math.prod(tok.fsq_levels) != tok.codebook_size:
            raise ConfigError(
                f"tokenizer.codebook_size ({tok.codebook_size}) must equal the product of "
                f"tokenizer.fsq_levels {list(tok.fsq_levels)} ({math.prod(tok.fsq_levels)}); "
                "change both, or set tokenizer.fsq_levels=[] for a learned codebook"
            )
    if cfg.transformer_train.add_layers:
        if not cfg.transformer_train.init:
            raise ConfigError(
                "transformer_train.add_layers deepens transformer_train.init's model: set "
                "transformer_train.init to a trained transformer"
            )
        if tr.norm != "pre":
            raise ConfigError(
                "transformer_train.add_layers needs transformer.norm 'pre' (a post-norm layer "
                "cannot start as the identity)"
            )
    if tok.arch != "vqgan" and (tok.decoder_res_blocks or cfg.decoder_train.add_res_blocks):
        raise ConfigError(
            "tokenizer.decoder_res_blocks and decoder_train.add_res_blocks need tokenizer.arch "
            "'vqgan' (the lab's VQGAN has a fixed layout)"
        )
    if tok.arch != "vqgan" and (tok.context or cfg.decoder_train.add_context):
        raise ConfigError(
            "tokenizer.context and decoder_train.add_context need tokenizer.arch 'vqgan' (the "
            "lab's VQGAN has a fixed layout)"
        )
    if cfg.decoder_train.add_context and cfg.decoder_train.add_res_blocks:
        raise ConfigError(
            "decoder_train.add_res_blocks and decoder_train.add_context: add one per run"
        )
    if cfg.decoder_train.add_context and cfg.decoder_train.generated:
        raise ConfigError(
            "decoder_train.add_context and decoder_train.generated cannot be combined: set one "
            "of them to its default"
        )
    if tr.dim % tr.heads:
        raise ConfigError(f"transformer.dim ({tr.dim}) must be divisible by heads ({tr.heads})")
    if len(cfg.data.mean) != 3 or len(cfg.data.std) != 3:
        raise ConfigError("data.mean and data.std need 3 values (R, G, B)")
    factor = cfg.downsampling
    if cfg.data.image_size % factor or cfg.data.image_size < factor:
        raise ConfigError(
            f"data.image_size ({cfg.data.image_size}) must be a multiple of the tokenizer's "
            f"downsampling, {factor} (one token per {factor}x{factor} pixels)"
        )
    deepest = max(cfg.data.image_size.bit_length() - 2, 0)  # halvings that leave 2x2 or more
    if cfg.tokenizer_train.disc_layers > deepest:
        raise ConfigError(
            f"tokenizer_train.disc_layers ({cfg.tokenizer_train.disc_layers}) is too deep for "
            f"{cfg.data.image_size}-pixel images: each layer halves them and the critic needs 2x2 "
            f"left; use at most {deepest}"
        )
    if cfg.decode.sweet_spot > cfg.decode.total_iter:
        raise ConfigError(
            f"decode.sweet_spot ({cfg.decode.sweet_spot}) must not exceed decode.total_iter "
            f"({cfg.decode.total_iter})"
        )
    return cfg


def from_dict(data: dict[str, Any] | None, source: str = "config") -> Config:
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got a {type(data).__name__}")
    try:
        return _validate(_apply(Config(), data or {}))
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


BUNDLED_CONFIGS = Path(__file__).parent / "configs"


def bundled_configs() -> list[str]:
    """Names of the configs shipped in the package: the stems of configs/*.yaml."""
    return sorted(p.stem for p in BUNDLED_CONFIGS.glob("*.yaml"))


def config_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a bundled config (`cats64` = the packaged cats64.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = BUNDLED_CONFIGS / f"{path.stem}.yaml"
    if len(path.parts) == 1 and path.suffix in ("", ".yaml") and bundled.is_file():
        return bundled
    raise ConfigError(
        f"config file not found: {path}; give a YAML file or a bundled config name "
        f"({', '.join(bundled_configs())})"
    )


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file (or bundled config name) <- --set overrides, validated."""
    data: dict[str, Any] = {}
    if path is not None:
        path = config_path(path)
        try:
            data = yaml.load(path.read_bytes().decode("utf-8"), Loader=_StrictLoader) or {}
        except UnicodeDecodeError:
            raise ConfigError(
                f"{path}: not a text file in UTF-8; save the config as UTF-8 YAML"
            ) from None
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        except OSError as err:
            raise ConfigError(f"{path}: cannot read the config ({err.strerror})") from None
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
