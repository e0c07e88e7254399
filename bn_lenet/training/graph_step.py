"""The whole training step (forward, backward, SGD update) captured in one CUDA graph (``train.cuda_graph``).

On a GPU a LeNet step is many tiny kernels (forward, backward and update of five layers and four BN layers),
so launching them is expected to cost more than running them (not measured in this project). A
CUDA graph records the launches once and replays them with one call. A replay reads and writes the same memory
every time, so the step runs on static buffers: the batch is gathered on the device from a fixed index
tensor (``static_idx``, refreshed with one copy per step) out of the device-resident dataset, the weights,
BN moving statistics and optimizer state are updated in place (the scratch BN's buffers are, see
batchnorm.py), and the summed loss and correct count are added in place into the epoch's accumulators.
The last partial batch (96 of 60,000) has another shape: fit() trains it eagerly with ``train_step``.

Capture follows PyTorch's "whole network capture" recipe: a few warm-up steps on a side stream (cuDNN and
cuBLAS pick their algorithms, lazy state is created), then ``torch.cuda.graph``. The warm-up steps really
train, so everything they change is saved before and copied back after, in place (the graph holds the
addresses). On CPU there is nothing to capture: the same body runs directly, after the same warm-up and
restore. fit() never takes this path on CPU; tests force it (``wanted``) to check its logic there.

Any GPU, not only the current one: warm-up and capture run with the run's GPU made current
(``capture_context``) and on a side stream created on it, which is also the capture stream. Left to itself,
``torch.cuda.graph`` captures on a stream of the *current* device (cuda:0 by default); a run on cuda:1
launches its kernels on cuda:1's own stream, which is not capturing, so the graph would be empty and every
replay would train nothing. A replay runs on the capture stream's device (CUDAGraph::replay guards it), so
the per-step ``replay()`` needs no context.

Status: off by default. This project has not had a GPU to run it on; only the CPU path was run
(tests/test_graph_step.py). tests/test_gpu.py checks it against the eager loop where a GPU is visible.
``train.compile`` together with ``train.cuda_graph`` is refused by the config until it has run on a GPU.
"""

import contextlib

import torch

from .data import to_float
from .step import train_step

WARMUP_STEPS = 3  # PyTorch's recipe warms up on a side stream before capture; 3 as in its example


def wanted(t, device: torch.device) -> bool:
    """Whether fit() trains the full-size batches with the static step (tests patch this to run it on CPU)."""
    return t.cuda_graph and device.type == "cuda"


def make_static_step(model, step_model, optimizer, images, labels, batch_size: int, precision: str,
                     loss_sum: torch.Tensor, correct: torch.Tensor):
    """A function ``step(idx)`` that trains on ``images[idx]``, ``labels[idx]`` (``idx`` of length batch_size)
    and adds the summed loss and correct count into ``loss_sum`` and ``correct`` in place; captured in a CUDA
    graph when the data is on CUDA. ``step_model`` is what fit() trains full-size batches with: ``model``
    itself, as the config refuses train.compile with train.cuda_graph. The model must be in train mode. The
    warm-up steps add into the accumulators too: zero them after (fit does at each epoch start)."""
    static_idx = torch.arange(batch_size, device=labels.device)  # any valid batch will do for the warm-up

    def body():
        batch_loss, batch_correct = train_step(step_model, optimizer, to_float(images[static_idx]),
                                               labels[static_idx], precision)
        loss_sum.add_(batch_loss)
        correct.add_(batch_correct)

    graph = capture(body, model, optimizer, labels.device)
    run = graph.replay if graph is not None else body

    def step(idx):
        static_idx.copy_(idx)
        run()
    return step


def capture(body, model, optimizer, device: torch.device, warmup_steps: int = WARMUP_STEPS):
    """Warm ``body`` up, capture it in a CUDA graph (on CUDA only; returns None elsewhere), then put the model
    and optimizer back as they were before the warm-up, in place.

    train_step sets the gradients to None before its backward, so inside the capture the backward allocates
    them from the graph's private memory pool, and every replay writes them there afresh (no accumulation).
    An eager train_step in between (the last partial batch) rebinds ``p.grad`` to new tensors; the replay
    does not read ``p.grad`` from Python but the captured memory, which stays the graph's, so both coexist.
    """
    saved = snapshot(model, optimizer)
    graph = None
    with capture_context(device):  # the run's GPU is the current one from here to the end of the capture
        side = torch.cuda.Stream(device) if device.type == "cuda" else None
        with _on_side_stream(side, device):
            for _ in range(warmup_steps):
                body()
        if side is not None:
            graph = torch.cuda.CUDAGraph()
            optimizer.zero_grad(set_to_none=True)  # as the recipe: free the warm-up's gradients before capture
            # Records the kernels without running them: no training happens here. On the side stream of the
            # run's device, given explicitly (the default capture stream belongs to whichever device was
            # current when the first graph of the process was made).
            with torch.cuda.graph(graph, stream=side):
                body()
    restore(model, optimizer, saved)
    return graph


def capture_context(device: torch.device):
    """The context warm-up and capture run in: ``torch.cuda.device`` of the run's own GPU (``device`` is the
    data's, so it carries its index), nothing on CPU."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


@contextlib.contextmanager
def _on_side_stream(side, device: torch.device):
    """The recipe's warm-up stream: it waits for the work queued so far, and the current stream waits for it."""
    if side is None:
        yield
        return
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        yield
    torch.cuda.current_stream(device).wait_stream(side)


def snapshot(model, optimizer) -> dict:
    """Copies of everything a training step changes: parameters, buffers (BN moving statistics, nn.BatchNorm's
    num_batches_tracked) and the optimizer's per-parameter state (none for the tutorial's plain SGD)."""
    return {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                          for p, s in optimizer.state.items() if s}}


@torch.no_grad()
def restore(model, optimizer, saved: dict) -> None:
    """Copy a snapshot back into the same tensors (a captured graph keeps their addresses)."""
    for k, v in model.state_dict().items():  # state_dict's tensors share memory with the module's
        v.copy_(saved["model"][k])
    state = {p: s for p, s in optimizer.state.items() if s}
    if {p: sorted(s) for p, s in state.items()} != {p: sorted(s) for p, s in saved["optimizer"].items()}:
        # e.g. SGD's momentum buffers, created by the first step: the captured graph updates them in place
        # as later steps do, so the first real step would not start from the state it should.
        raise RuntimeError("the optimizer created state during the CUDA graph warm-up (momentum buffers?), "
                           "which cannot be undone; the graph step supports optimizers whose state exists "
                           "before their first step (the project's plain SGD has none): train without "
                           "train.cuda_graph")
    for p, s in state.items():
        for k, v in s.items():
            if torch.is_tensor(v):
                v.copy_(saved["optimizer"][p][k])
            else:
                s[k] = saved["optimizer"][p][k]
