"""Reproduce the d2l "Batch Normalization" tutorial: its two runs (scratch BN, nn.BatchNorm), 10 epochs each.

Writes results/reproduce/: summary.md (our figures next to the published ones, hardware, versions, wall
time, the command), and per variant the metrics, gamma/beta, curves.png and bn_params.png.
The full run directories (with checkpoints) stay under results/runs/ (not committed).

On a CPU with 2 or more cores the two runs train side by side, each a `bn-lenet run` process with half the
cores (``--jobs 2``, the default there): LeNet's small batches keep two threads only partly busy, so two
1-thread processes finish both runs sooner than one 2-thread process running them one after the other.
Measured on the 2-core CPU at 017de73, back to back: side by side 11,294 + 11,593 examples/sec, 63 s for the
whole script; ``--jobs 1`` 18,652 and 17,919 examples/sec, 74 s (at a20aaa0: 59 s against 89 s). ``--jobs 1`` trains them one after
the other in this process (the default on a GPU).

    python experiments/reproduce.py [--set section.key=value ...] [--out results/reproduce] [--jobs N]
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bn_lenet.training import config, data as data_mod, process, runs  # noqa: E402
from bn_lenet.training.run_dir import new_run_dir  # noqa: E402
from bn_lenet import published  # noqa: E402
from bn_lenet.errors import run_main  # noqa: E402
from bn_lenet.errors import UserError  # noqa: E402
from bn_lenet.training.files import read_json  # noqa: E402
from bn_lenet.training.device import resolve_device  # noqa: E402

VARIANTS = {"scratch_bn": "configs/scratch_bn.toml", "torch_bn": "configs/torch_bn.toml"}
# The tutorial's published runs (V100; sources in bn_lenet/published.py). Quoted, never measured here.
PUBLISHED = [(f"{p.variant}_bn", f"{p.source} (V100)", p.loss, p.train_acc, p.test_acc, p.examples_per_sec)
             for p in published.RUNS]
KEEP = ("config.toml", "metrics.jsonl", "metrics.csv", "bn_params.json", "bn_history.json", "meta.json",
        "curves.png", "bn_params.png")


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--out", default=str(ROOT / "results" / "reproduce"))
    p.add_argument("--jobs", type=int, default=0, help="runs trained at once, each in its own process with "
                   "cores/jobs threads (default: 2 on a CPU with >= 2 cores, else 1)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.jobs < 0:
        raise UserError(f"--jobs must be 0 (automatic) or a number of runs at once, got {args.jobs}")
    out = Path(args.out)
    started = time.perf_counter()
    cfgs = {name: config.resolve(ROOT / path, args.overrides) for name, path in VARIANTS.items()}
    first = next(iter(cfgs.values()))
    device = resolve_device(first.train.device)
    jobs = args.jobs or (min(len(cfgs), cores()) if device.type == "cpu" else 1)
    if jobs > 1:
        threads = max(1, cores() // jobs)
        data_mod.find_files(first.data.root or None)  # a missing dataset: one error here, not one per run
        metas = train_side_by_side(args.overrides, threads)
        how = f"{len(cfgs)} `bn-lenet run` processes side by side, {threads} thread(s) each (--jobs {jobs})"
    else:
        # This process trains both runs: on CPU, glibc keeps the memory each step frees (process-wide: ~1,000
        # fewer page faults per step, the same numbers; bn_lenet/training/process.py). The side-by-side runs above are
        # `bn-lenet run` processes, which set it themselves.
        process.keep_freed_memory(first.train.device)
        data = data_mod.load_dataset(first.data.root or None)  # read once, shared by both runs
        metas = {}
        for name, cfg in cfgs.items():
            print(f"== {name} ({VARIANTS[name]})", flush=True)
            metas[name] = runs.train_run(cfg, name=f"reproduce-{name}", data=data,
                                         progress=not args.quiet and sys.stderr.isatty())
            if metas[name]["status"] != "finished":  # diverged or stopped: do not start the next run
                break
        how = "one run after the other in one process (--jobs 1)"
    unfinished = {name: meta for name, meta in metas.items() if meta["status"] != "finished"}
    for name, meta in unfinished.items():
        print(f"error: {name} did not finish ({meta['status']}); its finished epochs are in {meta['run_dir']}",
              file=sys.stderr)
    if unfinished:  # no summary from partial runs
        return 130 if all(m["status"] == "interrupted" for m in unfinished.values()) else 1
    if jobs == 1:
        for name, meta in metas.items():
            print(f"{name}:")
            for line in runs.summary_lines(meta["run_dir"]):
                print("  " + line)
    wall = time.perf_counter() - started

    out.mkdir(parents=True, exist_ok=True)
    for name, meta in metas.items():
        (out / name).mkdir(exist_ok=True)
        for f in KEEP:
            shutil.copy(Path(meta["run_dir"]) / f, out / name / f)
    (out / "summary.md").write_text(summary(cfgs, metas, wall, argv if argv is not None else sys.argv[1:], how))
    print(f"wrote {out / 'summary.md'} (whole reproduction: {wall:.0f} s wall)")
    return 0


def train_side_by_side(overrides, threads: int) -> dict:
    """Train every variant at once, each as `python -m bn_lenet run CONFIG --quiet` in its own process, its
    lines prefixed with its name. Ctrl-C / SIGTERM reach every run, which saves its finished epochs and
    stops (continue each with `bn-lenet run --resume RUN_DIR`). Returns {name: meta.json}."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    procs, readers, run_dirs = {}, [], {}
    for name, path in VARIANTS.items():
        run_dirs[name] = new_run_dir(None, f"reproduce-{name}")
        sets = [f"train.threads={threads}", *overrides]  # the caller's own train.threads, if any, wins
        cmd = [sys.executable, "-m", "bn_lenet", "run", str(ROOT / path), "--quiet", "--out", str(run_dirs[name]),
               *(f"--set={s}" for s in sets)]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        procs[name] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       bufsize=1)
        readers.append(threading.Thread(target=_echo, args=(name, procs[name].stdout), daemon=True))
        readers[-1].start()

    def forward(signum, _frame):  # a stop asked of this process reaches the runs, which save and stop
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    saved = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for proc in procs.values():
            proc.wait()
        for reader in readers:
            reader.join()
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)
    metas = {}
    for name, run_dir in run_dirs.items():
        meta_path = run_dir / "meta.json"
        if procs[name].returncode not in (0, 1, 130) or not meta_path.exists():
            raise UserError(f"the {name} run stopped before training (exit status {procs[name].returncode}); "
                            f"its error is printed above")
        metas[name] = read_json(meta_path)
    return metas


def _echo(name: str, stream) -> None:
    for line in stream:
        print(f"  [{name}] {line}", end="", flush=True)


def summary(cfgs, metas, wall, argv, how) -> str:
    env = next(iter(metas.values()))
    lines = ["# Reproducing the d2l Batch Normalization tutorial", "",
             "LeNet (sigmoid, avg-pool, BN after every conv/linear but the last) on Fashion-MNIST, SGD lr 1.0, "
             "10 epochs, batch 256, Xavier-uniform init: the tutorial's two runs, from this repository's code.", "",
             "| variant | run | loss | train acc | test acc | examples/sec |", "|---|---|---|---|---|---|"]
    for name, meta in metas.items():
        rows = runs.read_metrics(meta["run_dir"])
        last = rows[-1]
        eps = len(rows) / sum(1 / r["examples_per_sec"] for r in rows)
        lines.append(f"| {name} | **ours** ({meta['device_name']}) | {last['loss']:.3f} | {last['train_acc']:.3f} "
                     f"| {last['test_acc']:.3f} | {eps:,.0f} |")
    for name, source, loss, tr, te, eps in PUBLISHED:
        lines.append(f"| {name} | published, {source} | {loss:.3f} | {tr:.3f} | {te:.3f} | {eps:,.0f} |")
    low = min(lo for lo, _ in published.TEST_ACC_RANGE.values())
    high = max(hi for _, hi in published.TEST_ACC_RANGE.values())
    lines += ["", published.citation() + f" Final test accuracy at lr 1.0 is very noisy from run to run (published "
              f"builds range {low:.2f}-{high:.2f}); see results/sweeps/compare/ for the distribution over seeds.", "",
              "## Learned gamma/beta of the first BN layer (conv1.bn)", ""]
    for name, meta in metas.items():
        for line in runs.summary_lines(meta["run_dir"])[2:]:
            lines.append(f"- {name}: `{line}`")
    lines += ["", "## Figures", ""]
    for name in metas:
        lines += [f"{name}: ![curves]({name}/curves.png) ![gamma/beta]({name}/bn_params.png)", ""]
    lines += ["## Provenance", "",
              f"- command: `python experiments/reproduce.py {' '.join(argv)}` (or `make reproduce`)",
              f"- wall time of the whole reproduction (data load, both runs, evaluation, files): {wall:.0f} s",
              f"- how: {how}; examples/sec is each run's own rate while it ran that way",
              f"- hardware: {env['device_name']} ({env['device']}, {env['threads']} threads); CPU {env['cpu']}",
              f"- versions: Python {env['python']}, torch {env['torch']}, torchvision {env['torchvision']}",
              f"- platform: {env['platform']}", f"- git commit: {env['git_commit']}",
              f"- data: {env['data']}", f"- started: {env['started']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_main(main))
