"""A run directory: everything one training run writes, written so that a kill at any moment loses nothing.

    config.toml      the resolved config
    metrics.jsonl    one JSON object per finished epoch (also metrics.csv)
    bn_params.json   {layer: {"gamma": [...], "beta": [...]}} after the last finished epoch
    bn_history.json  the same for every epoch: [{"epoch": 1, "params": {...}}, ...]
    checkpoint.pt    model, optimizer, epoch, config, RNG states, history (the source of truth for resume)
    meta.json        versions, device, seed, git commit, times, command, status
    curves.png, bn_params.png

Every file is written to a temporary name and renamed, so none is ever half-written. The checkpoint is
written first at each epoch end and carries the metrics history: on resume the metrics files are
rewritten from it, so they never hold a partial or duplicated row.
"""

import csv
import io
import json
import os
import platform
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from . import config as config_mod
from . import data as data_mod
from .errors import UserError
from .model import bn_params, lenet
from .train import Diverged, EpochStats, Interrupted, device_name, fit, make_optimizer, resolve_device

RUNS_DIR = Path("results/runs")
STATUS_FILE_NAMES = ("config.toml", "checkpoint.pt", "meta.json")


# --- small atomic writers ----------------------------------------------------------------------------------

def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=1) + "\n")


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def write_metrics(run_dir: Path, rows: list) -> None:
    write_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    columns = list(EpochStats.__dataclass_fields__)
    columns = [c for c in columns if any(c in r for r in rows)] or columns
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(run_dir / "metrics.csv", buf.getvalue())


def read_metrics(run_dir) -> list:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# --- provenance ------------------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return "unknown"
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device) -> dict:
    import torchvision
    return {
        "device": str(device), "device_name": device_name(device), "cpu": cpu_model(),
        "threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "platform": platform.platform(), "git_commit": git_commit(),
    }


# --- run directories ---------------------------------------------------------------------------------

def new_run_dir(out, name: str) -> Path:
    """Create the run directory; never reuse one that holds anything."""
    if out:
        path = Path(out)
        if path.is_file():
            raise UserError(f"--out {path} is a file; give a directory path for the run")
        if path.is_dir() and any(path.iterdir()):
            hint = (f"continue it with `bn-lenet run --resume {path}`" if (path / "checkpoint.pt").exists()
                    else "choose another --out")
            raise UserError(f"--out {path} already exists and is not empty; it is never overwritten: {hint}")
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

    saved = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            saved[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: signals stay as they are
        pass
    try:
        yield lambda: flag["stop"]
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


def _set_threads(cfg) -> None:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)


def train_run(cfg, out=None, name="run", data=None, progress=False, log=print, resume=False) -> dict:
    """Train one run into its directory (new, or ``out`` resumed). Returns meta.json's content.

    Diverged and interrupted runs keep every finished epoch on disk and say so in meta.json["status"].
    """
    if resume:
        run_dir = Path(out)
        ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
        meta = read_json(run_dir / "meta.json")
    else:
        run_dir, ckpt = new_run_dir(out, name), None
        write_atomic(run_dir / "config.toml", config_mod.to_toml(cfg))
        meta = {"status": "running", "seed": cfg.train.seed, "command": " ".join(sys.argv),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "epochs_done": 0}
    _set_threads(cfg)
    device = resolve_device(cfg.train.device)
    data = (data or data_mod.load_dataset(cfg.data.root or None)).to(device)
    meta.update(environment(device), data=data.source, run_dir=str(run_dir))

    torch.manual_seed(cfg.train.seed)
    model = lenet(cfg.model.norm).to(device)
    optimizer = make_optimizer(model, cfg.train.lr)
    history, bn_history, start = [], [], 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        history, bn_history, start = ckpt["history"], ckpt["bn_history"], ckpt["epoch"]
        write_metrics(run_dir, history)  # drop any row written after the checkpoint by a killed process
        meta.setdefault("resumed", []).append({"at_epoch": start, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        log(f"resuming {run_dir} after epoch {start}/{cfg.train.epochs}")
    write_json(run_dir / "meta.json", meta)

    def save_epoch(stats: EpochStats):
        history.append(stats.row())
        params = bn_params(model)
        bn_history.append({"epoch": stats.epoch, "params": params})
        save_checkpoint(run_dir / "checkpoint.pt", {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": stats.epoch,
            "config": config_mod.to_dict(cfg), "rng": {"torch": torch.get_rng_state()},
            "history": history, "bn_history": bn_history})
        write_metrics(run_dir, history)
        write_json(run_dir / "bn_params.json", params)
        write_json(run_dir / "bn_history.json", bn_history)
        meta["epochs_done"] = stats.epoch
        write_json(run_dir / "meta.json", meta)
        if not progress:
            log(format_epoch(stats))

    with stop_on_signals() as should_stop:
        try:
            fit(model, data, cfg, optimizer, start, on_epoch=save_epoch, progress=progress,
                should_stop=should_stop)
            meta["status"] = "finished"
        except Diverged as e:
            meta.update(status="diverged", diverged_at_epoch=e.stats.epoch, diverged_loss=str(e.stats.loss))
            log(f"error: training diverged at epoch {e.stats.epoch} (loss {e.stats.loss}); kept the "
                f"{len(history)} finished epoch(s) in {run_dir}. Lower train.lr and start a new run.")
        except Interrupted as e:
            meta.update(status="interrupted", interrupted_at={"epoch": e.epoch, "batch": e.batch})
            log(f"interrupted during epoch {e.epoch}; kept {len(history)} finished epoch(s). "
                f"Continue with: bn-lenet run --resume {run_dir}")
    meta["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json(run_dir / "meta.json", meta)
    if history:
        from . import plots
        plots.curves(history, run_dir / "curves.png", title=f"LeNet, norm={cfg.model.norm}")
        if bn_history:
            plots.bn_params(bn_history[-1]["params"], run_dir / "bn_params.png",
                            title=f"gamma/beta after epoch {bn_history[-1]['epoch']} (norm={cfg.model.norm})")
    return meta


def resume_config(run_dir):
    """The config of a run to resume, with checks that it can be resumed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not all((run_dir / f).exists() for f in STATUS_FILE_NAMES):
        raise UserError(f"{run_dir} is not a run directory with a checkpoint (expected "
                        f"{', '.join(STATUS_FILE_NAMES)}); nothing to resume")
    cfg = config_mod.validate(config_mod.load(run_dir / "config.toml"))
    meta = read_json(run_dir / "meta.json")
    if meta.get("status") == "diverged":
        raise UserError(f"{run_dir} diverged at epoch {meta.get('diverged_at_epoch')}; resuming would repeat "
                        f"it. Start a new run with a lower train.lr")
    return cfg, meta


def format_epoch(s: EpochStats) -> str:
    extra = f", test acc (precise BN) {s.test_acc_precise:.3f}" if s.test_acc_precise is not None else ""
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
