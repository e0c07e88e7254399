"""Is the project's training loop as fast as it was before a change? A paired before/after benchmark.

Runs the project's own benchmark (`python -m bn_lenet benchmark`, the project's eager loop only) from two
checkouts of this repository, alternately, in fresh processes on the same machine: before, after, before,
after, ... A slow spell of a shared machine then hits both sides alike. Per round it pairs the epochs the two
processes measured (epoch 2 onwards; epoch 1 is the warm-up) and takes the median of the per-epoch ratios
after/before; the answer is the median over rounds. It also checks that both sides trained to the same
numbers (the final loss and test accuracy of each norm), since a faster loop that trains differently is no
speed-up.

    python experiments/ab_benchmark.py --before ../before-checkout [--after .] [--rounds 3] [--epochs 5]
        [--norms scratch] [--name options]     # -> results/benchmark/ab-<name>.json and .md
"""

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit_of(checkout: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def one_benchmark(checkout: Path, norms: str, epochs: int, out: Path) -> dict:
    """The project's eager loop, in a fresh process whose cwd is the checkout (so its bn_lenet is imported)."""
    cmd = [sys.executable, "-m", "bn_lenet", "benchmark", "--no-tutorial", "--no-compiled", "--no-profile",
           "--no-reproduce", "--norms", norms, "--epochs", str(epochs), "--device", "cpu", "--out", str(out)]
    subprocess.run(cmd, cwd=checkout, check=True, stdout=subprocess.DEVNULL)
    [path] = list(out.glob("cpu*.json"))
    variants = json.loads(path.read_text())["variants"]
    path.unlink()
    return {v["norm"]: v for v in variants if v["loop"] != "tutorial"}


def paired_ratio(after: dict, before: dict) -> float:
    """Median over the measured epochs (2..N) of after/before examples/sec, epoch by epoch."""
    a, b = after["examples_per_sec_per_epoch"][1:], before["examples_per_sec_per_epoch"][1:]
    return statistics.median(x / y for x, y in zip(a, b))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="checkout of the code before the change")
    p.add_argument("--after", default=str(ROOT), help="checkout of the code after it (default: this one)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=5, help="epochs per process (epoch 1 is not measured)")
    p.add_argument("--norms", default="scratch")
    p.add_argument("--name", default="change", help="output name: results/benchmark/ab-<name>.json/.md")
    p.add_argument("--out", default=str(ROOT / "results" / "benchmark"))
    args = p.parse_args(argv)
    sides = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
    started, clock = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            got = {side: one_benchmark(path, args.norms, args.epochs, Path(tmp)) for side, path in sides.items()}
            rounds.append(got)
            for norm in got["after"]:
                print(f"round {r + 1} {norm}: after/before {paired_ratio(got['after'][norm], got['before'][norm]):.3f}",
                      flush=True)
    sys.path.insert(0, str(ROOT))
    from bn_lenet.training.provenance import cpu_model
    import torch
    norms = list(rounds[0]["after"])
    result = {
        "question": "is the project's eager training loop as fast after the change as before it?",
        "command": "python experiments/ab_benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "before_commit": commit_of(sides["before"]), "after_commit": commit_of(sides["after"]),
        "started": started, "wall_seconds": time.perf_counter() - clock, "epochs": args.epochs,
        "cpu": cpu_model(), "threads": torch.get_num_threads(), "python": platform.python_version(),
        "torch": torch.__version__,
        "per_norm": {}, "rounds": rounds,
    }
    for norm in norms:
        ratios = [paired_ratio(g["after"][norm], g["before"][norm]) for g in rounds]
        same = all((g["after"][norm]["loss"], g["after"][norm]["test_acc"]) ==
                   (g["before"][norm]["loss"], g["before"][norm]["test_acc"]) for g in rounds)
        result["per_norm"][norm] = {
            "ratio_median": statistics.median(ratios), "ratios": ratios, "same_final_numbers": same,
            "before_examples_per_sec": [g["before"][norm]["examples_per_sec"] for g in rounds],
            "after_examples_per_sec": [g["after"][norm]["examples_per_sec"] for g in rounds]}
    out = Path(args.out)
    (out / f"ab-{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Before/after: the project's eager loop ({args.name})", "",
             f"`{result['command']}`", "",
             f"before = {result['before_commit']}, after = {result['after_commit']}; {args.rounds} rounds, each "
             f"a fresh `bn-lenet benchmark` process per side (before, then after), {args.epochs} epochs of the full "
             f"training set, epochs 2..{args.epochs} measured, ratios paired epoch by epoch within a round.", "",
             "| norm | after/before (median over rounds) | per round | examples/sec before | examples/sec after "
             "| same final loss and test acc |", "|---|---|---|---|---|---|"]
    for norm, d in result["per_norm"].items():
        fmt = lambda xs: ", ".join(f"{x:,.0f}" for x in xs)  # noqa: E731
        lines.append(f"| {norm} | {d['ratio_median']:.3f} | {', '.join(f'{x:.3f}' for x in d['ratios'])} | "
                     f"{fmt(d['before_examples_per_sec'])} | {fmt(d['after_examples_per_sec'])} | "
                     f"{'yes' if d['same_final_numbers'] else 'NO'} |")
    lines += ["", f"Hardware: {result['cpu']}, {result['threads']} torch threads; Python {result['python']}, torch "
              f"{result['torch']}; started {started}, {result['wall_seconds']:.0f} s in all.", ""]
    (out / f"ab-{args.name}.md").write_text("\n".join(lines))
    print(f"wrote {out / f'ab-{args.name}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
