"""The option keys in the config: typed, round-tripped through config.toml, old files still load, and every
combination a norm cannot honor refused before anything is written (config.resolve and the CLI)."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bn_lenet.training import config, runs
from bn_lenet.cli import main
from bn_lenet.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "scratch_bn.toml")

# config.toml as main wrote it before the options existed (no [bn], no [log], fewer [model]/[eval] keys).
OLD_CONFIG_TOML = """[model]
norm = "torch"

[train]
lr = 1.0
epochs = 10
batch_size = 256
seed = 0
device = "auto"
limit_batches = 0
compile = false
cuda_graph = false
precision = "fp32"
threads = 0

[eval]
batch_size = 1000
precise_bn = false
precise_bn_batches = 0

[data]
root = ""
"""


@pytest.mark.parametrize("overrides", [
    [],
    ["bn.preset=keras", "bn.eps=0.01", "model.placement=after", "model.activation=relu"],
    ["bn.momentum=0.95", "bn.unbiased=true", 'model.norm_layers=["conv2", "fc1"]', "model.bias=false",
     "bn.scale=false", "bn.normalize=mean", "bn.ghost_batch=32", "eval.batch_stats=true", "log.grad_norms=true"],
    ["model.norm=group", "bn.groups=1", "bn.center=false"],
    ["model.norm=torch", "bn.momentum=0.99"],
])
def test_a_resolved_config_round_trips_exactly_through_config_toml(overrides, tmp_path):
    cfg = config.resolve(None, overrides)
    text = config.to_toml(cfg)
    assert "None" not in text and "null" not in text  # unset keys are left out: TOML has no null
    (tmp_path / "config.toml").write_text(text)
    again = config.validate(config.load(tmp_path / "config.toml"))
    assert again == cfg and config.to_dict(again) == config.to_dict(cfg)


def test_unset_preset_keys_stay_unset_and_set_ones_are_typed():
    cfg = config.resolve(None, [])
    assert (cfg.bn.preset, cfg.bn.momentum, cfg.bn.eps, cfg.bn.unbiased) == ("", None, None, None)
    cfg = config.resolve(None, ["bn.momentum=1", "bn.eps=1e-3", "bn.unbiased=true", "bn.preset=keras"])
    assert (cfg.bn.momentum, cfg.bn.eps, cfg.bn.unbiased, cfg.bn.preset) == (1.0, 1e-3, True, "keras")
    assert isinstance(cfg.bn.momentum, float)


def test_old_config_toml_without_the_new_sections_loads_with_their_defaults(tmp_path):
    (tmp_path / "config.toml").write_text(OLD_CONFIG_TOML)
    cfg = config.validate(config.load(tmp_path / "config.toml"))
    assert cfg == config.resolve(None, ["model.norm=torch"])


def test_a_checkpoint_saved_before_the_options_existed_still_resumes(tmp_path):
    cfg = config.resolve(None, ["model.norm=torch"])
    old = config.to_dict(cfg)
    del old["bn"], old["log"], old["model"]["placement"], old["eval"]["batch_stats"]
    torch.save({"config": old}, tmp_path / "checkpoint.pt")
    assert runs.checkpoint_of(tmp_path, cfg)["config"] == old  # no "differs from the config" error
    with pytest.raises(Exception, match="differs"):
        runs.checkpoint_of(tmp_path, config.resolve(None, ["model.norm=torch", "bn.eps=0.1"]))


# --- refusals -------------------------------------------------------------------------------------------------

REFUSALS = [
    # (overrides, fragments of the one error line)
    (["model.norm=torch", "bn.normalize=mean"], ["bn.normalize = 'mean'", "scratch' only"]),
    (["model.norm=torch", "bn.ghost_batch=32"], ["bn.ghost_batch = 32", "scratch' only"]),
    (["model.norm=torch", "bn.unbiased=false"], ["bn.unbiased = False", "always unbiased"]),
    (["model.norm=torch", "bn.preset=keras"], ["bn.preset = 'keras'", "always unbiased"]),
    (["model.norm=torch", "bn.preset=tutorial"], ["bn.preset = 'tutorial'", "always unbiased"]),
    (["model.norm=group", "bn.groups=4"], ["bn.groups = 4 does not divide conv1's 6 channels"]),
    (["model.norm=group", "bn.groups=3"], ["bn.groups = 3 does not divide conv2's 16 channels"]),
    (['model.norm_layers=["conv1", "conv3"]'], ["model.norm_layers", "unknown layer(s) 'conv3'"]),
    (['model.norm_layers=["fc1", "fc1"]'], ["model.norm_layers", "names a layer twice"]),
    (["model.norm_layers=conv1"], ["model.norm_layers must be a list of str"]),
    (["bn.ghost_batch=1"], ["bn.ghost_batch = 1 is out of range"]),
    (["bn.ghost_batch=257"], ["bn.ghost_batch = 257 is out of range", "train.batch_size (256)"]),
    (["bn.ghost_batch=-2"], ["bn.ghost_batch = -2 is out of range"]),
    (["bn.momentum=1.5"], ["bn.momentum = 1.5 is out of range", "[0, 1]"]),
    (["bn.momentum=-0.1"], ["bn.momentum = -0.1 is out of range"]),
    (["bn.eps=0"], ["bn.eps = 0.0 is out of range", "> 0"]),
    (["bn.eps=-1e-5"], ["bn.eps = -1e-05 is out of range"]),
    (["bn.preset=caffe"], ["bn.preset = 'caffe'", "tutorial, pytorch, keras"]),
    (["model.placement=middle"], ["model.placement = 'middle'", "before, after"]),
    (["model.activation=tanh"], ["model.activation = 'tanh'", "sigmoid, relu"]),
    (["bn.normalize=std"], ["bn.normalize = 'std'", "full, mean, var"]),
    (["bn.groups=0", "model.norm=group"], ["bn.groups = 0 is out of range"]),
    (["bn.unbiased=1"], ["bn.unbiased must be bool"]),
    (["model.norm=none", "bn.momentum=0.9"], ["bn.momentum = 0.9 has no effect with model.norm = 'none'"]),
    (["model.norm=none", "bn.preset=pytorch"], ["bn.preset = 'pytorch' has no effect"]),
    (["model.norm=none", "bn.scale=false"], ["bn.scale = False has no effect"]),
    (["model.norm=none", "model.placement=after"], ["model.placement = 'after' has no effect"]),
    (["model.norm=none", "model.bias=false"], ["model.bias = False has no effect"]),
    (["model.norm=none", 'model.norm_layers=["conv1"]'], ["model.norm_layers = ['conv1'] has no effect"]),
    (["model.norm=none", "eval.batch_stats=true"], ["eval.batch_stats = True has no effect"]),
    (["model.norm_layers=[]", "bn.eps=0.001"], ["bn.eps = 0.001 has no effect with model.norm_layers = []"]),
    (["model.norm_layers=[]", "model.bias=false"], ["model.bias = False has no effect"]),
    (["model.norm_layers=[]", "eval.batch_stats=true"], ["eval.batch_stats = True has no effect"]),
    (["model.norm_layers=[]", "eval.precise_bn=true"], ["eval.precise_bn = True has no effect"]),
    (["bn.groups=3"], ["bn.groups = 3 has no effect with model.norm = 'scratch'"]),
    (["model.norm=torch", "bn.groups=3"], ["bn.groups = 3 has no effect with model.norm = 'torch'"]),
    (["model.norm=layer", "bn.groups=3"], ["bn.groups = 3 has no effect with model.norm = 'layer'"]),
    (["model.norm=layer", "bn.momentum=0.9"], ["bn.momentum = 0.9 has no effect", "no moving statistics"]),
    (["model.norm=group", "bn.unbiased=true"], ["bn.unbiased = True has no effect"]),
    (["model.norm=layer", "bn.normalize=var"], ["bn.normalize = 'var'", "scratch' only"]),
    (["model.norm=group", "bn.ghost_batch=8"], ["bn.ghost_batch = 8", "scratch' only"]),
    (["model.norm=layer", "eval.precise_bn=true"], ["eval.precise_bn = True has no effect"]),
    (["model.norm=group", "eval.batch_stats=true"], ["eval.batch_stats = True has no effect"]),
    (["log.grad_norms=true", "train.cuda_graph=true"], ["log.grad_norms = True cannot be used with "
                                                        "train.cuda_graph"]),
]
IDS = ["|".join(o) for o, _ in REFUSALS]


@pytest.mark.parametrize("overrides,fragments", REFUSALS, ids=IDS)
def test_config_resolve_refuses_naming_the_key_and_why(overrides, fragments):
    with pytest.raises(ConfigError) as e:
        config.resolve(None, overrides)
    for fragment in fragments:
        assert fragment in str(e.value), f"{fragment!r} not in {str(e.value)!r}"


@pytest.mark.parametrize("overrides,fragments", REFUSALS, ids=IDS)
def test_the_cli_refuses_with_one_error_line_exit_2_and_writes_nothing(overrides, fragments, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", CONFIG, "--out", str(out)]
    for o in overrides:
        argv += ["--set", o]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err
    assert not out.exists()


@pytest.mark.slow
def test_as_a_real_process_a_refusal_is_one_line_and_exit_2(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "bn_lenet", "run", CONFIG, "--set", "model.norm=torch",
                           "--set", "bn.preset=keras", "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: bn.preset = 'keras'") and proc.stderr.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("overrides", [
    ["model.norm=torch", "bn.preset=keras", "bn.unbiased=true"],  # the keras numbers, unbiased: torch can
    ["model.norm=layer", "bn.preset=keras"],                       # the preset's eps applies
    ["model.norm=group", "bn.groups=2", 'model.norm_layers=["conv1"]'],
    ["model.norm=group", "bn.groups=3", 'model.norm_layers=["conv1", "fc1", "fc2"]'],  # conv2 (16) not normalized
    ["model.norm=none", "model.activation=relu"],
    ["model.norm=none", "eval.precise_bn=true"],  # accepted before the options existed: unchanged
    ["bn.ghost_batch=256"], ["bn.ghost_batch=2"], ["bn.momentum=0", "bn.momentum=1"],
    ["log.grad_norms=true", "train.compile=true"],
])
def test_combinations_a_norm_can_honor_are_accepted(overrides):
    config.resolve(None, overrides)


def test_every_refusal_is_a_config_error_before_anything_is_built():
    # validate() alone (as resume uses it) refuses too: a hand-edited config.toml gets the same checks.
    cfg = dataclasses.replace(config.Config(), bn=dataclasses.replace(config.BNConfig(), eps=-1.0))
    with pytest.raises(ConfigError, match="bn.eps = -1.0 is out of range"):
        config.validate(cfg)
