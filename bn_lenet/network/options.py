"""The model and normalization options: what each one means, the presets, and which combinations a norm can
honor.

The network's facts (norm kinds, the layers that can carry a norm and their channels) live here, below both
config.py (which validates a config with ``check``) and model.py (which builds it with ``effective``).

Presets bundle the three conventions the libraries disagree on (the d2l chapter, PyTorch, Keras):

    tutorial   momentum 0.9,  eps 1e-5, moving variance from the biased batch variance (the scratch default)
    pytorch    momentum 0.9,  eps 1e-5, unbiased                                       (the torch default)
    keras      momentum 0.99, eps 1e-3, biased

Momentum is always in the kept-weight convention, moving = m * moving + (1 - m) * batch (Keras's and the
tutorial's); nn.BatchNorm's ``momentum`` is 1 - m (see ``torch_momentum``). ``bn.preset``, ``bn.momentum``,
``bn.eps`` and ``bn.unbiased`` are "not set" by default ("" / None): the norm's own preset applies, and an
explicitly set key overrides its part of the preset.

A setting that silently does nothing would corrupt a study, so ``check`` refuses every non-default key that
has no effect under the chosen norm, and every combination a norm cannot honor, with one ConfigError naming
the key and why.
"""

from decimal import Decimal

from ..errors import ConfigError

NORMS = ("scratch", "torch", "none", "layer", "group")
BATCH_NORMS = ("scratch", "torch")                 # the norms with batch and moving statistics
LAYERS = ("conv1", "conv2", "fc1", "fc2")          # the layers that can carry a norm, in network order
CHANNELS = {"conv1": 6, "conv2": 16, "fc1": 120, "fc2": 84}
PLACEMENTS = ("before", "after")
ACTIVATIONS = ("sigmoid", "relu")
NORMALIZE = ("full", "mean", "var")
INITS = ("xavier", "torch", "kaiming")             # model.init: model.init_weights says what each draws
PRESETS = {"tutorial": {"momentum": 0.9, "eps": 1e-5, "unbiased": False},
           "pytorch": {"momentum": 0.9, "eps": 1e-5, "unbiased": True},
           "keras": {"momentum": 0.99, "eps": 1e-3, "unbiased": False}}
# What each norm does when bn.preset is not set: scratch and torch as today; GroupNorm's eps is PyTorch's.
DEFAULT_PRESET = {"scratch": "tutorial", "torch": "pytorch", "layer": "pytorch", "group": "pytorch",
                  "none": "tutorial"}


def preset_of(cfg) -> str:
    return cfg.bn.preset or DEFAULT_PRESET[cfg.model.norm]


def effective(cfg) -> dict:
    """{"momentum", "eps", "unbiased"} a run uses: the keys set explicitly, the rest from the preset."""
    preset = PRESETS[preset_of(cfg)]
    return {key: preset[key] if getattr(cfg.bn, key) is None else getattr(cfg.bn, key) for key in preset}


def torch_momentum(m: float) -> float:
    """nn.BatchNorm's momentum for kept weight m, computed in decimal so that m = 0.9 gives exactly PyTorch's
    default 0.1 (in binary 1 - 0.9 is 0.09999999999999998, which would change the torch runs' numbers)."""
    return float(Decimal(1) - Decimal(repr(m)))


def carries_norm(cfg) -> list:
    """The layers that get a norm layer, in network order."""
    return [] if cfg.model.norm == "none" else [name for name in LAYERS if name in cfg.model.norm_layers]


def _refuse(key: str, value, why: str):
    raise ConfigError(f"{key} = {value!r} {why}")


def check(cfg, defaults) -> None:
    """Refuse values out of range and combinations the chosen norm cannot honor (``defaults``: a Config with
    every key at its default, to tell which keys were set)."""
    m, bn = cfg.model, cfg.bn
    one_of = lambda allowed: f"is not allowed: it must be one of {', '.join(allowed)}"  # noqa: E731
    if m.placement not in PLACEMENTS:
        _refuse("model.placement", m.placement, one_of(PLACEMENTS))
    if m.activation not in ACTIVATIONS:
        _refuse("model.activation", m.activation, one_of(ACTIVATIONS))
    unknown = [name for name in m.norm_layers if name not in LAYERS]
    if unknown:
        _refuse("model.norm_layers", m.norm_layers, f"names unknown layer(s) {', '.join(map(repr, unknown))}: "
                f"choose from {', '.join(LAYERS)}")
    if len(set(m.norm_layers)) != len(m.norm_layers):
        _refuse("model.norm_layers", m.norm_layers, "names a layer twice")
    if not 0.0 <= m.dropout < 1.0:
        _refuse("model.dropout", m.dropout, "is out of range: it must be in [0, 1) (the probability of zeroing a unit; "
                "0 = no dropout)")
    if m.init not in INITS:
        _refuse("model.init", m.init, one_of(INITS))
    if not (m.init_scale > 0 and m.init_scale < float("inf")):
        _refuse("model.init_scale", m.init_scale, "is out of range: it must be a finite number > 0 (1 = the init "
                "as drawn)")
    if bn.preset and bn.preset not in PRESETS:
        _refuse("bn.preset", bn.preset, one_of(PRESETS) + " (or leave it unset: the norm's own)")
    if bn.momentum is not None and not 0.0 <= bn.momentum <= 1.0:
        _refuse("bn.momentum", bn.momentum, "is out of range: it must be in [0, 1] (the weight kept on the old "
                "moving value: moving = m * moving + (1 - m) * batch)")
    if bn.eps is not None and not (bn.eps > 0 and bn.eps < float("inf")):
        _refuse("bn.eps", bn.eps, "is out of range: it must be a finite number > 0")
    if bn.normalize not in NORMALIZE:
        _refuse("bn.normalize", bn.normalize, one_of(NORMALIZE))
    if bn.ghost_batch != 0 and not 2 <= bn.ghost_batch <= cfg.train.batch_size:
        _refuse("bn.ghost_batch", bn.ghost_batch, f"is out of range: it must be 0 (off) or from 2 to "
                f"train.batch_size ({cfg.train.batch_size})")
    if bn.groups < 1:
        _refuse("bn.groups", bn.groups, "is out of range: it must be >= 1")
    _check_combinations(cfg, defaults)


def _set_keys(section, default_section, keys) -> list:
    return [k for k in keys if getattr(section, k) != getattr(default_section, k)]


def _check_combinations(cfg, defaults) -> None:
    m, bn, norm = cfg.model, cfg.bn, cfg.model.norm
    bn_keys = [f.name for f in bn.__dataclass_fields__.values()]
    set_bn = _set_keys(bn, defaults.bn, bn_keys)
    if not carries_norm(cfg):  # no norm layer at all: every norm setting would do nothing
        model_keys = ("placement", "norm_layers", "bias") if norm == "none" else ("placement", "bias")
        why = ("model.norm = 'none' (no norm layer): leave it at its default, or choose a norm" if norm == "none"
               else "model.norm_layers = [] (no layer carries a norm): leave it at its default, or name a layer")
        for section, key in ([("model", k) for k in _set_keys(m, defaults.model, model_keys)] +
                             [("bn", k) for k in set_bn]):
            _refuse(f"{section}.{key}", getattr(getattr(cfg, section), key), f"has no effect with {why}")

    eff = effective(cfg) if norm != "none" else None
    only_scratch = {"normalize": "full", "ghost_batch": 0}
    if norm in ("torch", "layer", "group"):
        for key, default in only_scratch.items():
            if getattr(bn, key) != default:
                _refuse(f"bn.{key}", getattr(bn, key), f"is for model.norm = 'scratch' only; model.norm = {norm!r} "
                        f"cannot honor it")
    if norm == "torch" and not eff["unbiased"]:
        why = ("bn.unbiased = false" if bn.unbiased is False else f"bn.preset = {preset_of(cfg)!r} means a moving "
               f"variance from the biased batch variance")
        key, value = ("bn.unbiased", bn.unbiased) if bn.unbiased is False else ("bn.preset", bn.preset)
        _refuse(key, value, f"cannot be honored by model.norm = 'torch': {why}, but nn.BatchNorm's moving variance "
                f"is always unbiased; use model.norm = 'scratch', or set bn.unbiased = true")
    if norm in ("layer", "group"):
        for key in ("momentum", "unbiased"):
            if getattr(bn, key) is not None:
                _refuse(f"bn.{key}", getattr(bn, key), f"has no effect with model.norm = {norm!r} (no moving "
                        f"statistics); leave it unset")
        for key in ("precise_bn", "batch_stats"):
            if getattr(cfg.eval, key):
                _refuse(f"eval.{key}", True, f"has no effect with model.norm = {norm!r}: it has no batch or "
                        f"moving statistics; set it false")
    if not carries_norm(cfg):
        # eval.precise_bn with model.norm = none was accepted before the options existed: it stays accepted.
        for key in ("batch_stats",) if norm == "none" else ("precise_bn", "batch_stats"):
            if getattr(cfg.eval, key):
                _refuse(f"eval.{key}", True, f"has no effect: no layer carries a norm (model.norm = {norm!r}, "
                        f"model.norm_layers = {m.norm_layers!r}), so there are no batch statistics; set it false")
    if norm not in ("group", "none") and bn.groups != defaults.bn.groups:
        _refuse("bn.groups", bn.groups, f"has no effect with model.norm = {norm!r} (only 'group' uses it)")
    if norm == "group":
        for name in carries_norm(cfg):
            if CHANNELS[name] % bn.groups:
                _refuse("bn.groups", bn.groups, f"does not divide {name}'s {CHANNELS[name]} channels: choose a "
                        f"divisor of every normalized layer's channels ({', '.join(f'{n} {CHANNELS[n]}' for n in carries_norm(cfg))})")
    if cfg.log.grad_norms and cfg.train.cuda_graph:
        _refuse("log.grad_norms", True, "cannot be used with train.cuda_graph = true (the gradients live inside "
                "the captured graph); turn one of them off")


def describe(cfg) -> list:
    """Two lines for ``bn-lenet inspect``: the model's options and the effective normalization options."""
    m, bn, norm = cfg.model, cfg.bn, cfg.model.norm
    layers = " ".join(carries_norm(cfg)) or "none"
    lines = [f"model: norm {norm}, placement {m.placement}, norm layers {layers}, activation {m.activation}, "
             f"bias {str(m.bias).lower()}"]
    if (m.dropout, m.init, m.init_scale) != (0.0, "xavier", 1.0):  # the tutorial's line stays as it was
        lines[0] += f", dropout {m.dropout:g}, init {m.init} x {m.init_scale:g}"
    if not carries_norm(cfg):
        return lines + ["bn: no norm layer"]
    eff, on = effective(cfg), lambda flag: str(flag).lower()  # noqa: E731
    moving = norm in BATCH_NORMS
    momentum = f"{eff['momentum']}" if moving else "-"
    if norm == "torch":
        momentum += f" (nn.BatchNorm momentum {torch_momentum(eff['momentum'])})"
    groups = {"group": bn.groups, "layer": 1}.get(norm, "-")
    scratch_only = lambda value: value if norm == "scratch" else "-"  # noqa: E731
    lines.append(f"bn: preset {preset_of(cfg)}{'' if bn.preset else ' (the norm default)'}, momentum {momentum}, "
                 f"eps {eff['eps']}, unbiased {on(eff['unbiased']) if moving else '-'}, scale {on(bn.scale)}, "
                 f"center {on(bn.center)}, normalize {scratch_only(bn.normalize)}, "
                 f"ghost_batch {scratch_only(bn.ghost_batch or 'off')}, groups {groups}")
    return lines
