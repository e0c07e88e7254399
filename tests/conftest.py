import pytest
import torch

from bn_lenet import data as data_mod


@pytest.fixture(scope="session")
def fashion_mnist():
    """The real dataset (CI installs it with `make test`); loaded once per test session."""
    return data_mod.load_dataset()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
