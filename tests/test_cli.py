"""End to end through the CLI on the real dataset: every output file, a sensible accuracy, inspect."""

import csv
import json
import math
import subprocess
import sys

import pytest
import torch

from bn_lenet.cli import main

OUTPUTS = ["config.toml", "metrics.jsonl", "metrics.csv", "bn_params.json", "bn_history.json", "checkpoint.pt",
           "meta.json", "curves.png", "bn_params.png"]


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """One full epoch (all 60,000 examples) of the tutorial's scratch-BN setup, on the CPU (its accuracy and
    printed device are checked; a GPU run is tests/test_gpu.py's)."""
    out = tmp_path_factory.mktemp("runs") / "scratch"
    proc = subprocess.run([sys.executable, "-m", "bn_lenet", "run", "configs/scratch_bn.toml", "--device", "cpu",
                           "--set", "train.epochs=1", "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


@pytest.mark.slow
def test_one_epoch_run_writes_every_output_and_prints_the_tutorial_lines(one_epoch_run):
    out, stdout = one_epoch_run
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert "loss " in stdout and "train acc" in stdout and "examples/sec on cpu" in stdout
    assert "conv1.bn gamma [" in stdout and "conv1.bn beta  [" in stdout


@pytest.mark.slow
def test_one_epoch_reaches_a_sensible_test_accuracy(one_epoch_run):
    out, _ = one_epoch_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    r = rows[0]
    assert {"epoch", "loss", "train_acc", "test_acc", "examples_per_sec", "seconds"} <= set(r)
    assert r["test_acc"] > 0.65 and r["train_acc"] > 0.6 and r["loss"] < 1.0  # chance is 0.10
    with open(out / "metrics.csv") as f:
        assert math.isclose(float(next(csv.DictReader(f))["test_acc"]), r["test_acc"])


@pytest.mark.slow
def test_outputs_describe_the_run(one_epoch_run):
    out, _ = one_epoch_run
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "finished" and meta["seed"] == 0 and meta["epochs_done"] == 1
    assert meta["device"] == "cpu" and meta["tf32"] is False  # fp32 is IEEE fp32 (TF32 exists on GPUs only)
    assert {"torch", "torchvision", "python", "device_name", "git_commit", "started", "ended", "command"} <= set(meta)
    params = json.loads((out / "bn_params.json").read_text())
    assert list(params) == ["conv1.bn", "conv2.bn", "fc1.bn", "fc2.bn"]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["config"]["model"]["norm"] == "scratch"
    assert ckpt["model"]["conv1.bn.gamma"].tolist() == pytest.approx(params["conv1.bn"]["gamma"])


@pytest.mark.slow
def test_an_existing_run_directory_is_never_overwritten(one_epoch_run, capsys):
    out, _ = one_epoch_run
    before = (out / "metrics.jsonl").read_text()
    assert main(["run", "configs/scratch_bn.toml", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_inspect_prints_gamma_beta_statistics_per_layer(one_epoch_run, capsys):
    out, _ = one_epoch_run
    assert main(["inspect", str(out), "--values"]) == 0
    text = capsys.readouterr().out
    for layer in ("conv1.bn", "conv2.bn", "fc1.bn", "fc2.bn"):
        assert f"{layer:10} gamma" in text and f"{layer:10} beta" in text
    assert "mean" in text and "max" in text and "conv1.bn gamma:" in text


def test_inspect_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err
