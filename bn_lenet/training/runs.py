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
"""

import itertools
import os
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

from . import config as config_mod
from . import data as data_mod
from . import device as device_mod
from . import distributed
from . import launch
from . import lock
from . import tb_log
from .distributed import SINGLE
from ..errors import UserError
from .files import (signal_for_tests, load_checkpoint, read_json, read_metrics, save_checkpoint, write_atomic,
                    write_json, write_jsonl, write_metrics)
from ..network.model import bn_params, from_config
from .process import stop_signals_to
from .provenance import environment
from .curve import Curve
from .landscape import Landscape
from .train import Diverged, EpochStats, GradNorms, Interrupted, fit, make_optimizer, resolve_device, uses_tf32

RUNS_DIR = Path("results/runs")


# --- run directories ---------------------------------------------------------------------------------

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


@contextmanager
def stop_on_signals():
    """Ctrl-C / SIGTERM ask the loop to stop at the next batch boundary instead of killing it mid-write."""
    flag = {"stop": False}

    def handler(signum, _frame):
        flag["stop"] = True

    with stop_signals_to(handler):
        yield lambda: flag["stop"]


def _set_threads(cfg) -> None:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)


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


def _command() -> str:
    """The command that started this run (in a job launched for train.processes: the one typed)."""
    return os.environ.get(launch.COMMAND_ENV) or " ".join(sys.argv)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


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


def train_run(cfg, out=None, name="run", data=None, progress=False, log=print, resume=False,
              log_error=None, job=SINGLE, on_epoch=None) -> dict:
    """Train one run into its directory (new, or ``out`` resumed). Returns meta.json's content.

    Diverged and interrupted runs keep every finished epoch on disk and say so in meta.json["status"],
    with a one-line ``message`` (also passed to ``log_error``, default ``log``).
    In a data-parallel job (``job``, distributed.py) every process trains and rank 0 alone writes the run
    directory; a process of the job that dies makes the run "failed", its finished epochs kept.
    ``on_epoch(stats, model)`` runs after each saved epoch (the Python API's live plot).
    With train.processes > 1 outside torchrun, the run is trained by a torchrun job launched from here
    (launch.py): the same run directory, meta.json and messages.
    One process trains a run directory at a time: its lock (lock.py) is held from before anything in it is
    read or written until the run ends, however it ends; a run another live process holds raises lock.Held.
    """
    with ExitStack() as held:  # the run directory's lock, once taken (released on the way out, however)
        if job is SINGLE and launch.wanted(cfg):
            return _launch_run(cfg, out, name, log, resume, log_error or log, on_epoch, held)
        # From here on Ctrl-C / SIGTERM stop the run at the next batch boundary, whenever they come.
        with stop_on_signals() as stop_requested:
            meta = _train_run(cfg, out, name, data, progress, log, resume, log_error or log, stop_requested, job,
                              on_epoch, held)
    if stop_requested() and meta["status"] == "finished" and not job.distributed:
        # The stop came after the last batch: this run is complete and saved, but a caller running many
        # runs (the seed study) must stop too, not start the next one. (A torchrun job is one run; its
        # processes end together, see cli.py.)
        raise KeyboardInterrupt
    return meta


def _launch_run(cfg, out, name, log, resume, log_error, on_epoch, held) -> dict:
    if on_epoch is not None:
        raise UserError(f"train.processes = {cfg.train.processes}: this run trains in other processes, so its "
                        f"model never comes back here; use `bn-lenet run` with it, or train.processes=1")
    config_mod.check_processes(cfg, cuda=device_mod.auto() == "cuda")  # "auto" settled: before a process starts
    if not resume:
        data_mod.find_files(cfg.data.root or None)  # no data: one error line here, not one from the job
    # This process holds the lock for the job it launches (whose rank 0 takes it over from here: lock.py).
    run_dir = _locked_run_dir(out, name, resume, held)
    meta, stopped = launch.train(cfg, run_dir, resume, log, log_error)
    if stopped and meta["status"] == "finished":  # as train_run: a caller running many runs stops too
        raise KeyboardInterrupt
    return meta


def _locked_run_dir(out, name, resume: bool, held: ExitStack) -> Path:
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


def _train_run(cfg, out, name, data, progress, log, resume, log_error, stop_requested, job, on_epoch,
               held) -> dict:
    # User errors (a bad --out, no GPU, no data, log.tensorboard without TensorBoard) are found before anything
    # is written; in a data-parallel job
    # every process finds them together and all stop with the same one (job.together).
    writes = job.is_main  # rank 0 alone writes the run directory
    with job.together():
        if resume and writes:  # before the run directory is read: nobody else may be writing it
            _locked_run_dir(out, name, resume, held)
        if out and not resume:
            check_out(out)
        if cfg.log.tensorboard:
            tb_log.require()
        _set_threads(cfg)
        device = distributed.device_for(job, cfg.train.device) if job.distributed else resolve_device(
            cfg.train.device)
        data = (data or data_mod.load_dataset(cfg.data.root or None)).to(device)
        if job.distributed:
            distributed.check(cfg, job, device, data.train_labels.shape[0])
        if resume:
            run_dir = Path(out)
            ckpt = checkpoint_of(run_dir, cfg)
            meta = read_json(run_dir / "meta.json") if (run_dir / "meta.json").exists() else {}
            distributed.check_resume(meta, job, run_dir)
    job = distributed.use(job, cfg, device)
    with job.together():
        if resume and writes:
            for leftover in run_dir.glob("*.tmp"):  # half-written by a killed process; never read
                leftover.unlink()
        elif not resume:
            run_dir, ckpt = (_locked_run_dir(out, name, resume, held) if writes else Path(out or "")), None
            if writes:
                write_atomic(run_dir / "config.toml", config_mod.to_toml(cfg))
            meta = {"seed": cfg.train.seed, "command": _command(), "started": _now()}
    if job.distributed:
        run_dir = Path(distributed.gather_objects(str(run_dir), job.control)[0])  # rank 0's, for messages
        meta.update(job.describe(cfg))
        if not writes:
            log = lambda *_: None  # noqa: E731  rank 0 reports the epochs
    meta.update(environment(device), data=data.source, run_dir=str(run_dir), status="running", epochs_done=0,
                tf32=uses_tf32(cfg.train.precision, device))  # fit() sets it (train.set_fp32_math)
    for stale in ("interrupted_at", "message", "ended"):
        meta.pop(stale, None)

    torch.manual_seed(cfg.train.seed)
    model = distributed.prepare_model(job, from_config(cfg).to(device))
    optimizer = make_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
    grad_norms = GradNorms(model) if cfg.log.grad_norms else None
    landscape = Landscape(cfg.log.landscape_every) if cfg.log.landscape else None
    curve = Curve(cfg.log.eval_every) if cfg.log.eval_every else None
    logs = lambda: {r.file: r.rows for r in (landscape, curve) if r is not None}  # noqa: E731
    history, bn_history, start = [], [], 0
    grad_rows = [] if grad_norms is not None else None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_states(ckpt["rng"])
        history, bn_history, start = ckpt["history"], ckpt["bn_history"], ckpt["epoch"]
        if grad_norms is not None:
            grad_rows = ckpt["grad_norms"]
        for r in (landscape, curve):
            if r is not None:
                r.rows = ckpt["logs"][r.file]
        log(f"resuming {run_dir} after epoch {start}/{cfg.train.epochs}")
    if resume:
        # The checkpoint is the source of truth: drop anything a killed process wrote after it.
        if writes:
            write_epoch_files(run_dir, history, bn_history, grad_rows, logs())
        meta.update(epochs_done=start)
        meta.setdefault("resumed", []).append({"at_epoch": start, "time": _now(), "command": _command()})
    if writes:
        write_json(run_dir / "meta.json", meta)
    tb = tb_log.open_run(run_dir, cfg, start, resumed=resume) if cfg.log.tensorboard and writes else None

    diverged_because = []

    def save_epoch(stats: EpochStats):
        bad = nonfinite_tensors(model)
        if bad:  # keep the last good checkpoint: this epoch's weights are not saved
            diverged_because.append(f"{', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''} became inf or NaN")
            raise Diverged(stats)
        history.append(stats.row())
        bn_history.append({"epoch": stats.epoch, "params": bn_params(model)})
        meta["epochs_done"] = stats.epoch
        if grad_norms is not None:
            grad_rows.append(grad_norms.row(stats.epoch))
        if not writes:
            return
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": stats.epoch,
                 "config": config_mod.to_dict(cfg), "rng": rng_states(), "history": history,
                 "bn_history": bn_history}
        if grad_norms is not None:
            state["grad_norms"] = grad_rows
        if logs():
            state["logs"] = logs()
        if tb is not None:  # before the checkpoint: a kill in between is purged on resume, never a gap
            tb_log.log_epoch(tb, history[-1], model, optimizer.param_groups[0]["lr"])
            signal_for_tests(f"tensorboard:{stats.epoch}")
        save_checkpoint(run_dir / "checkpoint.pt", state)
        signal_for_tests(f"checkpoint:{stats.epoch}")
        write_epoch_files(run_dir, history, bn_history, grad_rows, logs())
        write_json(run_dir / "meta.json", meta)
        if not progress:
            log(format_epoch(stats))
        if on_epoch is not None:
            on_epoch(stats, model)

    batches = itertools.count(1)

    def should_stop():
        signal_for_tests(f"batch:{next(batches)}")
        return stop_requested()

    try:
        fit(model, data, cfg, optimizer, start, on_epoch=save_epoch, progress=progress, should_stop=should_stop,
            grad_norms=grad_norms, job=job, landscape=landscape, curve=curve)
        meta["status"] = "finished"
    except Diverged as e:
        why = diverged_because[0] if diverged_because else f"the training loss is {e.stats.loss}"
        meta.update(status="diverged", diverged_at_epoch=e.stats.epoch, diverged_loss=str(e.stats.loss),
                    message=f"training diverged at epoch {e.stats.epoch}: {why}. Kept the {len(history)} "
                            f"finished epoch(s) before it in {run_dir}. Lower train.lr and start a new run.")
    except Interrupted as e:
        meta.update(status="interrupted", interrupted_at={"epoch": e.epoch, "batch": e.batch},
                    message=f"interrupted during epoch {e.epoch}; kept the {len(history)} finished epoch(s) "
                            f"in {run_dir}. Continue with: {distributed.resume_command(job, cfg)} {run_dir}")
    except Exception as e:
        if not (job.distributed and distributed.is_peer_failure(e)):
            raise
        # Another process died or stopped answering: this one cannot go on alone.
        meta.update(status="failed", message=f"process {job.rank} of {job.world} lost contact with the job "
                    f"({distributed.short(e)}): another process died or hung. Kept the {len(history)} finished "
                    f"epoch(s) in {run_dir}. Continue with: {distributed.resume_command(job, cfg)} {run_dir}")
    finally:
        if tb is not None:
            tb.close()
    meta["ended"] = _now()
    if not writes:
        if meta["status"] == "failed":
            log_error("error: " + meta["message"])
        return meta
    write_json(run_dir / "meta.json", meta)
    if "message" in meta:
        log_error(("error: " if meta["status"] in ("diverged", "failed") else "") + meta["message"])
    if history:
        from . import plots
        plots.curves(history, run_dir / "curves.png", title=f"LeNet, norm={cfg.model.norm}")
        if bn_history:
            plots.bn_params(bn_history[-1]["params"], run_dir / "bn_params.png",
                            title=f"gamma/beta after epoch {bn_history[-1]['epoch']} (norm={cfg.model.norm})")
    return meta


def resume_config(run_dir):
    """The config of a run to resume, with checks that it can be resumed (before any data is loaded)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.toml); give a folder written by "
                        f"`bn-lenet run`, or start a new run with a CONFIG")
    cfg = config_mod.validate(config_mod.load(run_dir / "config.toml"))
    meta = read_json(run_dir / "meta.json") if (run_dir / "meta.json").is_file() else {}
    if meta.get("status") == "diverged":
        raise UserError(f"{run_dir} diverged at epoch {meta.get('diverged_at_epoch')}; resuming would repeat "
                        f"it. Start a new run with a lower train.lr")
    if meta.get("status") == "finished":
        raise UserError(f"{run_dir} already finished all {meta.get('epochs_done')} epochs; nothing to resume. "
                        f"To train longer, start a new run with --set train.epochs=N")
    checkpoint_of(run_dir, cfg)
    return cfg, meta


def format_epoch(s: EpochStats) -> str:
    extra = f", test acc (precise BN) {s.test_acc_precise:.3f}" if s.test_acc_precise is not None else ""
    if s.test_acc_batch_stats is not None:
        extra += f", test acc (batch stats) {s.test_acc_batch_stats:.3f}"
    return (f"epoch {s.epoch}: loss {s.loss:.3f}, train acc {s.train_acc:.3f}, test acc {s.test_acc:.3f}{extra}, "
            f"{s.examples_per_sec:,.0f} examples/sec, {s.seconds:.1f} s")


def summary_lines(run_dir) -> list:
    """The tutorial's closing lines for a run: loss/acc, examples/sec on DEVICE, first BN layer's gamma/beta."""
    run_dir = Path(run_dir)
    rows, meta = read_metrics(run_dir), read_json(run_dir / "meta.json")
    if not rows:
        return ["no finished epoch"]
    last = rows[-1]
    # The tutorial's figure: all examples over all step time, i.e. examples-weighted over epochs.
    total_time = sum(1 / r["examples_per_sec"] for r in rows)
    lines = [f"loss {last['loss']:.3f}, train acc {last['train_acc']:.3f}, test acc {last['test_acc']:.3f}",
             f"{len(rows) / total_time:,.1f} examples/sec on {meta['device']} ({meta['device_name']})"]
    params_path = run_dir / "bn_params.json"
    params = read_json(params_path) if params_path.exists() else {}
    if params:
        name, p = next(iter(params.items()))
        fmt = lambda v: "[" + ", ".join(f"{x:.4f}" for x in v) + "]"
        lines += [f"{name} gamma {fmt(p['gamma'])}", f"{name} beta  {fmt(p['beta'])}"]
    return lines
