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


def resolve_device(name: str):
    """The torch.device of a train.device in one process (a torchrun job's processes: distributed.device_for)."""
    import torch
    if name == "auto":
        return torch.device(auto())
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device is {name!r} but no CUDA GPU is visible to PyTorch "
                        f"(torch.cuda.is_available() is False); use --set train.device=auto or cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UserError(f"train.device is {name!r} but PyTorch sees {count} CUDA GPU(s) (cuda:0 to "
                        f"cuda:{count - 1}); choose one of them, or use --set train.device=cuda")
    return device
