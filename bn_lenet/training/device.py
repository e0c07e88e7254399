"""What ``train.device = "auto"`` means: CUDA when PyTorch sees a GPU, else the CPU, unless the environment
variable BN_LENET_DEVICE says which ("cpu" or "cuda"). Every place that settles "auto" asks here, so the
variable holds in this process and in every process it starts (sweep workers, Ray tasks, torchrun jobs
inherit the environment). The test suite sets BN_LENET_DEVICE=cpu (tests/conftest.py): a machine's GPU then
never changes what a test that is not marked ``gpu`` runs on.
"""

import os

from ..errors import UserError

ENV = "BN_LENET_DEVICE"
CHOICES = ("cpu", "cuda")


def auto() -> str:
    """"cpu" or "cuda": the device "auto" stands for here."""
    chosen = os.environ.get(ENV, "").strip()
    if chosen:
        if chosen not in CHOICES:
            raise UserError(f"{ENV}={chosen!r}: give cpu or cuda (what train.device = \"auto\" means), or unset it")
        return chosen
    import torch  # only here: the CLI imports this module before it needs torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def settle(name: str) -> str:
    """A train.device with "auto" replaced by what it means here; any other name as it is."""
    return auto() if name == "auto" else name
