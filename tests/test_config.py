"""Config: shipped files load, overrides are typed, and every mistake names its key."""

from pathlib import Path

import pytest

from bn_lenet.training import config
from bn_lenet.errors import ConfigError

CONFIGS = sorted(Path(__file__).resolve().parents[1].glob("configs/*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load_and_round_trip(path, tmp_path):
    cfg = config.resolve(path)
    (tmp_path / "c.toml").write_text(config.to_toml(cfg))
    assert config.resolve(tmp_path / "c.toml") == cfg


def test_tutorial_defaults():
    t = config.Config().train
    assert (t.lr, t.epochs, t.batch_size) == (1.0, 10, 256)


def test_overrides_are_parsed_as_toml_and_typed():
    cfg = config.resolve(None, ["train.lr=0.5", "train.epochs=3", "model.norm=torch", "train.compile=true",
                                'train.device="cpu"'])
    assert (cfg.train.lr, cfg.train.epochs, cfg.model.norm, cfg.train.compile, cfg.train.device) == \
        (0.5, 3, "torch", True, "cpu")
    assert config.resolve(None, ["train.lr=2"]).train.lr == 2.0  # int is fine for a float


@pytest.mark.parametrize("override,message", [
    ("train.lr=0", "train.lr = 0.0 is out of range"),
    ("train.lr=-1", "train.lr = -1.0 is out of range"),
    ("train.lr=inf", "train.lr = inf is out of range"),
    ("train.epochs=0", "train.epochs = 0 is out of range"),
    ("train.batch_size=1", "train.batch_size = 1 is out of range"),
    ("model.norm=batch", "model.norm = 'batch' is out of range: it must be one of scratch, torch, none"),
    ("train.epochs=2.5", "train.epochs must be int, got float 2.5"),
    ("train.epochs=ten", "train.epochs must be int, got str 'ten'"),
    ("train.compile=1", "train.compile must be bool, got int 1"),
    ("train.lrr=1", "unknown key train.lrr"),
    ("optim.lr=1", "unknown section [optim]"),
    ("train.lr", "bad --set 'train.lr': write it as section.key=value"),
    ("lr=1", "bad --set 'lr=1'"),
])
def test_bad_values_are_rejected_naming_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        config.resolve(None, [override])
    assert message in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.resolve(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[train\nlr = 1")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        config.resolve(tmp_path / "bad.toml")
    (tmp_path / "unknown.toml").write_text("[train]\nlearning_rate = 1.0\n")
    with pytest.raises(ConfigError, match="unknown key train.learning_rate"):
        config.resolve(tmp_path / "unknown.toml")
    (tmp_path / "type.toml").write_text('[train]\nepochs = "10"\n')
    with pytest.raises(ConfigError, match="train.epochs must be int"):
        config.resolve(tmp_path / "type.toml")


def test_compile_with_cuda_graph_is_refused_until_verified_on_a_gpu():
    assert config.resolve(None, ["train.compile=true"]).train.compile
    assert config.resolve(None, ["train.cuda_graph=true"]).train.cuda_graph
    with pytest.raises(ConfigError, match="train.compile = true together with train.cuda_graph = true has not "
                                          "been verified on a GPU in this project; set one of them to false"):
        config.resolve(None, ["train.compile=true", "train.cuda_graph=true"])


def test_processes_is_one_by_default_and_typed():
    assert config.Config().train.processes == 1
    assert config.resolve(None, ["train.processes=4"]).train.processes == 4
    with pytest.raises(ConfigError, match="train.processes must be int, got str '2'"):
        config.resolve(None, ['train.processes="2"'])
    with pytest.raises(ConfigError, match=r"train.processes = 0 is out of range: it must be >= 1"):
        config.resolve(None, ["train.processes=0"])


@pytest.mark.parametrize("overrides,message", [
    (["train.cuda_graph=true"], "train.cuda_graph = true cannot be used with train.processes = 2"),
    (["train.compile=true"], "train.compile = true cannot be used with train.processes = 2"),
    (["train.device=cuda:1"], "train.device = 'cuda:1' with train.processes = 2: each process uses the GPU of its "
                              "local rank"),
    (["model.norm=torch", "train.device=cpu"], "model.norm = torch with bn.sync = true and train.processes = 2 "
                                               "needs CUDA"),
    (["model.norm=layer", "bn.sync=false"], "bn.sync = false has no effect: model.norm = layer has no batch "
                                            "statistics"),
    (["train.batch_size=3", "bn.sync=false"], "train.batch_size = 3 over train.processes = 2 leaves a process 1 "
                                              "example(s) of a batch; each needs at least 2 (local BN"),
])
def test_what_a_job_of_processes_cannot_do_is_refused_before_it_starts(overrides, message):
    with pytest.raises(ConfigError) as e:
        config.resolve(None, ["train.processes=2", *overrides])
    assert message in str(e.value)
