import os

import pytest
import torch

from bn_lenet.training import data as data_mod
from bn_lenet.training import device as device_mod
from bn_lenet.training import plots
from helpers import TEST_IMAGES, quiet, small_test_set

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


@pytest.fixture(scope="session")
def small_data(fashion_mnist):
    """The full training set and the first TEST_IMAGES test examples, for short runs."""
    return small_test_set(fashion_mnist, TEST_IMAGES)


@pytest.fixture(scope="module")
def threads_restored():
    """train.threads sets PyTorch's thread count for the whole process: put it back after the module."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def quick_runs(threads_restored):
    """Short runs without their figures (drawing them is the slow part of a short run), threads put back after.
    A module takes it with ``pytestmark = pytest.mark.usefixtures("quick_runs")``."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(plots, "curves", quiet)
        m.setattr(plots, "bn_params", quiet)
        yield


@pytest.fixture(scope="module")
def spec(request, tmp_path_factory):
    """The module's sweep spec (its text in ``SPEC``) as a file named ``SPEC_FILE``."""
    path = tmp_path_factory.mktemp("spec") / request.module.SPEC_FILE
    path.write_text(request.module.SPEC)
    return path
