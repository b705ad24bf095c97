from pathlib import Path

import pytest

from maskgit_cli import config
from maskgit_cli.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = config.load(path)
    assert cfg.grid >= 1


def test_defaults_without_a_file():
    cfg = config.load(None)
    assert cfg.tokenizer.codebook_size == 1024 and cfg.grid == 16


def test_yaml_scientific_notation_is_coerced_to_float(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("tokenizer_train:\n  lr: 3e-4\n")  # PyYAML reads this as a string
    assert config.load(p).tokenizer_train.lr == pytest.approx(3e-4)


def test_set_overrides_with_dotted_keys_and_coercion():
    cfg = config.load(
        None,
        [
            "transformer.dim=64",
            "transformer.heads=4",
            "data.hflip=false",
            "transformer_train.val_ratios=0.1,0.9",
            "tokenizer.channels=[8,16]",
        ],
    )
    assert cfg.transformer.dim == 64 and cfg.data.hflip is False
    assert cfg.transformer_train.val_ratios == (0.1, 0.9)
    assert cfg.tokenizer.channels == (8, 16) and cfg.grid == 32


def test_unknown_key_lists_the_valid_ones(tmp_path):
    with pytest.raises(
        ConfigError, match="unknown config key 'transformer.depth'.*transformer.layers"
    ):
        config.load(None, ["transformer.depth=3"])
    p = tmp_path / "c.yaml"
    p.write_text("modle:\n  dim: 3\n")
    with pytest.raises(ConfigError, match="c.yaml.*unknown config key 'modle'"):
        config.load(p)


def test_bad_values_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match="not a valid int"):
        config.load(None, ["transformer.dim=big"])
    with pytest.raises(ConfigError, match="divisible"):
        config.load(None, ["transformer.dim=30", "transformer.heads=4"])
    with pytest.raises(ConfigError, match="key=value"):
        config.load(None, ["transformer.dim"])
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(bad)


def test_round_trip_through_dict():
    cfg = config.load(ROOT / "configs" / "lab.yaml")
    assert config.from_dict(cfg.to_dict()) == cfg
