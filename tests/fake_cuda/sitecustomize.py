"""Imported at the start of every Python process that has this folder on PYTHONPATH (tests/test_hardware.py puts
it there): once PyTorch is imported it says a CUDA GPU is visible (torch.cuda.is_available() is True, one
device), as on a GPU machine, yet any real use of CUDA fails. A test not marked ``gpu`` that still reaches for
the GPU (a train.device left on "auto", a job taking a GPU by local rank) fails here as on a GPU machine.
torch is patched when something imports it, not here: a process that never imports torch stays without it."""

import importlib.abc
import sys


def _no_real_cuda(*_args, **_kwargs):
    raise RuntimeError("fake CUDA (tests/fake_cuda): a test not marked gpu used the GPU")


def _pretend(torch):
    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 1
    torch.cuda._lazy_init = _no_real_cuda  # every first use of CUDA (a tensor, a stream, set_device) goes here
    torch.cuda.init = _no_real_cuda


class _PatchTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec("torch")
        finally:
            sys.meta_path.insert(0, self)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _pretend(module)

        spec.loader.exec_module = exec_module
        return spec


import importlib.util  # noqa: E402

sys.meta_path.insert(0, _PatchTorch())
