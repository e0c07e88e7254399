"""How much faster is `bn-lenet sweep` than the same runs one after another, and what does Ray add?

A 12-run sweep (norm scratch/torch x lr 0.1/1.0 x seeds 0-2, 1 epoch each) timed three ways, each in fresh
processes from the command line, as a user would run it:

  sequential  the same 12 `bn-lenet run` commands one after another (each with torch's default threads)
  local       `bn-lenet sweep SPEC` (default --jobs: one worker per core, cores // jobs threads each)
  ray         `bn-lenet sweep SPEC --executor ray` (a local Ray instance started by the command)

Writes results/benchmark/sweep.json and sweep.md (command, hardware, versions, every wall time). Run it on a
quiet machine (~5 min on 2 cores); `--limit-batches 2 --out /tmp/speed` checks that it works (a few minutes: 36 process starts).

    python experiments/sweep_speed.py [--rounds 1] [--limit-batches 0] [--no-ray] [--out results/benchmark]
"""

import argparse
import json
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bn_lenet.training.provenance import cpu_model, git_commit  # noqa: E402
from bn_lenet.sweeps.sweep import cores  # noqa: E402

NORMS, LRS, SEEDS = ["scratch", "torch"], [0.1, 1.0], [0, 1, 2]
PY = [sys.executable, "-m", "bn_lenet"]


def spec_text(limit: int) -> str:
    return (f'question = "speed check"\nconfig = "{ROOT / "configs" / "scratch_bn.toml"}"\nseeds = {len(SEEDS)}\n'
            f'[set]\n"train.epochs" = 1\n"train.limit_batches" = {limit}\n'
            f'[grid]\n"model.norm" = {json.dumps(NORMS)}\n"train.lr" = {json.dumps(LRS)}\n')


def timed(cmd: list) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def sequential(work: Path, limit: int) -> float:
    started = time.perf_counter()
    for norm in NORMS:
        for lr in LRS:
            for seed in SEEDS:
                out = work / "sequential" / f"norm={norm},lr={lr:g}" / f"seed-{seed}"
                subprocess.run([*PY, "run", "configs/scratch_bn.toml", "--out", str(out), "--quiet",
                                "--set", f"model.norm={norm}", "--set", f"train.lr={lr}", "--set", f"train.seed={seed}",
                                "--set", "train.epochs=1", "--set", f"train.limit_batches={limit}"],
                               cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def final_test_accs(runs_dir: Path) -> dict:
    accs = {}
    for metrics in sorted(runs_dir.glob("*/*/metrics.jsonl")):
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        accs[str(metrics.parent.relative_to(runs_dir))] = rows[-1]["test_acc"]
    return accs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=1, help="repeat the three timings, interleaved (default 1)")
    p.add_argument("--limit-batches", type=int, default=0, help="train.limit_batches (0 = full epochs)")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray executor")
    p.add_argument("--out", default="results/benchmark", help="folder for sweep.json and sweep.md")
    args = p.parse_args()
    try:
        import ray
        ray_version = ray.__version__
    except ImportError:
        ray_version, args.no_ray = "not installed", True
    import torch
    work = Path(tempfile.mkdtemp(prefix="sweep-speed-"))
    (work / "spec.toml").write_text(spec_text(args.limit_batches))
    times = {"sequential": [], "local": [], "ray": []}
    try:
        for k in range(args.rounds):
            for d in ("sequential", "local", "ray"):
                shutil.rmtree(work / d, ignore_errors=True)
            times["sequential"].append(sequential(work, args.limit_batches))
            times["local"].append(timed([*PY, "sweep", str(work / "spec.toml"), "--out", str(work / "local"), "--quiet"]))
            if not args.no_ray:
                times["ray"].append(timed([*PY, "sweep", str(work / "spec.toml"), "--out", str(work / "ray"), "--quiet",
                                           "--executor", "ray"]))
            print(f"round {k + 1}: " + ", ".join(f"{m} {t[-1]:.1f} s" for m, t in times.items() if t), flush=True)
        seq_acc, local_acc = final_test_accs(work / "sequential"), final_test_accs(work / "local" / "runs")
        sweep = json.loads((work / "local" / "sweep.json").read_text())["provenance"]["invocations"][-1]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {m: min(t) for m, t in times.items() if t}
    result = {
        "command": "python " + shlex.join(["experiments/sweep_speed.py", *sys.argv[1:]]),
        "runs": len(NORMS) * len(LRS) * len(SEEDS), "epochs": 1, "limit_batches": args.limit_batches,
        "wall_seconds": times, "best_wall_seconds": best,
        "local_over_sequential": best["local"] / best["sequential"],
        "ray_over_sequential": best["ray"] / best["sequential"] if "ray" in best else None,
        "ray_over_local": best["ray"] / best["local"] if "ray" in best else None,
        "local_jobs": sweep["jobs"], "local_threads_per_run": sweep["threads_per_run"],
        "max_test_acc_difference_sequential_vs_local": max(abs(seq_acc[k] - local_acc[k]) for k in seq_acc),
        "hardware": {"cpu": cpu_model(), "cores": cores()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "ray": ray_version},
        "git_commit": git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "sweep.md").write_text(report(result))
    print(f"local/sequential {result['local_over_sequential']:.2f}x; wrote {out / 'sweep.md'}")
    return 0


def report(r: dict) -> str:
    best = r["best_wall_seconds"]
    rows = [f"| {m} | {best[m]:.1f} | {best[m] / best['sequential']:.2f}x | "
            + ", ".join(f"{t:.1f}" for t in r["wall_seconds"][m]) + " |" for m in best]
    return "\n".join([
        "# Sweep executors against the same runs one after another", "",
        f"{r['runs']} runs (norm scratch/torch x lr 0.1/1.0 x 3 seeds), {r['epochs']} epoch each"
        f"{', ' + str(r['limit_batches']) + ' batches' if r['limit_batches'] else ''}; wall time of the whole "
        f"command(s), best of {len(r['wall_seconds']['sequential'])} round(s).", "",
        "| how | wall s (best) | vs sequential | every round |", "|---|---|---|---|", *rows, "",
        "- sequential: the 12 `bn-lenet run` commands one after another, torch's default threads each",
        f"- local: `bn-lenet sweep` with {r['local_jobs']} worker process(es) x {r['local_threads_per_run']} thread(s)",
        "- ray: `bn-lenet sweep --executor ray`, a local Ray instance started by the command (its start included)"
        if r["ray_over_local"] else "- ray: not run",
        f"- largest difference of a run's final test acc, sequential vs local: "
        f"{r['max_test_acc_difference_sequential_vs_local']:.4f} (thread counts differ)", "",
        f"Command: `{r['command']}` at git commit {r['git_commit']}, {r['date']}.",
        f"Hardware: {r['hardware']['cpu']}, {r['hardware']['cores']} cores. Versions: Python "
        f"{r['versions']['python']}, torch {r['versions']['torch']}, ray {r['versions']['ray']}.", ""])


if __name__ == "__main__":
    sys.exit(main())
