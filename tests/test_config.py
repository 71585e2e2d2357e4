"""Typed config and presets: every shipped preset loads; unknown keys and wrong types are clear errors."""

from __future__ import annotations

import pytest

from finc_cli.config import (
    Config,
    ConfigError,
    apply_overrides,
    list_presets,
    load_preset,
    parse_override,
    save_config,
)


def test_every_shipped_preset_loads_and_says_where_its_numbers_come_from():
    names = list_presets()
    assert {"digits", "mnist", "cifar10", "imagenet32", "imagenet64", "celeba64"} <= set(names)
    for name in names:
        cfg = load_preset(name)
        assert cfg.name == name and cfg.data.name == name and cfg.source.strip()


def test_a_preset_by_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nmodel:\n  levels: 1\n")
    cfg = load_preset(path)
    assert cfg.name == "mine" and cfg.model.levels == 1 and cfg.model.steps == Config().model.steps  # defaults kept


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_preset("digits", {"train.lr": 0.01, "model.hidden": 8, "train.grad_clip": None})
    save_config(cfg, tmp_path / "config.yaml")
    assert load_preset(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize(
    "name,words",
    [
        ("nope", ["unknown preset 'nope'", "digits", "cifar10"]),
        ("missing.yaml", ["preset file missing.yaml does not exist"]),
    ],
)
def test_unknown_presets(name, words):
    with pytest.raises(ConfigError) as info:
        load_preset(name)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    "text,words",
    [
        ("model:\n  levels: [2\n", ["not valid YAML", "line"]),
        ("- a\n- b\n", ["YAML mapping"]),
        ("model: 3\n", ["'model' must be a mapping"]),
        ("modle:\n  levels: 2\n", ["unknown config key 'modle'", "did you mean 'model'"]),
        ("model:\n  level: 2\n", ["unknown config key 'model.level'", "did you mean 'model.levels'"]),
        ("train:\n  lr: fast\n", ["'train.lr' must be a number"]),
        ("model:\n  levels: 2.5\n", ["'model.levels' must be an integer"]),
        ("model:\n  levels: true\n", ["'model.levels' must be an integer"]),
        ("model:\n  finc: true\n", ["unknown config key 'model.finc'", "did you mean"]),
        ("data:\n  hflip: 1\n", ["'data.hflip' must be true or false"]),
        ("model:\n  conv1x1: qr\n", ["model.conv1x1 must be 'lu' or 'plain'"]),
        ("train:\n  max_bad_steps: 0\n", ["train.max_bad_steps must be >= 1"]),
    ],
)
def test_bad_preset_files(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_preset(path)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_overrides_are_typed():
    cfg = load_preset("digits", {"train.lr": 1, "lr": 2, "train.grad_clip": None})
    assert cfg.train.lr == 2.0 and isinstance(cfg.train.lr, float) and cfg.train.grad_clip is None
    with pytest.raises(ConfigError, match="ambiguous.*model.steps.*train.steps"):
        load_preset("digits", {"steps": 3})
    with pytest.raises(ConfigError, match="unknown config key 'tran.lr'"):
        load_preset("digits", {"tran.lr": 3})
    with pytest.raises(ConfigError, match="must be > 0"):
        apply_overrides(Config(), {"train.sample_temperature": 0})


@pytest.mark.parametrize(
    "text,expected",
    [
        ("train.lr=0.5", ("train.lr", 0.5)),
        ("data.hflip=false", ("data.hflip", False)),
        ("train.grad_clip=null", ("train.grad_clip", None)),
        ("train.grad_clip=", ("train.grad_clip", None)),
        ("data.name=mnist", ("data.name", "mnist")),
        ("train.lr=[1", ("train.lr", "[1")),  # not YAML: kept as text, rejected by the type check
    ],
)
def test_parse_override(text, expected):
    assert parse_override(text) == expected


def test_parse_override_needs_an_equals_sign():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.lr")


def test_exponent_without_a_dot_is_a_number():
    key, value = parse_override("train.lr=3e-4")
    assert load_preset("digits", {key: value}).train.lr == pytest.approx(3e-4)
