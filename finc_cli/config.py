"""Typed run configuration: dataclasses for data / model / train and the preset loader."""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from finc_cli.dataset_shapes import DATASETS, dataset_info
from finc_cli.errors import ConfigError, InputError
from finc_cli.files.atomic import atomic_write_text
from finc_cli.text import comma_list

__all__ = [
    "apply_overrides",
    "changed_keys",
    "check_resume_overrides",
    "Config",
    "config_from_dict",
    "CONV_CHOICES",
    "COUPLING_CHOICES",
    "config_yaml",
    "DataConfig",
    "list_presets",
    "load_preset",
    "ModelConfig",
    "parse_conv_list",
    "parse_override",
    "PRESET_DIR",
    "resolve_preset_path",
    "MEMORY_CHOICES",
    "RESUMABLE_KEYS",
    "save_config",
    "SECTIONS",
    "TrainConfig",
    "validate",
]


def _find_dir(name: str) -> Path:
    """A data folder shipped beside the package (source checkout) or inside it (wheel)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / name, here / name):
        if candidate.is_dir():
            return candidate
    return here.parent / name


PRESET_DIR = _find_dir("presets")


@dataclass
class DataConfig:
    name: str = "digits"  # digits | mnist | cifar10 | imagenet32 | imagenet64 | celeba64
    data_dir: Optional[str] = None  # root holding the dataset folders; else $FINC_DATA_DIR
    hflip: bool = False  # random horizontal flip during training
    translate: int = 0  # random translation by up to this many pixels during training
    cache_dir: Optional[str] = (
        None  # prepared arrays (finc data prepare); else $FINC_CACHE_DIR, else DATA_DIR/.finc_cache
    )
    num_workers: int = 0  # processes assembling training batches ahead; 0: one background thread


@dataclass
class ModelConfig:
    levels: int = 2  # L: multi-scale levels
    dequantization: str = "uniform"  # uniform | variational: u ~ U[0, 1), or learned q(u | x) (docs/model.md §2)
    dequant_hidden: int = 32  # width of the variational dequantizer's networks
    dequant_steps: int = 4  # checkerboard couplings in the variational dequantizer
    steps: int = 4  # K: flow steps per level
    kernel_size: int = 3  # k of the invertible k×k convolutions (every conv choice)
    hidden: int = 64  # width of the coupling networks
    conv1x1: str = "lu"  # lu | plain
    coupling: str = "affine"  # affine | additive (shift only, log-det 0), as in Glow; docs/model.md §5
    max_log_scale: float = 2.0  # bound on the coupling log-scale (tanh-bounded; affine only)
    alpha: float = 0.05  # logit preprocessing: map to [alpha, 1 - alpha]
    conv: str = "finc"  # finc | emerging | cinc | none (a Glow baseline of the same depth); docs/model.md §10
    finc_gain_cap: Optional[float] = None  # bound on every FInC unit's ‖A⁻¹‖₂ (docs/inverse.md §12); null: off
    conditional: bool = False  # class-conditional priors p(x | y), classes from the dataset (docs/model.md §14)
    class_prior: str = "spatial"  # spatial | channel: class shift per channel and position, or per channel (§14)


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 64
    eval_batch_size: int = 256
    optimizer: str = "adam"  # adam | adamax | adamw
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 200
    lr_decay: str = "none"  # none | cosine | exponential
    lr_decay_rate: float = 0.999995  # per step, for exponential
    grad_clip: Optional[float] = None  # max global gradient norm
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "32"  # 32 | bf16
    class_weight: float = 0.01  # conditional models: weight of the class head's cross-entropy (0: no head; §14)
    memory: str = "store"  # store | checkpoint | invert: what the flow steps keep for backward (docs/training.md §18)
    accumulate: int = 1
    log_every: int = 10
    eval_every: int = 500
    sample_every: int = 500
    checkpoint_every: int = 500
    ema_decay: float = 0.0  # exponential moving average of the weights (0: off); used for eval and sampling
    keep_checkpoints: int = 0  # also keep the last N periodic checkpoints as step-XXXXXXX.pt (0: only last/best)
    sample_temperature: float = 1.0
    max_bad_steps: int = 5  # consecutive non-finite steps before a rollback
    health_threshold: float = 1e-3  # max reconstruction error before a FInC unit is flagged
    tensorboard: bool = False  # also log to RUN_DIR/tensorboard (needs the tensorboard extra)


@dataclass
class Config:
    name: str = "custom"
    source: str = ""  # where the preset's numbers come from
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}

CONV_CHOICES = ("finc", "emerging", "cinc", "none")
COUPLING_CHOICES = ("affine", "additive")
MEMORY_CHOICES = ("store", "checkpoint", "invert")
CLASS_PRIOR_CHOICES = ("channel", "spatial")


def parse_conv_list(convs) -> list[str]:
    """`model.conv` choices from repeatable or comma-separated values ("finc,emerging"; "glow" means "none"), in
    order, each once."""
    out: list[str] = []
    for name in comma_list(convs):
        name = "none" if name == "glow" else name
        if name not in CONV_CHOICES:
            raise InputError(f"unknown convolution '{name}'; choose from {', '.join(CONV_CHOICES)}")
        out += [] if name in out else [name]
    if not out:
        raise InputError("give at least one convolution, e.g. --conv finc,emerging,cinc,none")
    return out


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check (and gently convert) a value against a field's type hint."""
    origin = get_origin(hint)
    if origin is Union:  # Optional[X]
        args = [a for a in get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{key}' must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"'{key}' must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"'{key}' must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"'{key}' must be a string, got {value!r}")
    return value


def _unknown(key: str, known: list[str]) -> ConfigError:
    near = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{near[0]}'?)" if near else f" (known: {', '.join(sorted(known))})"
    return ConfigError(f"unknown config key '{key}'{hint}")


def _apply_section(obj: Any, values: dict, prefix: str) -> None:
    hints = get_type_hints(type(obj))
    names = [f.name for f in fields(obj)]
    if not isinstance(values, dict):
        raise ConfigError(f"'{prefix}' must be a mapping of keys to values")
    for key, value in values.items():
        if key not in names:
            raise _unknown(f"{prefix}.{key}", [f"{prefix}.{n}" for n in names])
        setattr(obj, key, _coerce(value, hints[key], f"{prefix}.{key}"))


def config_from_dict(raw: dict) -> Config:
    cfg = Config()
    if not isinstance(raw, dict):
        raise ConfigError("a preset must be a YAML mapping with 'data', 'model' and 'train' sections")
    for key, value in raw.items():
        if key in SECTIONS:
            _apply_section(getattr(cfg, key), value or {}, key)
        elif key in ("name", "source"):
            setattr(cfg, key, _coerce(value, str, key))
        else:
            raise _unknown(key, ["name", "source", *SECTIONS])
    validate(cfg)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=3e-4' -> ('train.lr', 0.0003); the value is parsed as YAML."""

    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value, e.g. train.lr=3e-4")
    key, _, value = text.partition("=")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def apply_overrides(cfg: Config, overrides: Optional[dict]) -> Config:
    """Apply {'train.lr': 3e-4, 'steps': 10, ...}; a bare key is looked up in every section."""
    for key, value in (overrides or {}).items():
        if "." in key:
            section, _, name = key.partition(".")
            if section not in SECTIONS:
                raise _unknown(key, [f"{s}.{f.name}" for s, c in SECTIONS.items() for f in fields(c)])
            _apply_section(getattr(cfg, section), {name: value}, section)
        else:
            owners = [s for s, c in SECTIONS.items() if key in {f.name for f in fields(c)}]
            if len(owners) != 1:
                known = [f"{s}.{f.name}" for s, c in SECTIONS.items() for f in fields(c)]
                if owners:
                    raise ConfigError(f"'{key}' is ambiguous; write one of: {', '.join(f'{o}.{key}' for o in owners)}")
                raise _unknown(key, known)
            _apply_section(getattr(cfg, owners[0]), {key: value}, owners[0])
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Range checks that types alone cannot express."""
    m, t = cfg.model, cfg.train
    checks = [
        (m.levels >= 1, "model.levels must be >= 1"),
        (m.steps >= 1, "model.steps must be >= 1"),
        (m.kernel_size >= 1, "model.kernel_size must be >= 1"),
        (m.hidden >= 1, "model.hidden must be >= 1"),
        (m.conv1x1 in ("lu", "plain"), "model.conv1x1 must be 'lu' or 'plain'"),
        (m.conv in CONV_CHOICES, f"model.conv must be one of {', '.join(CONV_CHOICES)}, got {m.conv!r}"),
        (0.0 <= m.alpha < 0.5, "model.alpha must be in [0, 0.5)"),
        (
            m.coupling in COUPLING_CHOICES,
            f"model.coupling must be one of {', '.join(COUPLING_CHOICES)}, got {m.coupling!r}",
        ),
        (m.max_log_scale > 0, "model.max_log_scale must be > 0"),
        (m.finc_gain_cap is None or m.finc_gain_cap > 1, "model.finc_gain_cap must be > 1 or null"),
        (
            m.dequantization in ("uniform", "variational"),
            "model.dequantization must be 'uniform' or 'variational'",
        ),
        (m.dequant_hidden >= 1 and m.dequant_steps >= 0, "model.dequant_hidden must be >= 1, dequant_steps >= 0"),
        (t.steps >= 0, "train.steps must be >= 0"),
        (t.batch_size >= 1, "train.batch_size must be >= 1"),
        (t.eval_batch_size >= 1, "train.eval_batch_size must be >= 1"),
        (t.optimizer in ("adam", "adamax", "adamw"), "train.optimizer must be adam, adamax or adamw"),
        (t.lr > 0, "train.lr must be > 0"),
        (t.lr_decay in ("none", "cosine", "exponential"), "train.lr_decay must be none, cosine or exponential"),
        (t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:"), "train.device must be auto, cpu or cuda"),
        (t.precision in ("32", "bf16"), "train.precision must be 32 or bf16"),
        (t.memory in MEMORY_CHOICES, f"train.memory must be one of {', '.join(MEMORY_CHOICES)}, got {t.memory!r}"),
        (t.accumulate >= 1, "train.accumulate must be >= 1"),
        (t.warmup_steps >= 0, "train.warmup_steps must be >= 0"),
        (t.grad_clip is None or t.grad_clip > 0, "train.grad_clip must be > 0 or null"),
        (t.sample_temperature > 0, "train.sample_temperature must be > 0"),
        (min(t.log_every, t.eval_every, t.sample_every, t.checkpoint_every) >= 1, "train.*_every must be >= 1"),
        (t.max_bad_steps >= 1, "train.max_bad_steps must be >= 1"),
        (t.keep_checkpoints >= 0, "train.keep_checkpoints must be >= 0"),
        (0.0 <= t.ema_decay < 1.0, "train.ema_decay must be in [0, 1) (0 turns EMA off)"),
        (
            m.class_prior in CLASS_PRIOR_CHOICES,
            f"model.class_prior must be one of {', '.join(CLASS_PRIOR_CHOICES)}, got {m.class_prior!r}",
        ),
        (t.class_weight >= 0, "train.class_weight must be >= 0 (0 turns the class head off)"),
        (cfg.data.translate >= 0, "data.translate must be >= 0"),
        (cfg.data.num_workers >= 0, "data.num_workers must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if m.conditional and cfg.data.name in DATASETS and dataset_info(cfg.data.name).label_kind != "class":
        info = dataset_info(cfg.data.name)
        raise ConfigError(
            f"model.conditional needs one class per image, but {info.name} has {info.num_classes} binary "
            f"{info.label_kind}; set model.conditional=false"
        )


# What may change when a run is resumed: its length, schedule, batching, logging and where data
# comes from. Everything else (the architecture, the dataset and its augmentation, the optimizer,
# the seed) is fixed by the checkpoint: changing it would not continue the same run.
RESUMABLE_KEYS = frozenset(
    [f"data.{k}" for k in ("data_dir", "cache_dir", "num_workers")]
    + [
        f"train.{k}"
        for k in (
            "steps",
            "lr",
            "weight_decay",
            "warmup_steps",
            "lr_decay",
            "lr_decay_rate",
            "grad_clip",
            "batch_size",
            "eval_batch_size",
            "accumulate",
            "precision",
            "memory",
            "device",
            "log_every",
            "eval_every",
            "sample_every",
            "checkpoint_every",
            "keep_checkpoints",
            "sample_temperature",
            "max_bad_steps",
            "health_threshold",
            "tensorboard",
        )
    ]
)


def _qualified(key: str) -> str:
    if "." in key:
        return key
    owners = [s for s, c in SECTIONS.items() if key in {f.name for f in fields(c)}]
    return f"{owners[0]}.{key}" if len(owners) == 1 else key


def check_resume_overrides(run: Config, overrides: Optional[dict]) -> None:
    """Refuse, before anything is loaded, an override that would change a key fixed by the run."""
    for key, value in (overrides or {}).items():
        name = _qualified(key)
        section, _, field_name = name.partition(".")
        if name in RESUMABLE_KEYS or section not in SECTIONS or not hasattr(getattr(run, section), field_name):
            continue
        before = getattr(getattr(run, section), field_name)
        try:
            after = _coerce(value, get_type_hints(SECTIONS[section])[field_name], name)
        except ConfigError:
            after = value
        if after != before:
            raise ConfigError(
                f"{name} cannot change on resume ({before} in the run, {after} given); start a new run with "
                f"--out to change it (keys that may change: train.steps, the learning-rate schedule, batching, logging)"
            )


def changed_keys(before: Config, after: Config) -> list[tuple[str, Any, Any]]:
    """(section.key, old, new) for every key whose value differs between two configs."""
    out = []
    for section in SECTIONS:
        a, b = getattr(before, section), getattr(after, section)
        out += [
            (f"{section}.{f.name}", getattr(a, f.name), getattr(b, f.name))
            for f in fields(a)
            if getattr(a, f.name) != getattr(b, f.name)
        ]
    return out


def _read_yaml(path: Path) -> dict:

    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read preset file {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"preset {path} is not valid YAML{where}; fix the file") from None
    return raw if raw is not None else {}


def resolve_preset_path(name_or_path: Union[str, os.PathLike]) -> Path:
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or os.sep in text:
        if not path.is_file():
            raise ConfigError(f"preset file {path} does not exist")
        return path
    candidate = PRESET_DIR / f"{text}.yaml"
    if not candidate.is_file():
        raise ConfigError(f"unknown preset '{text}'; choose one of: {', '.join(list_presets())} or give a .yaml path")
    return candidate


def load_preset(name_or_path: Union[str, os.PathLike] = "digits", overrides: Optional[dict] = None) -> Config:
    """Load a preset by name (presets/NAME.yaml) or path, then apply overrides."""
    cfg = config_from_dict(_read_yaml(resolve_preset_path(name_or_path)))
    return apply_overrides(cfg, overrides)


def config_yaml(cfg: Config) -> str:
    """The resolved config as the YAML text a run saves (and `finc config` prints)."""

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def save_config(cfg: Config, path: Union[str, os.PathLike]) -> None:

    atomic_write_text(Path(path), config_yaml(cfg))
