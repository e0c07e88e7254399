"""Typed run configuration: defaults in one place, TOML files, ``--set section.key=value`` overrides.

An unknown section or key, a wrong type or an out-of-range value is a ConfigError naming the key.
"""

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ..network import options
from ..errors import ConfigError
from ..network.options import NORMS

LR_SCHEDULES = ("constant", "cosine", "step")  # train.epoch_lr says what each does


# --- defaults: the tutorial's setup --------------------------------------------------------------------

@dataclass
class ModelConfig:
    norm: str = "scratch"          # "scratch" (our BatchNorm) | "torch" (nn.BatchNorm1d/2d) | "none" | "layer" |
                                   # "group" (GroupNorm with 1 / bn.groups groups, per-channel gamma/beta)
    placement: str = "before"      # norm before the activation (the tutorial's) | "after" it
    norm_layers: list[str] = field(default_factory=lambda: list(options.LAYERS))  # layers carrying a norm
    activation: str = "sigmoid"    # every hidden activation: "sigmoid" | "relu"
    bias: bool = True              # false: no bias in the conv/linear layers that carry a norm (beta does its job)
    dropout: float = 0.0           # dropout probability on the output of fc1 and fc2 (training only); 0 = none
    init: str = "xavier"           # conv/linear weights: "xavier" (uniform, the tutorial's) | "torch" (PyTorch's own
                                   # default) | "kaiming" (He normal, fan_in, ReLU gain); biases: PyTorch's default
    init_scale: float = 1.0        # multiplies the initial conv/linear weights (after model.init); > 0


@dataclass
class BNConfig:
    """Normalization options (see options.py). None / "" = not set: the norm's preset applies."""
    preset: str = ""               # "tutorial" | "pytorch" | "keras"; "" = the norm's own (scratch: tutorial)
    momentum: float | None = None  # kept weight: moving = m * moving + (1 - m) * batch; 0 <= m <= 1
    eps: float | None = None       # > 0
    unbiased: bool | None = None   # moving variance from the unbiased batch variance
    scale: bool = True             # false: gamma fixed at 1 (not trained)
    center: bool = True            # false: beta fixed at 0 (not trained)
    normalize: str = "full"        # lite BN (scratch only): "full" | "mean" (x - mean) | "var" (x / std)
    ghost_batch: int = 0           # scratch only: normalize each group of this many examples on its own; 0 = off
    groups: int = 2                # groups of model.norm = "group"
    sync: bool = True              # torchrun job: BN statistics over the global batch (false: each process's slice,
                                   # "local BN"); one process has nothing to sync and ignores it (distributed.py)


@dataclass
class TrainConfig:
    lr: float = 1.0                # SGD, no momentum
    lr_schedule: str = "constant"  # "constant" (the tutorial's) | "cosine" | "step": per epoch (train.epoch_lr)
    epochs: int = 10
    batch_size: int = 256
    seed: int = 0                  # weights init and the per-epoch training order
    device: str = "auto"           # "auto" (cuda if available) | "cpu" | "cuda" | "cuda:N"
    limit_batches: int = 0         # train on at most this many batches per epoch; 0 = all (quick runs, tests)
    compile: bool = False          # torch.compile the training step
    cuda_graph: bool = False       # capture the whole step (forward, backward, SGD) in a CUDA graph for the
                                   # full-size batches (graph_step.py); ignored on CPU. Off: never run on a GPU here
    precision: str = "fp32"        # "fp32" (true IEEE fp32, TF32 off on a GPU) | "tf32" (fp32, with TF32 tensor-core
                                   # math for convs/matmuls on a GPU; fp32 on CPU) | "bf16" (autocast; BN stats fp32)
    threads: int = 0               # CPU threads for torch; 0 = torch's default (processes > 1: 0 = 1 per process)
    processes: int = 1             # data-parallel processes: > 1 launches the run as a torchrun job of that many
                                   # (bn_lenet/training/launch.py); 1 = one process, or whatever torchrun gives it
    weight_decay: float = 0.0      # SGD weight decay on the conv/linear weights only (not biases, gamma, beta); >= 0


@dataclass
class EvalConfig:
    batch_size: int = 1000         # test accuracy does not depend on it (eval mode uses moving statistics)
    precise_bn: bool = False       # also report test accuracy with BN statistics re-estimated each epoch
    precise_bn_batches: int = 0    # training batches used to re-estimate them; 0 = the whole training set
    batch_stats: bool = False      # also report test accuracy with each test batch's own BN statistics
    precise_bn_epochs: str = "all"  # eval.precise_bn after "all" epochs or only the "last" one (cheaper)


@dataclass
class DataConfig:
    root: str = ""                 # folder with the four IDX files; "" = search (see bn_lenet/training/data.py)


@dataclass
class LogConfig:
    grad_norms: bool = False       # grad_norms.jsonl: per epoch, mean gradient L2 norm of every weight, gamma, beta
    tensorboard: bool = False      # also write TensorBoard event files into the run's tb/ (bn_lenet/training/tb_log.py);
                                   # needs the extra: pip install 'bn-lenet[tensorboard]'
    landscape: bool = False        # landscape.jsonl: loss landscape and internal covariate shift along the SGD step
                                   # (bn_lenet/training/landscape.py)
    landscape_every: int = 50      # measure before steps 1, 1 + N, 1 + 2N, ... of the run
    eval_every: float = 0.0        # curve.jsonl: test accuracy every this fraction of an epoch, in (0, 1]; 0 = off
                                   # (bn_lenet/training/curve.py)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    data: DataConfig = field(default_factory=DataConfig)
    bn: BNConfig = field(default_factory=BNConfig)       # new sections go last: old files and messages keep
    log: LogConfig = field(default_factory=LogConfig)    # their order


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
PRECISIONS = ("fp32", "tf32", "bf16")
PRECISE_BN_EPOCHS = ("all", "last")


# --- validation ---------------------------------------------------------------------------------------

def _check_type(key: str, value, expected):
    if isinstance(expected, types.UnionType):  # "X | None": None means not set (never written, TOML has no null)
        if value is None:
            return None
        expected = next(t for t in typing.get_args(expected) if t is not type(None))
    if typing.get_origin(expected) is list:  # list[str]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f'{key} must be a list of str, e.g. ["conv1", "fc1"] (quoted in --set: '
                              f"--set '{key}=[\"conv1\"]'), got {type(value).__name__} {value!r}")
        return list(value)
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
        ("train.lr_schedule", t.lr_schedule in LR_SCHEDULES, '"constant", "cosine" or "step"'),
        ("train.precision", t.precision in PRECISIONS, '"fp32", "tf32" or "bf16"'),
        ("train.threads", t.threads >= 0, ">= 0 (0 = torch's default)"),
        ("train.processes", t.processes >= 1, ">= 1 (1 = one process)"),
        ("eval.batch_size", e.batch_size >= 1, ">= 1"),
        ("eval.precise_bn_batches", e.precise_bn_batches >= 0, ">= 0 (0 = the whole training set)"),
        ("train.weight_decay", math.isfinite(t.weight_decay) and t.weight_decay >= 0, "a finite number >= 0 (0 = off)"),
        ("eval.precise_bn_epochs", e.precise_bn_epochs in PRECISE_BN_EPOCHS, '"all" or "last"'),
        ("log.landscape_every", cfg.log.landscape_every >= 1, ">= 1 (training steps between two measurements)"),
        ("log.eval_every", math.isfinite(cfg.log.eval_every) and 0 <= cfg.log.eval_every <= 1,
         "0 (off) or a fraction of an epoch in (0, 1], e.g. 0.25"),
    ]
    for key, ok, allowed in rules:
        if not ok:
            section, name = key.split(".")
            value = getattr(getattr(cfg, section), name)
            raise ConfigError(f"{key} = {value!r} is out of range: it must be {allowed}")
    if t.lr_schedule != "constant" and t.cuda_graph:
        # The captured step replays the lr it was captured with: a schedule would silently not apply.
        raise ConfigError(f"train.lr_schedule = {t.lr_schedule!r} cannot be used with train.cuda_graph = true (a "
                          f"captured step keeps the lr it was captured with); use lr_schedule = \"constant\" or "
                          f"turn cuda_graph off")
    if t.compile and t.cuda_graph:
        # Never run together (torch.compile's code inside our own whole-step graph capture): refused until it
        # has been verified on a GPU (then allow it and say where).
        raise ConfigError("train.compile = true together with train.cuda_graph = true has not been verified on a "
                          "GPU in this project; set one of them to false")
    _check_studies(cfg)
    if t.processes > 1:
        check_processes(cfg)
    options.check(cfg, Config())  # model and BN options: ranges, and what the chosen norm can honor
    return cfg


def has_batch_stats(cfg: Config) -> bool:
    """Whether the network normalizes with batch statistics anywhere (BN in at least one layer): only then do
    moving statistics, precise BN and synced BN mean anything."""
    return bool(cfg.model.norm in options.BATCH_NORMS and cfg.model.norm_layers)


def _check_studies(cfg: Config) -> None:
    """The keys of the studies' measurements (precise BN once, the landscape): what would do nothing, and what
    cannot be combined with them."""
    log, defaults = cfg.log, LogConfig()
    if cfg.eval.precise_bn_epochs != "all" and not cfg.eval.precise_bn:
        raise ConfigError(f"eval.precise_bn_epochs = {cfg.eval.precise_bn_epochs!r} has no effect without "
                          f"eval.precise_bn = true; set eval.precise_bn=true or drop it")
    if log.landscape_every != defaults.landscape_every and not log.landscape:
        raise ConfigError(f"log.landscape_every = {log.landscape_every} has no effect without log.landscape = true; "
                          f"set log.landscape=true or drop it")
    if log.landscape:
        # The measurement runs eagerly on a copy of the model before the step; it must see the step's own
        # gradient (same weights, batch, dropout mask). A captured or compiled step is another computation.
        for key, on, why in (("train.cuda_graph", cfg.train.cuda_graph, "the captured step is replayed as a whole"),
                             ("train.compile", cfg.train.compile, "the measurement is eager, so its gradient would "
                              "not be the compiled step's own")):
            if on:
                raise ConfigError(f"log.landscape = true cannot be used with {key} = true ({why}); turn one of "
                                  f"them off")


def check_processes(cfg: Config, cuda: bool | None = None, world: int | None = None) -> None:
    """What a data-parallel job cannot do with this config, as one error before anything trains. Called before
    a job of train.processes > 1 is launched, and by every process of a torchrun job (distributed.check, with
    ``world`` = the job's size, which then also checks the last batch against the data). ``cuda``: whether a GPU
    is visible, to settle train.device = "auto" (None: not known, only an explicit "cpu" is known to be the CPU)."""
    t, n = cfg.train, world or cfg.train.processes
    where = f"train.processes = {n}" if world is None else f"a torchrun job of {n} processes"
    for key, on in (("train.compile", t.compile), ("train.cuda_graph", t.cuda_graph)):
        if on:
            raise ConfigError(f"{key} = true cannot be used with {where} (DDP's and synced BN's collectives are "
                              f"outside the compiled step); set {key}=false"
                              + (" or train.processes=1" if world is None else ""))
    for key, on in (("log.landscape", cfg.log.landscape), ("log.eval_every", cfg.log.eval_every)):
        if on:  # each measures one process's model and batch; not written for a job
            raise ConfigError(f"{key} = {on!r} cannot be used with {where} (it measures the model of one process); "
                              f"turn it off" + (" or set train.processes=1" if world is None else ""))
    if world is None and t.device.startswith("cuda:"):
        raise ConfigError(f"train.device = {t.device!r} with train.processes = {n}: each process uses the GPU of "
                          f"its local rank; use train.device=cuda (or auto)")
    if not has_batch_stats(cfg) and not cfg.bn.sync:
        raise ConfigError(f"bn.sync = false has no effect: model.norm = {cfg.model.norm} has no batch statistics "
                          f"(nothing to sync); drop it")
    on_cpu = t.device == "cpu" or (t.device == "auto" and cuda is False)
    if cfg.model.norm == "torch" and cfg.bn.sync and on_cpu:
        raise ConfigError(f"model.norm = torch with bn.sync = true and {where} needs CUDA: nn.SyncBatchNorm only "
                          f"runs on GPUs (NCCL). On CPU use model.norm=scratch (our BN syncs over gloo too) or "
                          f"bn.sync=false")
    if world is None:  # in the job, distributed.check asks again, with the last batch
        check_slices(cfg, n)


def check_slices(cfg: Config, world: int, last: int | None = None) -> None:
    """Every process of a job needs examples of every batch it slices: at least 1, or 2 with local BN (each slice
    is normalized alone: 2 values per channel). Before a job is launched only the full batch is known; in the
    job, ``last`` is the epoch's last batch (short when the data does not divide)."""
    t = cfg.train
    need = 2 if has_batch_stats(cfg) and not cfg.bn.sync else 1
    local = " (local BN, bn.sync=false)" if need == 2 else ""
    if last is None:
        if t.batch_size // world < need:
            raise ConfigError(f"train.batch_size = {t.batch_size} over train.processes = {world} leaves a process "
                              f"{t.batch_size // world} example(s) of a batch; each needs at least {need}{local}: use "
                              f"a larger train.batch_size or fewer processes")
        return
    smallest = min(t.batch_size, last) // world
    if smallest < need:
        which = "the last batch" if last < t.batch_size else "a batch"
        raise ConfigError(f"train.batch_size = {t.batch_size} over {world} processes leaves a process "
                          f"{smallest} example(s) of {which} ({min(last, t.batch_size)}); "
                          f"each needs at least {need}{local}: use a larger train.batch_size or fewer processes")


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
        checked = from_dict({section: {key: value}}, where=f"--set {item}")  # checks name and type
        setattr(getattr(cfg, section), key, getattr(getattr(checked, section), key))
    return cfg


def resolve(path=None, overrides=()) -> Config:
    """The config a run uses: file (or defaults), then overrides, then validation."""
    cfg = load(path) if path else Config()
    return validate(apply_overrides(cfg, list(overrides)))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_toml(cfg: Config) -> str:
    """The resolved config as TOML (values are str, bool, int, float or lists of str). Keys not set (None,
    "from the preset") are left out: TOML has no null, and loading the file gives None back for them."""
    lines = []
    for section, values in to_dict(cfg).items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is None:
                continue
            text = json.dumps(value) if isinstance(value, (str, bool, list)) else repr(value)
            lines.append(f"{key} = {text}")
        lines.append("")
    return "\n".join(lines)
