import pytest
import torch

from bn_lenet.training import data as data_mod


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` (tests/test_gpu.py) run where PyTorch sees a CUDA GPU, and are skipped, saying why,
    everywhere else: the same ``make test`` on both. Every other test pins the device it checks (the CPU)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False here")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fashion_mnist():
    """The real dataset (CI installs it with `make test`); loaded once per test session."""
    return data_mod.load_dataset()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
