"""Reproduce the d2l "Batch Normalization" tutorial: its two runs (scratch BN, nn.BatchNorm), 10 epochs each.

Writes results/reproduce/: summary.md (our figures next to the published ones, hardware, versions, wall
time, the command), and per variant the metrics, gamma/beta, curves.png and bn_params.png.
The full run directories (with checkpoints) stay under results/runs/ (not committed).

    python experiments/reproduce.py [--set section.key=value ...] [--out results/reproduce]
"""

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bn_lenet import config, data as data_mod, runs  # noqa: E402
from bn_lenet.cli import run_main  # noqa: E402

VARIANTS = {"scratch_bn": "configs/scratch_bn.toml", "torch_bn": "configs/torch_bn.toml"}
# REFERENCE.md: the tutorial's published runs (V100). Quoted, never measured here.
PUBLISHED = [
    ("scratch_bn", "d2l-zh v2.0.0 (V100)", 0.273, 0.899, 0.807, 32293.9),
    ("torch_bn", "d2l-zh v2.0.0 (V100)", 0.267, 0.902, 0.708, 50597.3),
    ("scratch_bn", "d2l-en 0.17.5 (V100)", 0.269, 0.900, 0.838, 34608.7),
    ("torch_bn", "d2l-en 0.17.5 (V100)", 0.278, 0.897, 0.836, 63564.3),
]
KEEP = ("config.toml", "metrics.jsonl", "metrics.csv", "bn_params.json", "bn_history.json", "meta.json",
        "curves.png", "bn_params.png")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--out", default=str(ROOT / "results" / "reproduce"))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    started = time.perf_counter()
    cfgs = {name: config.resolve(ROOT / path, args.overrides) for name, path in VARIANTS.items()}
    data = data_mod.load_dataset(cfgs["scratch_bn"].data.root or None)  # read once, shared by both runs
    metas = {}
    for name, cfg in cfgs.items():
        print(f"== {name} ({VARIANTS[name]})", flush=True)
        metas[name] = runs.train_run(cfg, name=f"reproduce-{name}", data=data,
                                     progress=not args.quiet and sys.stderr.isatty())
        if metas[name]["status"] != "finished":
            print(f"error: {name} did not finish ({metas[name]['status']}); see {metas[name]['run_dir']}")
            return 1
        for line in runs.summary_lines(metas[name]["run_dir"]):
            print("  " + line)
    wall = time.perf_counter() - started

    out.mkdir(parents=True, exist_ok=True)
    for name, meta in metas.items():
        (out / name).mkdir(exist_ok=True)
        for f in KEEP:
            shutil.copy(Path(meta["run_dir"]) / f, out / name / f)
    (out / "summary.md").write_text(summary(cfgs, metas, wall, argv if argv is not None else sys.argv[1:]))
    print(f"wrote {out / 'summary.md'} (whole reproduction: {wall:.0f} s wall)")
    return 0


def summary(cfgs, metas, wall, argv) -> str:
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
    lines += ["", "Published figures are quoted from the tutorial's builds (../shared/REFERENCE.md), not measured "
              "here. Final test accuracy at lr 1.0 is very noisy from run to run (published builds range "
              "0.59-0.89); see results/compare/ for the distribution over seeds.", "",
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
              f"- hardware: {env['device_name']} ({env['device']}, {env['threads']} threads); CPU {env['cpu']}",
              f"- versions: Python {env['python']}, torch {env['torch']}, torchvision {env['torchvision']}",
              f"- platform: {env['platform']}", f"- git commit: {env['git_commit']}",
              f"- data: {env['data']}", f"- started: {env['started']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_main(main))
