"""Where a result comes from: hardware, versions, commit (recorded in every run's meta.json)."""

import os
import platform
import subprocess
from pathlib import Path

import torch


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name on CPU (meta.json's "device_name")."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_cores() -> int:
    """The cores this process may run on (what a study's speeds were measured with)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        # "-dirty" means changed code, not the results a run itself writes under results/.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                ":(top,exclude)results"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return "unknown"
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device) -> dict:
    # torchvision's version from its install record: importing it costs ~2 s per run and it is not used.
    from importlib.metadata import version
    return {
        "device": str(device), "device_name": device_name(device), "cpu": cpu_model(),
        "threads": torch.get_num_threads(), "cpu_cores": cpu_cores(), "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": version("torchvision"), "platform": platform.platform(), "git_commit": git_commit(),
    }
