import os

import pytest
import torch

from bn_lenet.training import data as data_mod
from bn_lenet.training import device as device_mod

# The one rule that makes the suite the same on a GPU machine as on a CPU one: train.device = "auto" means the
# CPU for every test not marked ``gpu``, in this process and in every process a test starts (sweep workers, Ray
# tasks, torchrun jobs, `python -m bn_lenet` children inherit the environment). Set here, at import, so that
# module-level code and session fixtures see it too. A test marked ``gpu`` gets "auto" back (_auto_device).
os.environ[device_mod.ENV] = "cpu"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` (tests/test_gpu.py) run where PyTorch sees a CUDA GPU, and are skipped, saying why,
    everywhere else: the same ``make test`` on both. Every other test runs on the CPU (the rule above)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False here")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _auto_device(request, monkeypatch):
    """A test marked ``gpu`` sees "auto" as a user does (CUDA when visible); every other one keeps the CPU."""
    if request.node.get_closest_marker("gpu") is not None:
        monkeypatch.delenv(device_mod.ENV, raising=False)
    else:
        monkeypatch.setenv(device_mod.ENV, "cpu")  # also where a test changed it without putting it back


@pytest.fixture(scope="session")
def fashion_mnist():
    """The real dataset (CI installs it with `make test`); loaded once per test session."""
    return data_mod.load_dataset()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
