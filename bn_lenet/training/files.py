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

from ..errors import UserError
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


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}): this run directory is damaged") from None


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


def read_metrics(run_dir) -> list:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
