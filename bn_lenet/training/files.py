"""Files written so that a kill at any moment loses nothing: each goes to a temporary name, is flushed to
disk, then renamed over the old one (os.replace is atomic), so a reader sees the old file or the new one,
never half of one. A killed writer leaves at most a stale ``*.tmp``, which resume deletes.
"""

import csv
import io
import json
import os
import signal
from pathlib import Path

import torch

from ..errors import CorruptFile, UserError
from .train import EpochStats


# --- test hook ---------------------------------------------------------------------------------------------
# For tests/test_resume.py only: BN_LENET_TEST_SIGNAL="SIGKILL@checkpoint:2" makes this process send itself
# that signal when it reaches that point, so the tests can kill a real run at exact moments (mid-epoch,
# mid-write, ...). Points: batch:N (before the N-th training batch of this process), checkpoint:E (epoch E's
# checkpoint saved, nothing else yet), half-written:FILE (FILE's temporary copy half written), tensorboard:E
# (epoch E logged to TensorBoard, its checkpoint not yet saved). In a torchrun job, BN_LENET_TEST_SIGNAL_RANK=R
# limits it to the process of rank R. Unset, as in normal use, it does nothing.

def signal_for_tests(point: str) -> None:
    spec = os.environ.get("BN_LENET_TEST_SIGNAL")
    if spec and os.environ.get("BN_LENET_TEST_SIGNAL_RANK", os.environ.get("RANK")) == os.environ.get("RANK"):
        name, _, at = spec.partition("@")
        if at == point:
            os.kill(os.getpid(), getattr(signal, name))


# --- small atomic writers ----------------------------------------------------------------------------------

def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        half = len(text) // 2
        f.write(text[:half])
        f.flush()
        signal_for_tests(f"half-written:{path.name}")  # a kill here leaves a half-written .tmp, never a half `path`
        f.write(text[half:])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=1) + "\n")


# --- reading a run's (or a sweep's) small files: damage is named, never a traceback ------------------------
# Every reader raises CorruptFile (one line: the file, the line, what to do) for a file that cannot be read, is
# not JSON, or does not hold what the code after it indexes into. A sweep lists such a run as "corrupt" and goes
# on (executor.run_state, report.load_run); a command on one run stops with that line.

def _damaged(path: Path, what: str) -> CorruptFile:
    path = Path(path)
    if path.name == "sweep.json":
        todo = "this sweep directory is damaged: restore the file, or delete it (the next sweep writes it again)"
    else:
        todo = (f"this run directory is damaged: restore the file, or delete {path.parent} and run the sweep or "
                f"the run again")
    return CorruptFile(f"{path} {what}: {todo}")


def _text(path: Path) -> str:
    try:
        return Path(path).read_text()
    except UnicodeDecodeError:
        raise _damaged(path, "is not a text file") from None
    except OSError as e:
        raise _damaged(path, f"cannot be read ({e.strerror or e})") from None


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bn_params_problem(params) -> str:
    if not isinstance(params, dict):
        return "is not a {layer: {gamma, beta}} table"
    for layer, p in params.items():
        if not isinstance(p, dict) or not all(isinstance(p.get(k), list) and all(map(_number, p[k]))
                                              for k in ("gamma", "beta")):
            return f"has no lists of numbers gamma and beta for layer {layer!r}"
    return ""


def _shape_problem(name: str, obj) -> str:
    """What is wrong with the content of a run's or sweep's JSON file, by its name ("" = nothing)."""
    if name == "meta.json":
        if not isinstance(obj, dict):
            return "is not a JSON object"
        if not isinstance(obj.get("status", ""), str) or not isinstance(obj.get("epochs_done", 0), int):
            return "has a status or epochs_done of the wrong type"
    elif name == "bn_params.json":
        return _bn_params_problem(obj)
    elif name == "bn_history.json":
        if not isinstance(obj, list):
            return "is not a list of epochs"
        for i, entry in enumerate(obj, 1):
            if not isinstance(entry, dict) or not isinstance(entry.get("epoch"), int) or \
                    _bn_params_problem(entry.get("params")):
                return f"entry {i} is not an {{epoch, params}} pair with gamma and beta per layer"
    elif name == "sweep.json" and not isinstance(obj, dict):  # (what a sweep reads of it: sweep.previous_record)
        return "is not a JSON object"
    return ""


def read_json(path: Path):
    """A JSON file; meta.json, bn_params.json, bn_history.json and sweep.json are checked for their shape."""
    path = Path(path)
    try:
        obj = json.loads(_text(path))
    except json.JSONDecodeError as e:
        raise _damaged(path, f"is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    problem = _shape_problem(path.name, obj)
    if problem:
        raise _damaged(path, problem)
    return obj


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    try:  # weights_only: a checkpoint holds tensors, numbers and strings, never code to run
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any damage (truncated zip, bad pickle) reads as "unreadable"
        raise UserError(f"{path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        f"the run cannot be resumed from it: start a new run") from None


def write_jsonl(path: Path, rows: list) -> None:
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def write_metrics(run_dir: Path, rows: list) -> None:
    write_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    columns = list(EpochStats.__dataclass_fields__)
    columns = [c for c in columns if any(c in r for r in rows)] or columns
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(run_dir / "metrics.csv", buf.getvalue())


METRIC_KEYS = ("epoch", "loss", "train_acc", "test_acc", "examples_per_sec", "seconds")  # every row has these


def read_rows(path: Path, keys, what: str) -> list:
    """A .jsonl file's rows ([] if there is none); a line that is not JSON, or lacks a number for one of
    ``keys``, raises CorruptFile naming the line and saying it is not ``what``."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise _damaged(path, f"line {n} is not valid JSON ({e.msg}, column {e.colno})") from None
        missing = [k for k in keys if not isinstance(row, dict) or not _number(row.get(k))]
        if missing:
            raise _damaged(path, f"line {n} is not {what} (no number {missing[0]!r})")
        rows.append(row)
    return rows


def read_steps(path: Path) -> list:
    """A per-step record's rows (curve.jsonl, landscape.jsonl)."""
    return read_rows(path, ("step",), "a step's row")


def read_metrics(run_dir) -> list:
    """metrics.jsonl's rows."""
    return read_rows(Path(run_dir) / "metrics.jsonl", METRIC_KEYS, "an epoch's row")
