"""Interrupted, killed and diverged runs lose nothing, and a resumed run ends exactly where a straight one does.

Runs are short: 3 epochs of 3 batches of 64, evaluated on the first 500 test images (evaluation would
dominate otherwise), and no figures except in the child processes. Exact moments to stop a run come from the
test hook in bn_lenet/training/files.py (BN_LENET_TEST_SIGNAL="SIG@point": the run sends itself SIG there); for one kill
the child stops itself (SIGSTOP) and this process sends the SIGKILL.
"""

import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bn_lenet.training import config, runs
from bn_lenet.cli import main
from bn_lenet.training.files import write_json
from helpers import TEST_IMAGES, child_script, quiet  # noqa: E402

pytestmark = pytest.mark.usefixtures("quick_runs")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "scratch_bn.toml"
# One thread: on a shared 2-core machine two OpenMP threads wait for each other (steps ~50x slower). On the CPU:
# the results are compared bit for bit, which a GPU does not promise (cuDNN's backward may sum in any order;
# tests/test_gpu.py compares resumed GPU runs within a tolerance), and the divergence cases were tuned here.
QUICK = ["train.epochs=3", "train.limit_batches=3", "train.batch_size=64", "train.threads=1", "train.device=cpu"]
TIMING = ("examples_per_sec", "seconds")  # wall-clock fields: the only ones allowed to differ

# A child process runs the CLI's main() on the same smaller test set.
CHILD = child_script(TEST_IMAGES)



def quick_config(norm="scratch", *extra):
    return config.resolve(CONFIG, QUICK + [f"model.norm={norm}", *extra])


def result(run_dir: Path):
    """What an interruption must not change: metrics (less timing), the final weights and BN statistics."""
    rows = [{k: v for k, v in r.items() if k not in TIMING} for r in runs.read_metrics(run_dir)]
    with open(run_dir / "metrics.csv") as f:
        csv_rows = [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]
    weights = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    bn = [runs.read_json(run_dir / name) for name in ("bn_params.json", "bn_history.json")]
    return rows, csv_rows, weights, bn


def assert_identical(run_dir: Path, reference: Path):
    rows, csv_rows, weights, bn = result(run_dir)
    ref_rows, ref_csv_rows, ref_weights, ref_bn = result(reference)
    assert len(rows) == 3 and rows == ref_rows and csv_rows == ref_csv_rows  # floats compared exactly
    assert weights.keys() == ref_weights.keys()
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights), "weights or BN statistics differ"
    assert bn == ref_bn


@pytest.fixture(scope="module")
def straight(tmp_path_factory, small_data):
    """straight(norm): a run of QUICK that nothing interrupted, trained once per module."""
    made = {}

    def get(norm):
        if norm not in made:
            out = tmp_path_factory.mktemp("straight") / norm
            assert runs.train_run(quick_config(norm), out=out, data=small_data, log=quiet)["status"] == "finished"
            made[norm] = out
        return made[norm]
    return get


# --- determinism -----------------------------------------------------------------------------------------

def test_same_config_and_seed_give_identical_metrics_and_weights(straight, small_data, tmp_path):
    runs.train_run(quick_config("scratch"), out=tmp_path / "again", data=small_data, log=quiet)
    assert_identical(tmp_path / "again", straight("scratch"))


# --- clean stops: SIGTERM / SIGINT -----------------------------------------------------------------------

@pytest.mark.parametrize("signame,norm,batch,done", [
    ("SIGTERM", "scratch", 5, 1),  # during epoch 2: resumes from epoch 1's checkpoint
    ("SIGINT", "torch", 8, 2),     # during epoch 3: nn.BatchNorm's buffers (num_batches_tracked too) restored
    ("SIGTERM", "none", 2, 0),     # during epoch 1, before any checkpoint: resumes from the start
])
def test_a_signal_stops_at_a_batch_boundary_and_the_resumed_run_is_identical(
        signame, norm, batch, done, straight, small_data, tmp_path, monkeypatch):
    out, messages = tmp_path / "run", []
    handler_before = signal.getsignal(getattr(signal, signame))
    monkeypatch.setenv("BN_LENET_TEST_SIGNAL", f"{signame}@batch:{batch}")
    meta = runs.train_run(quick_config(norm), out=out, data=small_data, log=quiet, log_error=messages.append)
    assert meta["status"] == "interrupted" and meta["epochs_done"] == done
    assert meta["interrupted_at"] == {"epoch": done + 1, "batch": (batch - 1) % 3}  # batches done in that epoch
    assert messages == [f"interrupted during epoch {done + 1}; kept the {done} finished epoch(s) in {out}. "
                        f"Continue with: bn-lenet run --resume {out}"]
    assert [r["epoch"] for r in runs.read_metrics(out)] == list(range(1, done + 1))
    assert signal.getsignal(getattr(signal, signame)) is handler_before

    monkeypatch.delenv("BN_LENET_TEST_SIGNAL")
    cfg, _ = runs.resume_config(out)
    meta = runs.train_run(cfg, out=out, data=small_data, log=quiet, resume=True)
    assert meta["status"] == "finished" and [r["at_epoch"] for r in meta["resumed"]] == [done]
    assert "interrupted_at" not in meta and "message" not in meta
    assert_identical(out, straight(norm))


def test_a_stop_after_the_last_batch_keeps_the_finished_run_and_still_stops_the_caller(
        small_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("BN_LENET_TEST_SIGNAL", "SIGINT@checkpoint:3")  # after the last epoch's checkpoint
    with pytest.raises(KeyboardInterrupt):
        runs.train_run(quick_config("scratch"), out=out, data=small_data, log=quiet)
    assert runs.read_json(out / "meta.json")["status"] == "finished"
    assert [r["epoch"] for r in runs.read_metrics(out)] == [1, 2, 3]


# --- real kills ------------------------------------------------------------------------------------------

def check_metrics_files(run_dir: Path) -> int:
    """metrics.jsonl and metrics.csv hold whole rows for epochs 1..k: never a partial or duplicated row."""
    for name in ("metrics.jsonl", "metrics.csv"):
        try:
            text = (run_dir / name).read_text()
        except FileNotFoundError:
            continue
        assert text == "" or text.endswith("\n"), f"{name} ends mid-row: {text[-80:]!r}"
        if name.endswith(".jsonl"):
            epochs = [json.loads(line)["epoch"] for line in text.splitlines()]
        else:
            rows = list(csv.reader(io.StringIO(text)))
            assert rows and rows[0][0] == "epoch" and all(len(r) == len(rows[0]) for r in rows), text
            epochs = [int(r[0]) for r in rows[1:]]
        assert epochs == list(range(1, len(epochs) + 1)), f"{name}: epochs {epochs}"
    return 1


def start(args, test_signal=None):
    env = {k: v for k, v in os.environ.items() if k != "BN_LENET_TEST_SIGNAL"}
    if test_signal:
        env["BN_LENET_TEST_SIGNAL"] = test_signal
    return subprocess.Popen([sys.executable, "-c", CHILD, "run", *args, "--quiet"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stopped(proc) -> bool:
    """The child has stopped itself (SIGSTOP from the test hook) and waits for what we send it."""
    return Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def watch(proc, run_dir: Path, kill_when_stopped=False):
    """Wait for the child, checking the metrics files all the while; SIGKILL it once it has stopped itself."""
    checks, deadline = 0, time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        checks += check_metrics_files(run_dir)
        if kill_when_stopped and stopped(proc):
            proc.kill()
        time.sleep(0.005)
    _, err = proc.communicate(timeout=60)
    check_metrics_files(run_dir)
    return proc.returncode, err, checks


@pytest.mark.slow
def test_a_run_killed_at_any_moment_resumes_to_the_same_result(straight, tmp_path):
    run = tmp_path / "run"
    new, again = [str(CONFIG), "--out", str(run)] + [a for s in QUICK for a in ("--set", s)], ["--resume", str(run)]
    steps = [  # (command, test hook, exit code, where it stops) for a run of 3 epochs of 3 batches
        (new, "SIGKILL@half-written:metrics.jsonl", -9, "epoch 1's checkpoint saved, metrics.jsonl half written"),
        (again, "SIGTERM@batch:2", 130, "a clean stop in epoch 2, before its second batch"),
        (again, "SIGSTOP@batch:5", -9, "stopped in epoch 3 (epoch 2 saved), then SIGKILL from this process"),
        (again, "SIGKILL@checkpoint:3", -9, "epoch 3's checkpoint saved, its metrics not"),
        (again, None, 0, "finishes: nothing left to train"),
    ]
    checks = 0
    for args, hook, code, where in steps:
        returncode, err, n = watch(start(args, hook), run, kill_when_stopped=str(hook).startswith("SIGSTOP"))
        checks += n
        assert returncode == code, f"{where}: exit {returncode}, stderr {err}"
        assert "Traceback" not in err
        if code == 130:
            assert err == (f"interrupted during epoch 2; kept the 1 finished epoch(s) in {run}. "
                           f"Continue with: bn-lenet run --resume {run}\n")
    meta = runs.read_json(run / "meta.json")
    assert meta["status"] == "finished" and [r["at_epoch"] for r in meta["resumed"]] == [1, 1, 2, 3]
    assert meta["threads"] == runs.read_json(straight("scratch") / "meta.json")["threads"] == 1
    assert not list(run.glob("*.tmp"))
    assert_identical(run, straight("scratch"))
    print(f"{len(steps) - 1} stops, {checks} snapshots of the metrics files checked")


# --- divergence ------------------------------------------------------------------------------------------

def test_lr_1e38_stops_the_run_in_its_first_epoch_with_one_clear_message(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", str(CONFIG), "--set", "train.lr=1e38", "--out", str(out), "--quiet"]
                + [a for s in QUICK for a in ("--set", s)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err == (f"error: training diverged at epoch 1: the training loss is nan. Kept the 0 finished "
                   f"epoch(s) before it in {out}. Lower train.lr and start a new run.\n")
    meta = runs.read_json(out / "meta.json")
    assert meta["status"] == "diverged" and meta["diverged_at_epoch"] == 1 and meta["epochs_done"] == 0
    assert not (out / "checkpoint.pt").exists() and runs.read_metrics(out) == []

    assert main(["run", "--resume", str(out)]) == 2
    assert "diverged at epoch 1; resuming would repeat it" in capsys.readouterr().err


def test_divergence_after_good_epochs_keeps_them_and_the_last_good_checkpoint(tmp_path, small_data):
    # Without BN at lr 1e35 (found by trying): a few finite epochs, then the loss overflows.
    out = tmp_path / "run"
    cfg = config.resolve(CONFIG, ["model.norm=none", "train.lr=1e35", "train.epochs=5", "train.limit_batches=2",
                                   "train.threads=1", "train.device=cpu"])
    meta = runs.train_run(cfg, out=out, data=small_data, log=quiet)
    rows, ckpt = runs.read_metrics(out), torch.load(out / "checkpoint.pt", weights_only=True)
    assert meta["status"] == "diverged" and len(rows) >= 1, "the scenario needs a good epoch before divergence"
    assert meta["diverged_at_epoch"] == len(rows) + 1 == ckpt["epoch"] + 1 == meta["epochs_done"] + 1
    assert not math.isfinite(float(meta["diverged_loss"]))
    assert all(math.isfinite(r[k]) for r in rows for k in ("loss", "train_acc", "test_acc"))
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())
    assert ckpt["history"] == rows


def test_bn_statistics_that_overflow_count_as_divergence_though_the_loss_is_finite(tmp_path, small_data):
    # Scratch BN at lr 1e30: the training loss stays finite (about 1e30) but the first BN layer's moving
    # variance overflows, so eval mode would use inf. Nothing of that epoch is saved.
    out = tmp_path / "run"
    meta = runs.train_run(quick_config("scratch", "train.lr=1e30"), out=out, data=small_data, log=quiet)
    assert meta["status"] == "diverged" and meta["diverged_at_epoch"] == 1
    assert math.isfinite(float(meta["diverged_loss"]))
    assert "conv1.bn.moving_var" in meta["message"] and "became inf or NaN" in meta["message"]
    assert not (out / "checkpoint.pt").exists()


# --- what cannot be resumed ------------------------------------------------------------------------------

def test_a_finished_run_is_not_resumed(straight, capsys):
    assert main(["run", "--resume", str(straight("scratch"))]) == 2
    err = capsys.readouterr().err
    assert "already finished all 3 epochs; nothing to resume" in err and "Traceback" not in err


def test_a_damaged_checkpoint_or_changed_config_is_refused(straight, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.toml", "checkpoint.pt", "meta.json"):
        (run / name).write_bytes((straight("scratch") / name).read_bytes())
    meta = runs.read_json(run / "meta.json")
    write_json(run / "meta.json", dict(meta, status="interrupted"))
    (run / "config.toml").write_text((run / "config.toml").read_text().replace("lr = 1.0", "lr = 0.5"))
    assert main(["run", "--resume", str(run)]) == 2
    assert "differs from the config saved in" in capsys.readouterr().err
    (run / "checkpoint.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    assert main(["run", "--resume", str(run)]) == 2
    assert "checkpoint.pt is unreadable" in capsys.readouterr().err
    (run / "meta.json").write_text('{"status": "runn')
    assert main(["run", "--resume", str(run)]) == 2
    assert "meta.json is not valid JSON" in capsys.readouterr().err
