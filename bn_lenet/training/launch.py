"""A run with ``train.processes`` > 1 started outside torchrun: this process launches the torchrun job itself.

    python -m torch.distributed.run --standalone --nproc-per-node N -m bn_lenet run CONFIG --out RUN_DIR
    python -m torch.distributed.run --standalone --nproc-per-node N -m bn_lenet run --resume RUN_DIR

as a child process and waits for it; the job (distributed.py) trains and writes the run directory as any
torchrun job does. ``runs.train_run`` sends such a run here, so ``bn-lenet run`` and a sweep's worker take the
same path. ``--standalone`` has torchrun pick a free port, so several jobs run side by side.

What comes back is the run's meta.json, as from a run in this process; the job's outcome is read from it and
said in one line: the job's own message (diverged, interrupted, a process lost contact), or, when rank 0
itself died and could not say, the exit code and signal torchrun reports (the run is then marked failed,
its finished epochs kept). A user error every process stopped on before training is raised here as the
UserError it is, and nothing is left on disk.

Each process of the job gets train.threads torch threads (0: one, so N processes use N cores). Ctrl-C or
SIGTERM here is passed on to torchrun as one SIGTERM; torchrun passes it on to every process, which stop at
an agreed batch and keep their finished epochs. If this process dies, the job gets SIGTERM too (Linux).
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from . import config as config_mod
from . import lock
from ..errors import UserError
from .files import read_json, write_json
from .process import stop_signals_to

COMMAND_ENV = "BN_LENET_COMMAND"  # the command the user typed, recorded in meta.json by the job's rank 0


def world_size():
    """WORLD_SIZE of the torchrun job this process is in, or None outside torchrun."""
    text = os.environ.get("WORLD_SIZE")
    return int(text) if text else None


def wanted(cfg) -> bool:
    """Whether this run is to be trained by a torchrun job launched from here. Inside torchrun the job is
    already there: train.processes must then match it (distributed.check; here for a 1-process torchrun)."""
    world = world_size()
    if world is None:
        return cfg.train.processes > 1
    if world == 1 and cfg.train.processes > 1:
        raise UserError(f"train.processes = {cfg.train.processes} but torchrun started 1 process: run "
                        f"`bn-lenet run` without torchrun (it launches the {cfg.train.processes} processes), or "
                        f"give torchrun --nproc-per-node {cfg.train.processes}")
    return False


def command(n: int, args: list) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
            "-m", "bn_lenet", "run", *args, "--quiet"]


def child_env(cfg) -> dict:
    env = dict(os.environ)
    # One thread per process unless train.threads says otherwise: N processes on N cores, not N x cores.
    env["OMP_NUM_THREADS"] = str(cfg.train.threads or 1)
    # The job runs this same bn_lenet (a checkout that is not the installed one, too).
    package_parent = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    env.setdefault(COMMAND_ENV, " ".join(sys.argv))
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _die_with_parent() -> None:
    """In the child, before torchrun starts: SIGTERM when this process dies (Linux's PR_SET_PDEATHSIG), so a
    killed sweep worker never leaves a job training on into a run directory its retry resumes."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@contextmanager
def passing_stops_to(proc):
    """Ctrl-C / SIGTERM here: one SIGTERM to torchrun (a second would cut its shutdown short)."""
    sent = []

    def handler(_signum, _frame):
        if not sent:
            sent.append(True)
            proc.send_signal(signal.SIGTERM)

    with stop_signals_to(handler):
        yield sent


def train(cfg, run_dir: Path, resume: bool, log=print, log_error=print) -> tuple:
    """Train the run in ``run_dir`` (new and empty, or to resume) as a torchrun job of train.processes.
    Returns (meta.json's content, whether a stop was asked here)."""
    n, run_dir = cfg.train.processes, Path(run_dir)
    before = read_json(run_dir / "meta.json") if (run_dir / "meta.json").is_file() else None
    with tempfile.TemporaryDirectory(prefix="bn-lenet-launch-") as tmp:
        if resume:
            args = ["--resume", str(run_dir)]
        else:
            config_file = Path(tmp) / "config.toml"  # the resolved config, as the run will save it
            config_file.write_text(config_mod.to_toml(cfg))
            args = [str(config_file), "--out", str(run_dir)]
        # The job trains the run whose lock this process holds: its rank 0 takes it over (lock.py).
        env = {**child_env(cfg), **lock.inherited_env(run_dir)}
        proc = subprocess.Popen(command(n, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, start_new_session=True, preexec_fn=_die_with_parent)
        stderr = []
        reader = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)
        reader.start()
        with passing_stops_to(proc) as stopped:
            for line in proc.stdout:  # rank 0's epoch lines and summary
                log(line.rstrip("\n"))
            code = proc.wait()
        reader.join()
    return outcome(run_dir, n, code, stderr, before, log_error), bool(stopped)


def outcome(run_dir: Path, n: int, code: int, stderr: list, before, log_error) -> dict:
    """The run's meta.json after the job ended, its outcome said in one line (see the module's doc)."""
    meta = read_json(run_dir / "meta.json") if (run_dir / "meta.json").is_file() else None
    ours = [line.strip().removeprefix("error: ") for line in stderr if line.startswith("error: ")]
    if meta is None or (code != 0 and meta == before):  # the job stopped before it trained anything
        if before is None and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # created for the job: a user error leaves nothing written
        raise UserError(ours[0] if ours else f"the {n}-process torchrun job stopped before training "
                        f"(exit code {code}): {why(stderr)}")
    if meta["status"] == "running":  # rank 0 itself died: nobody of the job could say so
        meta.update(status="failed", ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    message=f"the {n}-process torchrun job failed (exit code {code}: {why(stderr)}). Kept the "
                            f"{meta.get('epochs_done', 0)} finished epoch(s) in {run_dir}. Continue with: "
                            f"bn-lenet run --resume {run_dir}")
        write_json(run_dir / "meta.json", meta)
    if "message" in meta:
        log_error(("error: " if meta["status"] in ("diverged", "failed") else "") + meta["message"])
    return meta


def why(stderr: list) -> str:
    """What torchrun's report names as the root cause (the first process to fail: the others were then
    stopped by torchrun), else its last line."""
    text = "".join(stderr)
    root = re.search(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)([^\n]*)", text, re.S)
    if root:
        rank, code, rest = root.groups()
        signal_name = re.search(r"\((SIG\w+)\)", rest)
        return (f"rank {rank} was killed by {signal_name.group(1)}" if signal_name
                else f"rank {rank} exited with code {code}")
    lines = [line.strip() for line in stderr if line.strip()]
    return lines[-1][:200] if lines else "no output"
