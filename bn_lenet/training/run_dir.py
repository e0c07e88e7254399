"""A run directory: everything one training run writes, written so that a kill at any moment loses nothing.

    config.toml      the resolved config
    metrics.jsonl    one JSON object per finished epoch (also metrics.csv)
    bn_params.json   {layer: {"gamma": [...], "beta": [...]}} after the last finished epoch, every norm layer
    bn_history.json  the same for every epoch: [{"epoch": 1, "params": {...}}, ...]
    grad_norms.jsonl with log.grad_norms: one row per epoch, {"epoch": e, "conv1.conv.weight": mean grad norm, ...}
    landscape.jsonl  with log.landscape: one row per measured step (landscape.py)
    curve.jsonl      with log.eval_every: one row per fraction of an epoch (curve.py)
    checkpoint.pt    model, optimizer, epoch, config, RNG states, history (the source of truth for resume)
    meta.json        versions, device, seed, git commit, times, command, status
    curves.png, bn_params.png

Every file is written to a temporary name and renamed, so none is ever half-written. The checkpoint is
written first at each epoch end and carries the metrics history: on resume the metrics files are
rewritten from it, so they never hold a partial or duplicated row. A run killed before its first
checkpoint resumes from the start.

``RunDir`` is the directory as a run sees it: made (``create``) or reopened (``reopen``), then ``begin``,
``save_epoch`` at each epoch end and ``finish``. In a data-parallel job every process keeps the same record
(history, meta.json's content) and rank 0 alone writes, so the run reads the same in one process and in many.
"""

import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import torch

from . import config as config_mod
from . import launch
from . import lock
from . import tb_log
from .distributed import check_resume
from ..errors import UserError
from .files import (signal_for_tests, load_checkpoint, read_json, save_checkpoint, write_atomic, write_json,
                    write_jsonl, write_metrics)
from ..network.model import bn_params
from .provenance import environment
from .train import Diverged, EpochStats, uses_tf32

RUNS_DIR = Path("results/runs")


def check_out(out) -> None:
    """Refuse an --out that is a file, or a folder holding anything: a run directory is never overwritten."""
    path = Path(out)
    if path.is_file():
        raise UserError(f"--out {path} is a file; give a directory path for the run")
    if path.is_dir() and any(path.iterdir()):
        hint = (f"continue it with `bn-lenet run --resume {path}`" if (path / "config.toml").exists()
                else "choose another --out")
        raise UserError(f"--out {path} already exists and is not empty; it is never overwritten: {hint}")


def new_run_dir(out, name: str) -> Path:
    """Create the run directory; never reuse one that holds anything."""
    if out:
        check_out(out)
        path = Path(out)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path, k = RUNS_DIR / f"{name}-{stamp}", 2
        while path.exists():
            path, k = RUNS_DIR / f"{name}-{stamp}-{k}", k + 1
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write the run directory {path}: {e.strerror or e}; choose another --out") from None
    return path


def locked_run_dir(out, name, resume: bool, held: ExitStack) -> Path:
    """The run directory, with its lock held (in ``held``): to resume, ``out``; else a new one, made only
    once its lock is held, so that two processes never both find it empty and start writing."""
    if resume:
        held.enter_context(lock.holding(out))
        return Path(out)
    if out:
        held.enter_context(lock.holding(out, hint="choose another --out"))
        return new_run_dir(out, name)  # (checks again, under the lock, that it is new or empty)
    run_dir = new_run_dir(out, name)  # a new name: nobody else knows it yet
    held.enter_context(lock.holding(run_dir))
    return run_dir


def checkpoint_of(run_dir: Path, cfg):
    """The checkpoint to resume ``run_dir`` from (None: killed before its first epoch ended), checked
    against the run's config."""
    path = run_dir / "checkpoint.pt"
    if not path.exists():
        return None
    ckpt = load_checkpoint(path)
    # Through from_dict: a checkpoint saved before a config key existed gets that key's default.
    if config_mod.to_dict(config_mod.from_dict(ckpt["config"], where=str(path))) != config_mod.to_dict(cfg):
        raise UserError(f"{run_dir / 'config.toml'} differs from the config saved in {path}; restore it, or "
                        f"start a new run with the new config")
    return ckpt


def rng_states() -> dict:
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_initialized():  # implies available; not probing CUDA here keeps a CPU run off the driver
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def nonfinite_tensors(model) -> list:
    """Names of the parameters and BN statistics holding inf or NaN. The loss can stay finite while they
    overflow (at lr 1e30 the first BN layer's moving variance does), and eval mode would then use them."""
    tensors = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    finite = torch.stack([torch.isfinite(v).all() for v in tensors.values()]).tolist()  # one host sync
    return [name for name, ok in zip(tensors, finite) if not ok]


def write_epoch_files(run_dir: Path, history: list, bn_history: list, grad_norms=None, logs=None) -> None:
    """Metrics, BN parameters, (a list, with log.grad_norms) gradient norms and (``logs``, {file: rows}) the
    measurements' rows as of the last finished epoch (the checkpoint has the same)."""
    write_metrics(run_dir, history)
    if bn_history:
        write_json(run_dir / "bn_params.json", bn_history[-1]["params"])
        write_json(run_dir / "bn_history.json", bn_history)
    if grad_norms is not None:
        write_jsonl(run_dir / "grad_norms.jsonl", grad_norms)
    for name, rows in (logs or {}).items():
        write_jsonl(run_dir / name, rows)


def command() -> str:
    """The command that started this run (in a job launched for train.processes: the one typed)."""
    return os.environ.get(launch.COMMAND_ENV) or " ".join(sys.argv)


STAMP = "%Y-%m-%dT%H:%M:%S%z"  # meta.json's started/ended, and the report's reading of them


def now() -> str:
    return time.strftime(STAMP)


class RunDir:
    """One run's directory and its record: meta.json's content, the finished epochs' metrics and BN
    parameters, the measurements' rows. Only rank 0 of a job (``writes``) touches the files."""

    def __init__(self, path: Path, cfg, job, meta: dict, resumed=False, checkpoint=None):
        self.path, self.cfg, self.job, self.writes = path, cfg, job, job.is_main
        self.meta, self.resumed, self.checkpoint = meta, resumed, checkpoint
        self.history, self.bn_history, self.grad_rows = [], [], None
        self.nonfinite = ""  # why the last epoch diverged, when its loss was finite
        self.tb = None

    @classmethod
    def create(cls, out, name, cfg, job, held: ExitStack) -> "RunDir":
        """A new run directory with its config.toml, locked (in ``held``) by rank 0; the other processes of a
        job learn its path in ``begin``."""
        path = locked_run_dir(out, name, False, held) if job.is_main else Path(out or "")
        if job.is_main:
            write_atomic(path / "config.toml", config_mod.to_toml(cfg))
        return cls(path, cfg, job, {"seed": cfg.train.seed, "command": command(), "started": now()})

    @classmethod
    def reopen(cls, out, cfg, job) -> "RunDir":
        """The run directory ``out`` to resume, its checkpoint and meta.json read and checked (nothing written)."""
        path = Path(out)
        checkpoint = checkpoint_of(path, cfg)
        meta = read_json(path / "meta.json") if (path / "meta.json").exists() else {}
        check_resume(meta, job, path)
        return cls(path, cfg, job, meta, resumed=True, checkpoint=checkpoint)

    def drop_leftovers(self) -> "RunDir":
        """Remove the files a killed process left half-written (never read)."""
        if self.writes:
            for leftover in self.path.glob("*.tmp"):
                leftover.unlink()
        return self

    def begin(self, device, data, model, optimizer, grad_norms, recorders: list, log) -> int:
        """Settle meta.json for this start, put a resumed run's checkpoint into the model, optimizer, RNG and
        measurements, write the record as of that checkpoint; returns the epoch to train after."""
        self.path = Path(self.job.main_value(str(self.path)))  # rank 0's, for messages
        self.model, self.optimizer, self.grad_norms, self.recorders = model, optimizer, grad_norms, recorders
        self.meta.update(self.job.describe(self.cfg))
        self.meta.update(environment(device), data=data.source, run_dir=str(self.path), status="running",
                         epochs_done=0, tf32=uses_tf32(self.cfg.train.precision, device))  # (fit sets TF32)
        for stale in ("interrupted_at", "message", "ended"):
            self.meta.pop(stale, None)
        self.grad_rows = [] if grad_norms is not None else None
        start, ckpt = 0, self.checkpoint
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            set_rng_states(ckpt["rng"])
            self.history, self.bn_history, start = ckpt["history"], ckpt["bn_history"], ckpt["epoch"]
            if grad_norms is not None:
                self.grad_rows = ckpt["grad_norms"]
            for r in recorders:
                r.rows = ckpt["logs"][r.file]
            log(f"resuming {self.path} after epoch {start}/{self.cfg.train.epochs}")
        if self.resumed:
            # The checkpoint is the source of truth: drop anything a killed process wrote after it.
            if self.writes:
                write_epoch_files(self.path, self.history, self.bn_history, self.grad_rows, self.logs())
            self.meta.update(epochs_done=start)
            self.meta.setdefault("resumed", []).append({"at_epoch": start, "time": now(), "command": command()})
        if self.writes:
            write_json(self.path / "meta.json", self.meta)
            if self.cfg.log.tensorboard:
                self.tb = tb_log.open_run(self.path, self.cfg, start, resumed=self.resumed)
        return start

    def logs(self) -> dict:
        return {r.file: r.rows for r in self.recorders}

    def save_epoch(self, stats: EpochStats) -> None:
        """Record a finished epoch and save it: checkpoint first, then the files rewritten from it. An epoch
        whose weights or BN statistics are not finite is not saved: it raises Diverged."""
        bad = nonfinite_tensors(self.model)
        if bad:  # keep the last good checkpoint: this epoch's weights are not saved
            self.nonfinite = f"{', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''} became inf or NaN"
            raise Diverged(stats)
        self.history.append(stats.row())
        self.bn_history.append({"epoch": stats.epoch, "params": bn_params(self.model)})
        self.meta["epochs_done"] = stats.epoch
        if self.grad_norms is not None:
            self.grad_rows.append(self.grad_norms.row(stats.epoch))
        if not self.writes:
            return
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "epoch": stats.epoch,
                 "config": config_mod.to_dict(self.cfg), "rng": rng_states(), "history": self.history,
                 "bn_history": self.bn_history}
        if self.grad_norms is not None:
            state["grad_norms"] = self.grad_rows
        if self.logs():
            state["logs"] = self.logs()
        if self.tb is not None:  # before the checkpoint: a kill in between is purged on resume, never a gap
            tb_log.log_epoch(self.tb, self.history[-1], self.model, self.optimizer.param_groups[0]["lr"])
            signal_for_tests(f"tensorboard:{stats.epoch}")
        save_checkpoint(self.path / "checkpoint.pt", state)
        signal_for_tests(f"checkpoint:{stats.epoch}")
        write_epoch_files(self.path, self.history, self.bn_history, self.grad_rows, self.logs())
        write_json(self.path / "meta.json", self.meta)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

    def finish(self, ended: dict, log_error) -> dict:
        """Record how the run ended (``ended``: status, message, ...) and say it; then the figures. Returns
        meta.json's content."""
        self.meta.update(ended, ended=now())
        if not self.writes:
            if self.meta["status"] == "failed":  # every process says why it stopped
                log_error("error: " + self.meta["message"])
            return self.meta
        write_json(self.path / "meta.json", self.meta)
        if "message" in self.meta:
            log_error(("error: " if self.meta["status"] in ("diverged", "failed") else "") + self.meta["message"])
        if self.history:
            from . import plots
            norm = self.cfg.model.norm
            plots.curves(self.history, self.path / "curves.png", title=f"LeNet, norm={norm}")
            if self.bn_history:
                last = self.bn_history[-1]
                plots.bn_params(last["params"], self.path / "bn_params.png",
                                title=f"gamma/beta after epoch {last['epoch']} (norm={norm})")
        return self.meta
