"""Typed run configuration: defaults in one place, TOML files, ``--set section.key=value`` overrides.

An unknown section or key, a wrong type or an out-of-range value is a ConfigError naming the key.
"""

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from .errors import ConfigError
from .model import NORMS


# --- defaults: the tutorial's setup --------------------------------------------------------------------

@dataclass
class ModelConfig:
    norm: str = "scratch"          # "scratch" (our BatchNorm) | "torch" (nn.BatchNorm1d/2d) | "none"


@dataclass
class TrainConfig:
    lr: float = 1.0                # SGD, no momentum, no weight decay
    epochs: int = 10
    batch_size: int = 256
    seed: int = 0                  # weights init and the per-epoch training order
    device: str = "auto"           # "auto" (cuda if available) | "cpu" | "cuda" | "cuda:N"
    limit_batches: int = 0         # train on at most this many batches per epoch; 0 = all (quick runs, tests)
    compile: bool = False          # torch.compile the training step
    cuda_graph: bool = False       # capture the whole step (forward, backward, SGD) in a CUDA graph for the
                                   # full-size batches (graph_step.py); ignored on CPU. Off: never run on a GPU here
    precision: str = "fp32"        # "fp32" | "bf16" (autocast; BN statistics stay fp32)
    threads: int = 0               # CPU threads for torch; 0 = torch's default


@dataclass
class EvalConfig:
    batch_size: int = 1000         # test accuracy does not depend on it (eval mode uses moving statistics)
    precise_bn: bool = False       # also report test accuracy with BN statistics re-estimated each epoch
    precise_bn_batches: int = 0    # training batches used to re-estimate them; 0 = the whole training set


@dataclass
class DataConfig:
    root: str = ""                 # folder with the four IDX files; "" = search (see bn_lenet/data.py)


@dataclass
class BNConfig:
    sync: bool = True              # torchrun job: BN statistics over the global batch (false: each process's slice,
                                   # "local BN"); one process has nothing to sync and ignores it (distributed.py)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    data: DataConfig = field(default_factory=DataConfig)
    bn: BNConfig = field(default_factory=BNConfig)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


# --- validation ---------------------------------------------------------------------------------------

def _check_type(key: str, value, expected):
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError(f"{key} must be {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def validate(cfg: Config) -> Config:
    """Reject out-of-range values, naming the key and the allowed range."""
    t, e = cfg.train, cfg.eval
    rules = [
        ("model.norm", cfg.model.norm in NORMS, f"one of {', '.join(NORMS)}"),
        ("train.lr", math.isfinite(t.lr) and t.lr > 0, "a finite number > 0"),
        ("train.epochs", t.epochs >= 1, ">= 1"),
        ("train.batch_size", t.batch_size >= 2, ">= 2 (batch normalization needs 2 values per channel)"),
        ("train.seed", t.seed >= 0, ">= 0"),
        ("train.device", t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:"),
         '"auto", "cpu", "cuda" or "cuda:N"'),
        ("train.limit_batches", t.limit_batches >= 0, ">= 0 (0 = all batches)"),
        ("train.precision", t.precision in ("fp32", "bf16"), '"fp32" or "bf16"'),
        ("train.threads", t.threads >= 0, ">= 0 (0 = torch's default)"),
        ("eval.batch_size", e.batch_size >= 1, ">= 1"),
        ("eval.precise_bn_batches", e.precise_bn_batches >= 0, ">= 0 (0 = the whole training set)"),
    ]
    for key, ok, allowed in rules:
        if not ok:
            section, name = key.split(".")
            value = getattr(getattr(cfg, section), name)
            raise ConfigError(f"{key} = {value!r} is out of range: it must be {allowed}")
    return cfg


def from_dict(d: dict, where: str = "config") -> Config:
    """Build a Config from nested dicts, rejecting unknown sections/keys and wrong types."""
    cfg = Config()
    for section, values in d.items():
        if section not in SECTIONS:
            raise ConfigError(f"{where}: unknown section [{section}]; known sections: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [{section}] must be a table of keys, got {values!r}")
        target = getattr(cfg, section)
        known = {f.name: f.type for f in dataclasses.fields(target)}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{where}: unknown key {section}.{key}; known keys in [{section}]: "
                                  f"{', '.join(known)}")
            try:
                setattr(target, key, _check_type(f"{section}.{key}", value, known[key]))
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
    return cfg


def load(path) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found (the shipped configs are in configs/)") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}; give a readable TOML file "
                          f"(the shipped configs are in configs/)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file; give a TOML config such as configs/scratch_bn.toml") from None
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}; fix the file (see configs/ for examples)") from None
    return from_dict(d, where=str(path))


def apply_overrides(cfg: Config, overrides: list) -> Config:
    """Apply ``section.key=value`` strings; the value is read as TOML (``1e-3``, ``true``, ``"cpu"``),
    and a bare word is taken as a string (``model.norm=torch``)."""
    for item in overrides:
        target, sep, text = item.partition("=")
        section, dot, key = target.strip().partition(".")
        if not sep or not dot or not section or not key:
            raise ConfigError(f"bad --set {item!r}: write it as section.key=value, e.g. --set train.lr=0.5")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        from_dict({section: {key: value}}, where=f"--set {item}")  # checks name and type on its own
        setattr(getattr(cfg, section), key, _check_type(f"{section}.{key}", value,
                                                         type(getattr(getattr(cfg, section), key))))
    return cfg


def resolve(path=None, overrides=()) -> Config:
    """The config a run uses: file (or defaults), then overrides, then validation."""
    cfg = load(path) if path else Config()
    return validate(apply_overrides(cfg, list(overrides)))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_toml(cfg: Config) -> str:
    """The resolved config as TOML (all values are str, bool, int or float)."""
    lines = []
    for section, values in to_dict(cfg).items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            text = json.dumps(value) if isinstance(value, (str, bool)) else repr(value)
            lines.append(f"{key} = {text}")
        lines.append("")
    return "\n".join(lines)
