"""The benchmark's report: a table on stdout, and the same as JSON and Markdown with its provenance."""

import json
import os
from pathlib import Path

import torch


def device_kind(device: torch.device) -> str:
    """File name for the results: "cpu", or the GPU's model ("h100", "a100", ...)."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    return next((k for k in ("h100", "h200", "a100", "l4", "v100", "t4") if k in name), "cuda")


COLUMNS = [  # (header, width, format of the value in each variant)
    ("loop", 20, "{loop}"), ("norm", 7, "{norm}"), ("epochs", 6, "{epochs}"), ("threads", 7, "{threads}"),
    ("examples/sec", 12, "{examples_per_sec:,.0f}"), ("whole run", 10, "{examples_per_sec_whole_run:,.0f}"),
    ("e2e s", 7, "{end_to_end_seconds:.1f}"), ("setup s", 7, "{setup_seconds:.1f}"),
    ("loss", 6, "{loss:.3f}"), ("train", 6, "{train_acc:.3f}"),
    ("test", 6, "{test_acc:.3f}"),
]


def table(report) -> str:
    lines = [" ".join(f"{h:{'<' if i < 2 else '>'}{w}}" for i, (h, w, _) in enumerate(COLUMNS))]
    for v in report["variants"]:
        lines.append(" ".join(f"{f.format(**v):{'<' if i < 2 else '>'}{w}}" for i, (_, w, f) in enumerate(COLUMNS)))
    lines.append("ratios: " + (", ".join(f"{k} {x:.2f}x" for k, x in report["ratios"].items()) or "none"))
    if "reproduction" in report:
        r = report["reproduction"]
        lines.append(f"full reproduction (`{r['command']}`): {r['wall_seconds']:.1f} s wall, "
                     f"peak RSS {r['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def fmt_load(load) -> str:
    return "/".join(f"{x:.1f}" for x in load)


def markdown(report) -> str:
    env, m = report["environment"], report["memory"]
    what = (f"{report['epochs']} epoch(s) per project run, as the 'epochs' column says for the tutorial's" + (f", {report['limit_batches']} batches per epoch (QUICK MODE: "
            "not full epochs; e2e seconds are for exactly this, nothing extrapolated)" if report["limit_batches"]
            else ", full epochs (60,000 examples each)"))
    lines = [f"# Benchmark: the tutorial's loop vs the project's ({env['device_name']})", "", what + ".", "",
             "examples/sec: tutorial's definition (training steps only), median over epochs 2..N (epoch 1 is the "
             "warm-up); 'whole run': all examples over all step time (the figure the tutorial prints; includes "
             f"epoch 1 and any compile). e2e: process start-up ({report['startup_seconds']:.1f} s, measured once) "
             "+ setup + every epoch (steps and evaluation), for the epochs the row ran. Runs advance one epoch at "
             "a time in turn, in one "
             "process. 'project+compile': train.compile=true, compile time in its first epoch and e2e, "
             + ("compiled cold (fresh inductor cache, as a first run)." if report["cold_compile"]
                else "with the usual inductor cache (warm if compiled before).")
             + (" 'project+graph': train.cuda_graph=true, the whole step replayed from a CUDA graph; its warm-up "
                "and capture (once per epoch here: the benchmark calls fit() per epoch) count in the epoch's "
                "seconds and e2e, not in examples/sec."
                if any("graph" in v["loop"] for v in report["variants"]) else ""),
             f"Project settings: {', '.join(report['overrides']) or 'the configs as shipped'}.", "",
             "| " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for v in report["variants"]:
        lines.append("| " + " | ".join(f.format(**v) for _, _, f in COLUMNS) + " |")
    lines += ["", "Ratios (paired by round: the median, over the epochs 2.. both runs measured, of their "
              "examples/sec ratio in that round): "
              + ", ".join(f"{k} **{x:.2f}x**" for k, x in report["ratios"].items()), "",
              f"Memory: {m['benchmark_process_peak_rss_mb']:.0f} MB, {m['method']}."]
    if "reproduction" in report:
        r = report["reproduction"]
        lines.append(f"Full reproduction, `{r['command']}` in a fresh process: **{r['wall_seconds']:.1f} s** wall "
                     f"(start-up, data, both variants, evaluation, run files, plots), peak RSS "
                     f"{r['peak_rss_mb']:.0f} MB (sum of its {r['processes']} processes' peaks). Its results: "
                     + "; ".join(f"{name} loss {m['loss']:.3f}, train acc {m['train_acc']:.3f}, test acc "
                                 f"{m['test_acc']:.3f}" for name, m in r["results"].items()) + ".")
    for name, ops in report.get("profiles", {}).items():
        kind = "CPU" if report.get("profile_time", "self_cpu_time_total") == "self_cpu_time_total" else "GPU"
        lines += ["", f"Profile, {name} (torch.profiler, {kind} self time per training step):", "",
                  "| op | ms/step | % |", "|---|---|---|"]
        lines += [f"| {o['op'][:70]} | {o['self_ms_per_step']:.2f} | {o['percent']:.0f} |" for o in ops]
    lines += ["", "## Provenance", "", f"- command: `{report['command']}`",
              f"- device: {env['device']} ({env['device_name']}); CPU {env['cpu']}; torch threads "
              f"{env['threads']}, CPU count {os.cpu_count()}",
              f"- versions: Python {env['python']}, torch {env['torch']}, torchvision {env['torchvision']}",
              f"- git commit: {env['git_commit']}; started {report['started']}; benchmark wall "
              f"{report['wall_seconds']:.0f} s",
              "- machine load (1/5/15-minute load averages; above the core count, other processes competed): "
              f"before {fmt_load(report['load_average']['before'])}, after {fmt_load(report['load_average']['after'])}",
              ""]
    return "\n".join(lines)


def write(report, out: Path, stem: str) -> list:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    paths[0].write_text(json.dumps(report, indent=1) + "\n")
    paths[1].write_text(markdown(report))
    return paths
