"""The suite is the same on a GPU machine as on a CPU one: tests/conftest.py sets BN_LENET_DEVICE=cpu, which the
project reads for train.device = "auto" (bn_lenet/training/device.py), so every test not marked ``gpu`` runs on
the CPU, in its own process and in every process it starts. Checked here with CUDA pretended: tests/fake_cuda
makes torch.cuda.is_available() True in every process with it on PYTHONPATH, and any real CUDA use fail."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bn_lenet.cli import main
from bn_lenet.training import device, process, runs
from bn_lenet.training.device import resolve_device

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "scratch_bn.toml"
FAKE_CUDA = Path(__file__).resolve().parent / "fake_cuda"


def test_auto_is_the_cpu_in_a_test_where_cuda_is_visible_and_cuda_for_a_user(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert os.environ[device.ENV] == "cpu"
    assert resolve_device("auto") == torch.device("cpu") and process.trains_on_cpu("auto")
    monkeypatch.delenv(device.ENV)  # as a user runs it: "auto" takes the GPU
    assert resolve_device("auto") == torch.device("cuda") and not process.trains_on_cpu("auto")
    assert resolve_device("cpu") == torch.device("cpu")  # an explicit device is never changed


def test_a_bad_device_variable_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(device.ENV, "gpu")
    assert main(["run", str(CONFIG), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: BN_LENET_DEVICE='gpu': give cpu or cuda") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_two_process_job_a_test_starts_runs_on_the_cpu(tmp_path):
    """(Under fake CUDA, below: each of the job's processes would otherwise take the GPU of its local rank.)"""
    out = tmp_path / "run"
    assert main(["run", str(CONFIG), "--set", "train.processes=2", "--set", "train.epochs=1", "--set",
                 "train.limit_batches=2", "--set", "train.batch_size=64", "--quiet", "--out", str(out)]) == 0
    meta = runs.read_json(out / "meta.json")
    assert (meta["device"], meta["backend"], meta["world_size"]) == ("cpu", "gloo", 2)


# Tests that leave train.device on "auto": in this process, in sweep workers, in a `python -m bn_lenet` child,
# in the processes of a torchrun job.
SUBSET = ["tests/test_sweep.py::test_plain_run_directories_in_the_sweep_layout_are_adopted",
          "tests/test_options_runs.py::test_no_grad_norms_file_unless_asked",
          "tests/test_lock.py::test_the_lock_of_a_sigkilled_holder_is_taken_over_and_the_run_resumes_from_its_"
          "checkpoint",
          "tests/test_hardware.py::test_a_two_process_job_a_test_starts_runs_on_the_cpu"]


def pytest_with_fake_cuda(*args):
    env = {k: v for k, v in os.environ.items() if k != device.ENV and not k.startswith("BN_LENET_TEST_SIGNAL")}
    env["PYTHONPATH"] = os.pathsep.join([str(FAKE_CUDA), str(ROOT)])
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not gpu", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_where_cuda_is_visible_the_tests_still_pass_on_the_cpu():
    check = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           env={**os.environ, "PYTHONPATH": str(FAKE_CUDA)}, capture_output=True, text=True)
    assert check.stdout == "True\n"  # the pretence holds in a child process
    r = pytest_with_fake_cuda(*SUBSET)
    assert r.returncode == 0 and f"{len(SUBSET)} passed" in r.stdout, r.stdout[-3000:]
    # Without the rule (no conftest.py), the same "auto" reaches for the GPU and fails, as on a GPU machine before.
    r = pytest_with_fake_cuda("--noconftest", SUBSET[0])
    assert r.returncode == 1 and "fake CUDA" in r.stdout, r.stdout[-3000:]


@pytest.mark.slow
def test_the_fake_cuda_shim_fails_any_real_use():
    code = "import torch; assert torch.cuda.is_available(); torch.zeros(1).to('cuda')"
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(FAKE_CUDA)},
                       capture_output=True, text=True)
    assert r.returncode == 1 and "fake CUDA" in r.stderr
