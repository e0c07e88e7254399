"""Running a sweep's runs: what to do with one run directory, and the two executors that run many.

Every run is an ordinary run directory written by ``runs.train_run``. What a worker does with it depends
only on what is on disk (``run_state``), so a task can be started again at any time (after a kill, by
Ray's retry, by rerunning the command) and does the right thing: skip a finished or diverged run,
resume one that has a checkpoint, start one again that has none. It looks only once it holds the run's
lock (training/lock.py): a run another live process holds (another sweep on the same OUT, a `bn-lenet run
--resume`) is skipped and reported "held"; a run whose small files are damaged is reported "corrupt" and
left as it is.

Executors:
- local: ``jobs`` worker processes (spawned, so no state of the parent leaks in), each with torch threads
  = cores // jobs, loading the dataset once and running one run after another. A worker killed mid-run is
  replaced and its run retried (it resumes from its checkpoint). A worker whose parent dies stops its run
  at the next batch (it is saved as interrupted). Ctrl-C / SIGTERM: every run stops at its next batch
  boundary and keeps its finished epochs.
- ray: the same ``execute`` as Ray tasks (bn_lenet/sweeps/ray_executor.py).
"""

import os
import shutil
import signal
import sys
import threading
import time
from collections import deque
from multiprocessing import connection, get_context
from pathlib import Path

from ..training import config as config_mod
from ..training import lock, process
from ..errors import ConfigError, CorruptFile, UserError
from ..training.files import read_json, read_metrics

RETRIES = 2  # a run whose worker dies is started again this many times (each time it resumes)


# --- one run directory ----------------------------------------------------------------------------------

def config_difference(a: dict, b: dict) -> str:
    diffs = [f"{s}.{k} = {a[s].get(k)!r} there, {b[s].get(k)!r} here" for s in b for k in b[s]
             if a.get(s, {}).get(k) != b[s][k]]
    return "; ".join(diffs[:3]) + ("; ..." if len(diffs) > 3 else "")


def run_state(run_dir: Path, cfg) -> str:
    """'new', 'done' (finished or diverged), 'resume' (has a checkpoint) or 'restart' (stopped before its
    first epoch ended: nothing worth keeping). A run with another config is refused: the spec changed.
    A damaged config.toml or meta.json (or a done run's metrics.jsonl, bn_params.json, bn_history.json, which
    the report reads; a resumed run rewrites them from its checkpoint) raises CorruptFile naming the file."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return "new"
    if not (run_dir / "meta.json").is_file():
        return "restart"
    if not (run_dir / "config.toml").is_file():
        raise CorruptFile(f"{run_dir} has a meta.json but no config.toml: the run directory is damaged; restore "
                          f"the file, or delete {run_dir} and run the sweep again")
    try:
        saved = config_mod.to_dict(config_mod.load(run_dir / "config.toml"))
    except ConfigError as e:  # not TOML, or not a config: damage, not a spec that changed
        raise CorruptFile(f"{e} (in a sweep's run directory: restore it, or delete {run_dir} and run the sweep "
                          f"again)") from None
    wanted = config_mod.to_dict(cfg)
    if saved != wanted:
        raise UserError(f"{run_dir} holds a run with another config than this sweep asks for "
                        f"({config_difference(saved, wanted)}): the spec changed for this output folder. Give the "
                        f"sweep another --out (existing points may only be added to, not changed)")
    if read_json(run_dir / "meta.json").get("status") in ("finished", "diverged"):
        read_metrics(run_dir)
        for name in ("bn_params.json", "bn_history.json"):
            if (run_dir / name).is_file():
                read_json(run_dir / name)
        return "done"
    return "resume" if (run_dir / "checkpoint.pt").is_file() else "restart"


_DATA = {}  # per worker process: the dataset, loaded once per data.root


def execute(task: dict, log=None) -> dict:
    """Bring one run to an end (finished, diverged or interrupted) from whatever state it is in on disk; or
    leave it, as "held" (another live process trains it) or "corrupt" (a damaged file, named)."""
    from ..training import data as data_mod
    from ..training import launch, runs
    run_dir, cfg, started = Path(task["dir"]), task["cfg"], time.perf_counter()
    result = {"dir": str(run_dir), "point": task["point"], "seed": task["seed"], "trained": False}
    prefix = f"{task['point']} seed-{task['seed']}: "
    say = (lambda line: print(prefix + line.removeprefix("error: "), flush=True)) if log is None else log
    try:
        with lock.holding(run_dir):  # before looking: the state may change until then (restart deletes it)
            state = run_state(run_dir, cfg)
            if state != "done":
                if state == "restart":
                    shutil.rmtree(run_dir)
                root = cfg.data.root or None
                if root not in _DATA and not launch.wanted(cfg):  # (a launched job loads its own)
                    _DATA[root] = data_mod.load_dataset(root)
                try:
                    runs.train_run(cfg, out=run_dir, data=_DATA.get(root),
                                   log=say if task.get("verbose") else lambda _: None, resume=state == "resume",
                                   log_error=say)
                except KeyboardInterrupt:  # it finished, and then a stop came: the caller stops after it
                    result["stop"] = True
                result["trained"] = True
            meta = read_json(run_dir / "meta.json")
            rows = runs.read_metrics(run_dir)
            result.update(status=meta["status"], epochs_done=meta.get("epochs_done", len(rows)),
                          message=meta.get("message", ""), last=rows[-1] if rows else {})
    except lock.Held as e:
        result.update(status="held", holder=e.holder, message=lock.describe(e.holder))
    except CorruptFile as e:
        result.update(status="corrupt", message=str(e))
    except UserError as e:
        result.update(status="failed", message=str(e))
    result["seconds"] = time.perf_counter() - started
    return result


# --- local executor: worker processes ---------------------------------------------------------------------

_STOP = []


def _worker_main(conn, threads: int, parent: int) -> None:
    """A worker: set its threads, then run the tasks it is sent until it gets None or its parent dies."""
    import torch
    torch.set_num_threads(threads)
    for sig in (signal.SIGINT, signal.SIGTERM):  # between runs: note the stop; during a run train_run handles it
        signal.signal(sig, lambda *_: _STOP.append(True))

    def watch_parent():  # the parent was killed: stop the run at its next batch (it is saved), then exit
        while os.getppid() == parent:
            time.sleep(0.5)
        _STOP.append(True)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch_parent, daemon=True).start()
    while not _STOP:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None or _STOP:
            return
        # This worker process trains: on CPU, glibc keeps the memory each step frees (process-wide: ~1,000
        # fewer page faults per step, the same numbers; bn_lenet/training/process.py). Once per task: tasks name devices.
        process.keep_freed_memory(task["cfg"].train.device)
        result = execute(task)
        try:
            conn.send(result)
        except OSError:
            return


def run_local(tasks: list, jobs: int, threads: int, on_result) -> bool:
    """Run the tasks on ``jobs`` worker processes. False if stopped by Ctrl-C / SIGTERM."""
    ctx = get_context("spawn")
    queue, tries, workers, stop = deque(tasks), {}, [], []

    def start_worker():
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, args=(child_end, threads, os.getpid()), name="bn-lenet-sweep-worker")
        proc.start()
        child_end.close()
        workers.append({"proc": proc, "conn": parent_end, "task": None})

    def request_stop(*_):
        stop.append(True)

    saved = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for _ in range(min(jobs, len(tasks))):
            start_worker()
        while True:
            busy = [w for w in workers if w["task"] is not None]
            if stop:  # every ~second again: a signal that came before a run installed its handler is not lost
                for w in busy:
                    _signal(w["proc"].pid, signal.SIGTERM)
            else:
                for w in workers:
                    if w["task"] is None and queue:
                        w["task"] = queue.popleft()
                        w["conn"].send(w["task"])
                busy = [w for w in workers if w["task"] is not None]
            if not busy:
                return not stop
            ready = connection.wait([w["conn"] for w in busy] + [w["proc"].sentinel for w in busy], timeout=1.0)
            for w in busy:
                if w["conn"] in ready or w["proc"].sentinel in ready:
                    try:
                        result = w["conn"].recv()
                    except (EOFError, OSError):  # the worker died mid-run
                        result = None
                    task, w["task"] = w["task"], None
                    if result is not None:
                        on_result(result)
                        if result.get("status") == "interrupted" or result.get("stop"):
                            stop.append(True)
                        continue
                    w["proc"].join()
                    workers.remove(w)
                    tries[task["dir"]] = tries.get(task["dir"], 0) + 1
                    if stop:
                        continue
                    if tries[task["dir"]] <= RETRIES:
                        print(f"{task['point']} seed-{task['seed']}: its worker died (exit code "
                              f"{w['proc'].exitcode}); starting it again", file=sys.stderr, flush=True)
                        queue.appendleft(task)
                    else:
                        on_result({"dir": task["dir"], "point": task["point"], "seed": task["seed"],
                                   "status": "failed", "message": f"its worker died {tries[task['dir']]} times "
                                   f"(last exit code {w['proc'].exitcode})", "trained": True})
                    start_worker()
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)
        for w in workers:
            try:
                w["conn"].send(None)
            except OSError:
                pass
        for w in workers:
            w["proc"].join(timeout=10)
            if w["proc"].is_alive():
                w["proc"].kill()


def _signal(pid: int, sig) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
