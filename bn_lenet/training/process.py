"""Process-wide settings, applied where one of our processes starts (``bn-lenet run``, a sweep's worker
processes and Ray tasks, the benchmark, experiments/reproduce.py), never by a library function: a notebook
that calls ``bn_lenet.train_lenet`` or ``train.fit`` keeps its own process as it was.
"""

import ctypes
import signal
from contextlib import contextmanager


def trains_on_cpu(device: str) -> bool:
    """Whether a config's train.device ("auto", "cpu", "cuda", "cuda:1") trains on the CPU, as
    device.resolve_device decides it."""
    from .device import settle
    return settle(device) == "cpu"


def keep_freed_memory(device: str = "cpu") -> bool:
    """For a process that trains on the CPU (``device``: the run's train.device), on Linux/glibc: stop malloc
    from handing every freed activation (up to 3.5 MB each) back to the OS, which otherwise takes it back
    with ~1,000 page faults per training step (results/benchmark/NOTES.md). Process-wide: from here on every
    large block this process frees is kept for reuse (not leaked), so its resident memory stays at its peak
    instead of shrinking. Speed only: no result changes. Returns whether it was applied (False: a GPU run,
    or not glibc)."""
    if not trains_on_cpu(device):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return False


@contextmanager
def stop_signals_to(handler):
    """Inside the block, Ctrl-C (SIGINT) and SIGTERM call ``handler(signum, frame)`` instead of their default;
    the previous handlers come back after it. Only the main thread may set handlers: elsewhere the signals stay
    as they are."""
    saved = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            saved[sig] = signal.signal(sig, handler)
    except ValueError:
        pass
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)
