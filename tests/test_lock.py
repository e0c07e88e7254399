"""One process per run directory: two real sweeps on one OUT (local workers; Ray beside a local worker) train each
run once, a second `run --resume` on a held run is one error line naming the holder, a SIGKILLed holder's lock
is taken over and its run resumes, and the lock's own rules (dead pid, reboot, another host, flock).

The holder is held still where the test needs it: the test hook of bn_lenet/training/files.py makes it send
itself SIGSTOP at a batch (BN_LENET_TEST_SIGNAL="SIGSTOP@batch:N"), holding its lock, until the test sends
SIGCONT. Runs are 1-2 epochs of 2-3 batches on the CPU.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bn_lenet.cli import main
from bn_lenet.training import lock, runs

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "scratch_bn.toml"
QUICK = ["--set", "train.limit_batches=3", "--set", "train.batch_size=64", "--set", "train.threads=1"]


def bn_lenet(*args, env=None, **kw):
    """``python -m bn_lenet ...`` as a real process (without this process's test hook, unless ``env`` sets it)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BN_LENET_TEST_SIGNAL")}
    return [sys.executable, "-m", "bn_lenet", *map(str, args)], {"cwd": ROOT, "env": {**environ, **(env or {})},
                                                                  "text": True, **kw}


def start(*args, env=None):
    cmd, kw = bn_lenet(*args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.Popen(cmd, **kw)


def finish(*args, env=None, timeout=300):
    cmd, kw = bn_lenet(*args, env=env, capture_output=True, timeout=timeout)
    return subprocess.run(cmd, **kw)


def stopped_holder(run_dir: Path, proc, timeout=180) -> int:
    """The pid in run_dir's lock once that process has stopped itself (SIGSTOP) while holding it."""
    path = lock.lock_path(run_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if path.exists():
            try:
                pid = json.loads(path.read_text())["pid"]
                if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "T":
                    return pid
            except (ValueError, KeyError, OSError):
                pass
        time.sleep(0.2)
    raise AssertionError(f"no stopped holder of {path}")


def locks_left(folder: Path) -> list:
    return sorted(str(p) for p in folder.rglob("*.lock"))


# --- two sweeps on one OUT ---------------------------------------------------------------------------------

SWEEP = [CONFIG, "--grid", "model.norm=scratch", "--seeds", "3", "--set", "train.epochs=1", *QUICK, "--jobs", "1"]


@pytest.mark.slow
@pytest.mark.parametrize("second", ["local", "ray"])
def test_two_sweeps_on_one_out_train_each_run_once_and_the_second_reports_the_held_run(tmp_path, second):
    out = tmp_path / "out"
    runs_dir = out / "runs" / "norm=scratch"
    first = start("sweep", *SWEEP, "--out", out, env={"BN_LENET_TEST_SIGNAL": "SIGSTOP@batch:2"})
    try:
        holder = stopped_holder(runs_dir / "seed-0", first)  # the first sweep's worker, mid-run on seed 0
        other = finish("sweep", *SWEEP, "--out", out, "--executor", second)
        report = (out / "report.md").read_text()  # the second sweep's (the first writes its own when it ends)
    finally:
        os.kill(holder, signal.SIGCONT)
        first_out, first_err = first.communicate(timeout=300)

    # The second sweep trained the two free runs, skipped the held one, said which, and did not call it done.
    assert other.returncode == 1, other.stderr[-3000:]
    assert "seed-1: finished" in other.stdout and "seed-2: finished" in other.stdout
    assert f"norm=scratch seed-0: held by another process (pid {holder} on host" in other.stdout
    assert f"norm=scratch seed-0: held by another process (pid {holder} on host" in other.stderr
    assert "run the same command again when it has ended" in other.stderr and "Traceback" not in other.stderr
    assert "norm=scratch seed 0: **held by another process**" in report
    # The first finished its run and found the others done: every run trained once, by one process.
    assert first.returncode == 0, first_err[-3000:]
    assert "seed-0: finished" in first_out and first_out.count("already done") == 2
    for seed in range(3):
        meta = runs.read_json(runs_dir / f"seed-{seed}" / "meta.json")
        assert (meta["status"], meta["epochs_done"], "resumed" in meta) == ("finished", 1, False)
        assert len(runs.read_metrics(runs_dir / f"seed-{seed}")) == 1
    assert locks_left(tmp_path) == []
    again = finish("sweep", *SWEEP, "--out", out)
    assert again.returncode == 0 and "3 done, 0 to train" in again.stdout


# --- bn-lenet run --resume ----------------------------------------------------------------------------------

RUN = [CONFIG, "--set", "train.epochs=2", *QUICK, "--quiet"]


@pytest.mark.slow
def test_a_second_resume_of_a_held_run_is_one_error_line_naming_the_holder_and_changes_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    first = start("run", *RUN, "--out", run_dir, env={"BN_LENET_TEST_SIGNAL": "SIGSTOP@batch:4"})  # in epoch 2
    try:
        holder = stopped_holder(run_dir, first)
        before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
        assert main(["run", "--resume", str(run_dir)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {run_dir} is being trained by another process (pid "
                                                   f"{holder} on host "), err
        assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before
        os.kill(holder, signal.SIGTERM)  # Ctrl-C's stop: at the next batch boundary, its lock released
    finally:
        os.kill(holder, signal.SIGCONT)
        first.communicate(timeout=120)
    assert first.returncode == 130 and runs.read_json(run_dir / "meta.json")["status"] == "interrupted"
    assert locks_left(tmp_path) == []
    assert main(["run", "--resume", str(run_dir), "--quiet"]) == 0
    assert runs.read_json(run_dir / "meta.json")["status"] == "finished" and locks_left(tmp_path) == []


@pytest.mark.slow
def test_the_lock_of_a_sigkilled_holder_is_taken_over_and_the_run_resumes_from_its_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "run"
    killed = finish("run", *RUN, "--out", run_dir, env={"BN_LENET_TEST_SIGNAL": "SIGKILL@checkpoint:1"})
    assert killed.returncode == -signal.SIGKILL
    stale = json.loads(lock.lock_path(run_dir).read_text())  # left behind: nobody could remove it
    assert stale["host"] == lock.HOST and not lock._pid_alive(stale["pid"])
    assert main(["run", "--resume", str(run_dir), "--quiet"]) == 0
    assert "resuming" in capsys.readouterr().out
    meta = runs.read_json(run_dir / "meta.json")
    assert (meta["status"], meta["epochs_done"], meta["resumed"][0]["at_epoch"]) == ("finished", 2, 1)
    assert locks_left(tmp_path) == []


# --- the lock's rules, one process against another -----------------------------------------------------------

HOLD = """
import fcntl, json, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"host": sys.argv[2], "pid": os.getpid()}).encode())
print("held", flush=True)
sys.stdin.read()
"""


def hold(run_dir: Path, host: str):
    """A process that holds run_dir's lock file and its flock, claiming to run on ``host``, until stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock.lock_path(run_dir)), host], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def write_lock(run_dir: Path, **holder):
    lock.lock_path(run_dir).write_text(json.dumps(holder))


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_a_live_holder_on_this_host_or_a_flock_held_elsewhere_keeps_the_lock(tmp_path):
    run_dir = tmp_path / "run"
    for host in (lock.HOST, "another-host"):
        holder = hold(run_dir, host)
        try:
            with pytest.raises(lock.Held, match=f"pid {holder.pid} on host {host}"):
                lock.acquire(run_dir)
            assert lock.holder(run_dir)["pid"] == holder.pid
        finally:
            holder.communicate("")
        lock.lock_path(run_dir).unlink()
    write_lock(run_dir, host=lock.HOST, boot=lock.BOOT, pid=os.getppid())  # alive, and no flock to say otherwise
    with pytest.raises(lock.Held):
        lock.acquire(run_dir)


@pytest.mark.parametrize("holder", [
    {"host": lock.HOST, "boot": lock.BOOT, "pid": "dead"},          # killed
    {"host": lock.HOST, "boot": "an earlier boot", "pid": os.getpid() + 1},  # the machine rebooted
    {"host": "another-host", "pid": 1},                             # another host, and its flock is free
    {},                                                             # garbled
], ids=["dead-pid", "rebooted", "another-host-flock-free", "garbled"])
def test_a_stale_lock_is_taken_over_and_released_with_the_block(tmp_path, holder):
    run_dir = tmp_path / "run"
    write_lock(run_dir, **{k: dead_pid() if v == "dead" else v for k, v in holder.items()})
    assert lock.holder(run_dir) is None
    with lock.holding(run_dir):
        assert json.loads(lock.lock_path(run_dir).read_text())["pid"] == os.getpid()
        with lock.holding(run_dir):  # this process again: free
            pass
        assert lock.lock_path(run_dir).exists()
    assert not lock.lock_path(run_dir).exists()


def test_the_lock_is_released_when_the_block_raises(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with lock.holding(tmp_path / "run"):
            raise KeyboardInterrupt
    assert locks_left(tmp_path) == []


def test_a_process_started_by_the_holder_for_its_run_shares_the_lock_and_no_other_does(tmp_path):
    run_dir, other = tmp_path / "run", tmp_path / "other"
    take = "import sys; from bn_lenet.training import lock; lock.acquire(sys.argv[1]); print('ok')"
    with lock.holding(run_dir), lock.holding(other):
        env = {**os.environ, **lock.inherited_env(run_dir)}
        child = subprocess.run([sys.executable, "-c", take, str(run_dir)], env=env, capture_output=True, text=True)
        assert child.stdout == "ok\n", child.stderr
        child = subprocess.run([sys.executable, "-c", take, str(other)], env=env, capture_output=True, text=True)
        assert "is being trained by another process" in child.stderr


def test_without_flock_a_lock_is_judged_by_its_holder_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "fcntl", None)  # a file system without OS locks
    run_dir = tmp_path / "run"
    write_lock(run_dir, host="another-host", pid=1)  # nothing can say that holder is gone: held
    with pytest.raises(lock.Held, match="pid 1 on host another-host"):
        lock.acquire(run_dir)
    write_lock(run_dir, host=lock.HOST, boot=lock.BOOT, pid=dead_pid())
    with lock.holding(run_dir):
        assert json.loads(lock.lock_path(run_dir).read_text())["pid"] == os.getpid()
    assert locks_left(tmp_path) == []
