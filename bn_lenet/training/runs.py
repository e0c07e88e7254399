"""Train one run into its run directory (run_dir.py): new or resumed, in this process or in a data-parallel job
(distributed.py; launched from here for train.processes > 1: launch.py), and what a finished run says.
"""

import itertools
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

from . import config as config_mod
from . import data as data_mod
from . import device as device_mod
from . import distributed
from . import launch
from . import tb_log
from .distributed import SINGLE
from ..errors import UserError
from .files import signal_for_tests, read_json, read_metrics
from ..network.model import from_config
from .process import stop_signals_to
from .curve import Curve
from .landscape import Landscape
from .run_dir import RunDir, check_out, checkpoint_of, locked_run_dir
from .train import Diverged, EpochStats, GradNorms, Interrupted, fit, make_optimizer


@contextmanager
def stop_on_signals():
    """Ctrl-C / SIGTERM ask the loop to stop at the next batch boundary instead of killing it mid-write."""
    flag = {"stop": False}

    def handler(signum, _frame):
        flag["stop"] = True

    with stop_signals_to(handler):
        yield lambda: flag["stop"]


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
    run_dir = locked_run_dir(out, name, resume, held)
    meta, stopped = launch.train(cfg, run_dir, resume, log, log_error)
    if stopped and meta["status"] == "finished":  # as train_run: a caller running many runs stops too
        raise KeyboardInterrupt
    return meta


def _train_run(cfg, out, name, data, progress, log, resume, log_error, stop_requested, job, on_epoch,
               held) -> dict:
    # User errors (a bad --out, no GPU, no data, log.tensorboard without TensorBoard) are found before anything
    # is written; in a data-parallel job every process finds them together and all stop with the same one.
    with job.together():
        if resume and job.is_main:  # before the run directory is read: nobody else may be writing it
            locked_run_dir(out, name, resume, held)
        device, data = _device_and_data(cfg, out, resume, data, job)
        run = RunDir.reopen(out, cfg, job) if resume else None
    job = distributed.use(job, cfg, device)
    with job.together():
        run = run.drop_leftovers() if resume else RunDir.create(out, name, cfg, job, held)
    log = job.log(log)  # rank 0 reports the epochs

    torch.manual_seed(cfg.train.seed)
    model = distributed.prepare_model(job, from_config(cfg).to(device))
    optimizer = make_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
    grad_norms = GradNorms(model) if cfg.log.grad_norms else None
    landscape = Landscape(cfg.log.landscape_every) if cfg.log.landscape else None
    curve = Curve(cfg.log.eval_every) if cfg.log.eval_every else None
    start = run.begin(device, data, model, optimizer, grad_norms, [r for r in (landscape, curve) if r is not None], log)

    def save_epoch(stats: EpochStats):
        run.save_epoch(stats)
        if not progress:
            log(format_epoch(stats))
        if job.is_main and on_epoch is not None:
            on_epoch(stats, model)

    try:
        fit(model, data, cfg, optimizer, start, on_epoch=save_epoch, progress=progress,
            should_stop=_stop_check(stop_requested), grad_norms=grad_norms, job=job, landscape=landscape,
            curve=curve)
        ended = {"status": "finished"}
    except (Diverged, Interrupted) as e:
        ended = _ended(e, run, job, cfg)
    except Exception as e:
        if not (job.distributed and distributed.is_peer_failure(e)):
            raise
        ended = _ended(e, run, job, cfg)  # another process died or stopped answering: this one cannot go on
    finally:
        run.close()
    return run.finish(ended, log_error)


def _device_and_data(cfg, out, resume: bool, data, job):
    """Check what can be checked before anything is written; then the device, and the data on it."""
    if out and not resume:
        check_out(out)
    if cfg.log.tensorboard:
        tb_log.require()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = job.device(cfg.train.device)
    data = (data or data_mod.load_dataset(cfg.data.root or None)).to(device)
    job.check(cfg, device, data.train_labels.shape[0])
    return device, data


def _stop_check(stop_requested):
    """fit()'s should_stop: whether a stop was asked (Ctrl-C, SIGTERM), with each batch numbered for the tests'
    signals."""
    batches = itertools.count(1)

    def should_stop():
        signal_for_tests(f"batch:{next(batches)}")
        return stop_requested()
    return should_stop


def _ended(error, run: RunDir, job, cfg) -> dict:
    """meta.json's status, message and details for a run that did not finish."""
    kept, where = len(run.history), run.path
    again = f"Continue with: {distributed.resume_command(job, cfg)} {where}"
    if isinstance(error, Diverged):
        s = error.stats
        why = run.nonfinite or f"the training loss is {s.loss}"
        return {"status": "diverged", "diverged_at_epoch": s.epoch, "diverged_loss": str(s.loss),
                "message": f"training diverged at epoch {s.epoch}: {why}. Kept the {kept} finished epoch(s) before "
                           f"it in {where}. Lower train.lr and start a new run."}
    if isinstance(error, Interrupted):
        return {"status": "interrupted", "interrupted_at": {"epoch": error.epoch, "batch": error.batch},
                "message": f"interrupted during epoch {error.epoch}; kept the {kept} finished epoch(s) in {where}. "
                           f"{again}"}
    return {"status": "failed", "message": f"process {job.rank} of {job.world} lost contact with the job "
            f"({distributed.short(error)}): another process died or hung. Kept the {kept} finished epoch(s) in "
            f"{where}. {again}"}


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
