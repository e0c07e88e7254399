"""Data-parallel training under torchrun: the process group, each process's slice of a batch, reductions.

``torchrun --nproc-per-node N -m bn_lenet run CONFIG`` starts N processes (``WORLD_SIZE`` > 1 in their
environment); each builds a ``Job`` here. One run is one job: every process walks the same seeded
permutation, and process r trains on its slice of every global batch (``train.batch_size``), so the batch
size and the lr mean what they mean in one process. Gradients are averaged by DistributedDataParallel;
BN statistics are synced over the global batch (sync_batchnorm.py) or kept local (``bn.sync = false``).

Two process groups. ``control`` (gloo, CPU) carries the small messages: errors every process must stop on,
the stop flag, the epoch's totals. ``data`` carries gradients and BN statistics: gloo on CPU (the same
group), NCCL on CUDA. Gloo first, because it works before the config has chosen a device: a bad config is
then agreed on by every process and stops them all with the same one line.

Every collective waits at most ``BN_LENET_DIST_TIMEOUT`` seconds (default 120): a process that dies makes
the others fail at once (its sockets close) and one that hangs makes them fail at the timeout, never wait
forever. torchrun itself ends the job when one process exits non-zero.
"""

import datetime
import inspect
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from . import device as device_mod
from .config import check_processes, check_slices, has_batch_stats
from .data import num_batches
from ..errors import ConfigError, UserError

TIMEOUT_ENV = "BN_LENET_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 120
STOP_EVERY = 8  # batches between the processes' agreements on a stop request (Ctrl-C, SIGTERM)


def in_torchrun() -> bool:
    """True in a process that torchrun started as one of several (WORLD_SIZE > 1). With one process a
    plain run is the same thing, so ``torchrun --nproc-per-node 1`` trains as ``bn-lenet run`` does."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def share(n: int, rank: int, world: int) -> tuple:
    """(start, stop) of process ``rank``'s slice of a batch of ``n`` examples: contiguous slices whose sizes
    differ by at most one (the first ``n % world`` processes take one more)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


class JobError(UserError):
    """A user error that every process of the job stopped on; only rank 0 prints it (``quiet`` elsewhere)."""

    def __init__(self, message: str, quiet: bool):
        super().__init__(message)
        self.quiet = quiet


@dataclass
class Job:
    """Where this process stands in the job. ``Job()`` is one process: slices are whole batches and
    reductions change nothing, so the one-process code path is the same with or without it."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""            # of the data group: "gloo" (CPU) or "nccl" (CUDA); "" in one process
    sync: bool = False           # BN statistics over the global batch (bn.sync and a model with BN)
    control: object = None       # gloo group for small CPU messages
    data: object = None          # group for gradients and BN statistics

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- this process's part -------------------------------------------------------------------------------

    def device(self, name: str) -> torch.device:
        """This process's device for a train.device: in a job, the GPU of its local rank (device_for)."""
        return device_for(self, name) if self.distributed else device_mod.resolve_device(name)

    def check(self, cfg, device: torch.device, train_examples: int) -> None:
        """What this job cannot do with ``cfg`` (``check``); nothing to check in one process."""
        if self.distributed:
            check(cfg, self, device, train_examples)

    def log(self, log):
        """``log`` on rank 0, which reports for the job; a no-op elsewhere."""
        return log if self.is_main else lambda *_: None

    def main_value(self, value):
        """Rank 0's ``value`` on every process (``value`` itself in one process)."""
        return gather_objects(value, self.control)[0] if self.distributed else value

    # --- batches ---------------------------------------------------------------------------------------

    def slice(self, idx: torch.Tensor) -> tuple:
        """This process's part of a global batch's indices, and its weight in the gradient.

        DDP averages the processes' gradients, each the gradient of its own slice's mean loss; with unequal
        slices (the last short batch) that average would over-weight the smaller slices. Weighting the local
        mean loss by n_r * world / n makes the average exactly the gradient of the global batch's mean loss.
        """
        n = idx.shape[0]
        start, stop = share(n, self.rank, self.world)
        return idx[start:stop], (stop - start) * self.world / n

    # --- agreement -------------------------------------------------------------------------------------

    @contextmanager
    def together(self):
        """Run a block on every process; a UserError on any of them is raised on all, with the lowest rank's
        message, so the job stops with one error line (rank 0 prints it) instead of waiting for the process
        that left. Anything else (a bug) is reported to the others as such and re-raised where it happened."""
        if not self.distributed:
            yield
            return
        failure = None
        try:
            yield
        except UserError as e:
            failure = str(e)
        except BaseException as e:
            gather_objects(f"process {self.rank} crashed ({type(e).__name__}: {e})", self.control)
            raise
        failures = gather_objects(failure, self.control)
        first = next((f for f in failures if f), None)
        if first:
            raise JobError(first, quiet=not self.is_main)

    def stop_agreed(self, requested: bool, batch: int, pending: list) -> bool:
        """Whether every process stops now: a stop asked of any process (Ctrl-C reaches them all, but not at
        the same batch) is agreed on every STOP_EVERY batches, so they all stop at the same batch boundary.
        ``pending`` holds this process's request between agreements."""
        if not self.distributed:
            return requested
        pending[0] = pending[0] or requested
        if batch % STOP_EVERY:
            return False
        flag = torch.tensor([int(pending[0])])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.control)
        return bool(flag.item())

    # --- reductions ------------------------------------------------------------------------------------

    def epoch_totals(self, loss_sum: float, correct: int, seen: int, seconds: float) -> tuple:
        """The epoch's summed loss, correct count and examples over all processes, and the slowest process's
        step time (the job's examples/sec is all examples over it). One process: unchanged."""
        if not self.distributed:
            return loss_sum, correct, seen, seconds
        parts = torch.tensor(gather_objects([loss_sum, correct, seen, seconds], self.control), dtype=torch.float64)
        return parts[:, 0].sum().item(), int(parts[:, 1].sum()), int(parts[:, 2].sum()), parts[:, 3].max().item()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.control)

    def sum_count(self, count: int) -> int:
        if not self.distributed:
            return count
        return sum(gather_objects(count, self.control))

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a device tensor over the processes, in place (the data group)."""
        if self.distributed:
            dist.all_reduce(t, group=self.data)
        return t

    @torch.no_grad()
    def average_moving_stats(self, model: nn.Module) -> None:
        """Local BN: make every process's moving statistics their average over the processes (at each epoch
        end, before evaluation and the checkpoint). Each process's are an exponential average of its own
        slices' statistics; exponential averaging is linear, so the average over processes is the
        exponential average of the slices' mean statistics. Every process then evaluates and saves the same
        model, and a resumed run starts where a straight one is."""
        from ..network.model import bn_layers, moving_stats
        buffers = [b for layer in bn_layers(model).values() for b in moving_stats(layer) if b is not None]
        if not self.distributed or not buffers:
            return
        flat = torch.cat([b.reshape(-1) for b in buffers])
        self.sum_(flat).div_(self.world)
        offset = 0
        for b in buffers:
            b.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()

    # --- model -----------------------------------------------------------------------------------------

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module that trains: DistributedDataParallel over ``model`` (the model itself in one process).

        broadcast_buffers=False: DDP would otherwise copy rank 0's BN moving statistics over every other
        process's at each forward. Synced, they are identical everywhere already (every process computes
        them from the same global statistics), so the copy is wasted work; local, it would throw away every
        other process's statistics and leave rank 0's, which saw 1/world of the data (average_moving_stats
        combines them all instead). The initial weights and buffers are still broadcast once, at wrap time.
        """
        if not self.distributed:
            return model
        device_ids = [model_device(model)] if self.backend == "nccl" else None
        ddp = nn.parallel.DistributedDataParallel
        # torch 2.13 renamed the flag; older versions (pyproject allows >= 2.4) know only the old one.
        no_forward_sync = ({"forward_sync_buffers": False}
                           if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
                           else {"broadcast_buffers": False})
        return ddp(model, device_ids=device_ids, process_group=self.data, **no_forward_sync)

    def describe(self, cfg) -> dict:
        """What meta.json records about the job."""
        if not self.distributed:
            return {}
        mode = ("synced" if self.sync else "local") if has_batch_stats(cfg) else "none (no batch statistics)"
        return {"world_size": self.world, "backend": self.backend, "bn_sync": mode}


SINGLE = Job()


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def gather_objects(obj, group) -> list:
    out = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def timeout_seconds() -> float:
    text = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise UserError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds > 0; unset it (default "
                        f"{DEFAULT_TIMEOUT_S}) or give e.g. {TIMEOUT_ENV}=300")
    return value


def start() -> Job:
    """Join the job torchrun started: the gloo control group from torchrun's environment (MASTER_ADDR,
    MASTER_PORT, RANK, WORLD_SIZE). The data group and the device come later, from the config (``use``)."""
    timeout = datetime.timedelta(seconds=timeout_seconds())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timeout)
    return Job(rank=rank, world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")),
               control=dist.group.WORLD, data=dist.group.WORLD)


def finish(job: Job) -> None:
    if job.distributed and dist.is_initialized():
        dist.destroy_process_group()


def device_for(job: Job, name: str) -> torch.device:
    """This process's device: CPU, or the GPU of its local rank ("auto" picks CUDA when one is visible)."""
    if name.startswith("cuda:"):
        raise ConfigError(f"train.device = {name!r}: in a torchrun job each process uses the GPU of its local "
                          f"rank; use train.device=cuda (or auto)")
    if name == "auto":  # CUDA if visible, unless BN_LENET_DEVICE says (device.py)
        name = device_mod.auto()
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("train.device is 'cuda' but no CUDA GPU is visible to PyTorch; use "
                            "--set train.device=cpu (the job then runs on gloo)")
        if job.local_rank >= torch.cuda.device_count():
            raise UserError(f"process {job.rank} has local rank {job.local_rank} but this node shows "
                            f"{torch.cuda.device_count()} GPU(s): start at most that many processes per node")
        torch.cuda.set_device(job.local_rank)
        return torch.device("cuda", job.local_rank)
    return torch.device("cpu")


def check(cfg, job: Job, device: torch.device, train_examples: int) -> None:
    """What a torchrun job cannot do with this config, as one error before anything is trained."""
    t, b = cfg.train, cfg.bn
    if t.processes > 1 and t.processes != job.world:
        raise ConfigError(f"train.processes = {t.processes} but this torchrun job has {job.world} processes: "
                          f"give torchrun --nproc-per-node {t.processes}, or leave train.processes at 1 (then "
                          f"a torchrun job takes the processes torchrun gives it)")
    check_processes(cfg, cuda=device.type == "cuda", world=job.world)
    if has_batch_stats(cfg) and b.sync and (b.ghost_batch or b.normalize != "full"):
        key, value = ("bn.ghost_batch", b.ghost_batch) if b.ghost_batch else ("bn.normalize", b.normalize)
        raise ConfigError(f"{key} = {value!r} with bn.sync = true: synced BN normalizes the whole global batch "
                          f"(full normalization only); use bn.sync=false (each process normalizes its own slice, "
                          f"with {key} inside it) or drop {key}")
    batches = num_batches(train_examples, t.batch_size, t.limit_batches)
    check_slices(cfg, job.world, last=min(t.batch_size, train_examples - (batches - 1) * t.batch_size))


def use(job: Job, cfg, device: torch.device) -> Job:
    """Settle the job for this config and device: the data group (NCCL on CUDA, else the gloo group) and
    whether BN is synced. Every process calls it (creating a group is collective)."""
    if not job.distributed:
        return job
    job.backend = "nccl" if device.type == "cuda" else "gloo"
    if job.backend == "nccl":
        job.data = dist.new_group(backend="nccl", timeout=datetime.timedelta(seconds=timeout_seconds()))
    job.sync = cfg.bn.sync and has_batch_stats(cfg)
    return job


def prepare_model(job: Job, model: nn.Module) -> nn.Module:
    """Make ``model``'s BN layers synced over the data group when the job syncs them (in place)."""
    if job.distributed and job.sync:
        from ..network.sync_batchnorm import convert
        model = convert(model, job.data)
    return model


def is_peer_failure(e: BaseException) -> bool:
    """Whether an exception means another process of the job died or stopped answering (gloo: connection
    closed or reset, timeout; NCCL: a DistBackendError)."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(s in text for s in (
        "Connection closed by peer", "Connection reset by peer", "Timed out", "timed out", "Gloo", "NCCL"))


def short(e: BaseException) -> str:
    """The first line of a collective's error, which names what happened (connection closed, timed out)."""
    line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    line = re.sub(r"^\[[^\]]*\]\s*", "", line)  # gloo's "[/path/to/unbound_buffer.cc:129] " prefix
    return line if len(line) <= 200 else line[:200] + "..."


def check_resume(meta: dict, job: Job, run_dir) -> None:
    """A run resumes with as many processes as it was trained with: the slices (and with local BN, the
    batches each process normalizes) depend on it."""
    trained = meta.get("world_size", 1)
    if trained != job.world:
        how = "bn-lenet run --resume" if trained == 1 else f"torchrun with {trained} processes in all"
        raise UserError(f"{run_dir} was trained by {trained} process(es) and this job has {job.world}: resume it "
                        f"with the same number ({how})")


def resume_command(job: Job, cfg=None) -> str:
    if not job.distributed or (cfg is not None and cfg.train.processes == job.world):
        return "bn-lenet run --resume"  # with train.processes, bn-lenet run launches the job again
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", job.world))
    nodes = f"--nnodes {job.world // per_node} ... " if per_node != job.world else ""
    return f"torchrun {nodes}--nproc-per-node {per_node} -m bn_lenet run --resume"
