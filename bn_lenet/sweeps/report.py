"""A sweep's report, made only from its run directories' small files (config.toml, metrics.jsonl, meta.json,
bn_*.json), so ``--report-only`` rebuilds it from committed data:

    summary.csv   one row per point: point, each swept key by its full name, seeds, finished, stuck, diverged,
                  then <metric>_mean, _std, _min, _max of the final epoch's figures of the finished runs
                  (loss, train_acc, test_acc, then every other per-epoch metric the runs record), and
                  examples_per_sec_mean
    report.md     the question, the answer (bn_lenet/sweeps/answers.py), the table, the figures, how to
                  reproduce it, hardware, versions, compute time
    curves.png    per-epoch curves per point (mean over seeds, min..max band)
    <metric>_vs_<key>.png   the lead metrics against each numeric swept key, spread over seeds

Statuses: finished (trained every epoch; averaged), of which stuck (finite loss but test acc at chance,
<= STUCK_ACC), diverged (loss or weights became inf/NaN: no final figure; counted, never averaged), and
interrupted / running / failed / not started (not done yet: rerun the command).
"""

import csv
import math
from pathlib import Path

from ..errors import CorruptFile
from ..training import lock, plots
from ..training.files import read_json, read_metrics
from .stats import STUCK_ACC, describe, examples_per_sec, final_values, finished, pm
from .answers import ANSWERS
from .spec import toml_literal

NOT_METRICS = ("epoch", "examples_per_sec", "seconds")


def load_run(run: dict) -> dict:
    """A run's small files. A damaged one makes the run "corrupt" (its ``damage`` names the file), a run another
    live process trains "held by another process": neither has figures, so neither is ever averaged."""
    d = Path(run["dir"])
    try:
        if run.get("state") == "corrupt":  # planning found damage the files below may not show (config.toml)
            raise CorruptFile(run["damage"])
        meta = read_json(d / "meta.json") if (d / "meta.json").is_file() else {}
        optional = lambda name, empty: read_json(d / name) if (d / name).is_file() else empty  # noqa: E731
        loaded = {"point": run["point"], "values": run["values"], "seed": run["seed"], "dir": d, "meta": meta,
                  "status": meta.get("status", "not started"), "rows": read_metrics(d),
                  "bn_history": optional("bn_history.json", []), "bn_params": optional("bn_params.json", {})}
    except CorruptFile as e:
        loaded = {"point": run["point"], "values": run["values"], "seed": run["seed"], "dir": d, "meta": {},
                  "status": "corrupt", "damage": str(e), "rows": [], "bn_history": [], "bn_params": {}}
    if loaded["status"] not in ("finished", "diverged", "corrupt") and lock.holder(d):
        loaded["status"] = "held by another process"
    loaded["stuck"] = is_stuck(loaded)
    return loaded


def is_stuck(run: dict) -> bool:
    """Finished with a finite loss, yet no better than chance on the test set."""
    if run["status"] != "finished" or not run["rows"]:
        return False
    last = run["rows"][-1]
    return math.isfinite(last["loss"]) and last["test_acc"] <= STUCK_ACC


def metric_names(runs: list) -> list:
    """loss, train_acc, test_acc, then every other numeric per-epoch metric, in the order first seen."""
    names = ["loss", "train_acc", "test_acc"]
    for run in runs:
        for row in run["rows"]:
            names += [k for k, v in row.items() if k not in names and k not in NOT_METRICS
                      and isinstance(v, (int, float)) and not isinstance(v, bool)]
    return names


def load_sweep(spec: dict, out, planned: list) -> dict:
    """What the report and the answers read: {"spec", "out", "runs", "points", "metrics", "lead", "keys"}."""
    runs = [load_run(r) for r in planned]
    points = []
    for run in runs:
        if not points or points[-1]["id"] != run["point"]:
            points.append({"id": run["point"], "values": run["values"], "runs": []})
        points[-1]["runs"].append(run)
    keys = list(dict.fromkeys(k for p in points for k in p["values"]))
    return {"spec": spec, "out": Path(out), "runs": runs, "points": points, "metrics": metric_names(runs),
            "lead": spec["report"]["lead"], "keys": keys}


def counts(runs: list) -> dict:
    return {"seeds": len(runs), "finished": len(finished(runs)), "stuck": sum(r["stuck"] for r in runs),
            "diverged": sum(r["status"] == "diverged" for r in runs),
            "corrupt": sum(r["status"] == "corrupt" for r in runs)}  # damaged files (load_run): never averaged


def summary_rows(sweep: dict) -> list:
    rows = []
    for p in sweep["points"]:
        row = {"point": p["id"], **{k: p["values"].get(k, "") for k in sweep["keys"]}, **counts(p["runs"])}
        for metric in sweep["metrics"]:
            d = describe(final_values(p["runs"], metric))
            row.update({f"{metric}_{s}": d.get(s, "") for s in ("mean", "std", "min", "max")})
        speeds = [examples_per_sec(r["rows"]) for r in finished(p["runs"])]
        row["examples_per_sec_mean"] = sum(speeds) / len(speeds) if speeds else ""
        rows.append(row)
    return rows


def write_summary_csv(sweep: dict, path: Path) -> list:
    rows = summary_rows(sweep)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: (toml_literal(v) if isinstance(v, (bool, list)) else v) for k, v in row.items()}
                         for row in rows)
    return rows


def table(sweep: dict) -> list:
    shown = list(dict.fromkeys([*sweep["lead"], *sweep["metrics"]]))
    shown = [m for m in shown if m in sweep["metrics"]]
    lines = ["## Results per point", "",
             "Final epoch, mean ± std (min..max) over the finished runs; stuck = finished with test acc <= "
             f"{STUCK_ACC} (chance 0.10); diverged = loss or weights became inf/NaN (no final figure, never averaged). "
             "Every figure is also in summary.csv.", "",
             "| " + " | ".join([*sweep["keys"], "runs", "finished", "stuck", "diverged", *shown, "examples/sec"]) + " |",
             "|" + "---|" * (len(sweep["keys"]) + 5 + len(shown))]
    for p in sweep["points"]:
        c = counts(p["runs"])
        speeds = [examples_per_sec(r["rows"]) for r in finished(p["runs"])]
        cells = [*(str(p["values"].get(k, "")) for k in sweep["keys"]), str(c["seeds"]), str(c["finished"]),
                 str(c["stuck"]), str(c["diverged"]),
                 *(pm(describe(final_values(p["runs"], m))) for m in shown),
                 f"{sum(speeds) / len(speeds):,.0f}" if speeds else "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    others = [r for r in sweep["runs"] if r["status"] != "finished"]
    if others:
        lines += [""] + [f"- {r['point']} seed {r['seed']}: **{r['status']}**{_where(r)}" for r in others]
    return lines + [""]


def _where(run: dict) -> str:
    m = run["meta"]
    if "diverged_at_epoch" in m:
        return f" at epoch {m['diverged_at_epoch']} (loss {m.get('diverged_loss')})"
    return f" after {m['epochs_done']} epoch(s)" if "epochs_done" in m else ""


def figures(sweep: dict) -> list:
    """Draw the figures; returns [(file name, caption)]."""
    out, made = sweep["out"], []
    curves = {p["id"]: [r["rows"] for r in finished(p["runs"])] for p in sweep["points"] if finished(p["runs"])}
    if curves:
        only_norm = all(list(p["values"]) == ["model.norm"] for p in sweep["points"])
        labels = {p["id"]: p["values"]["model.norm"] if only_norm else p["id"] for p in sweep["points"]}
        names = dict(plots.CURVE_KEYS)
        plots.band_curves({labels[k]: v for k, v in curves.items()}, out / "curves.png",
                          title=f"{sweep['spec']['name']}: per-epoch figures, mean over seeds",
                          keys=[(m, names.get(m, m)) for m in sweep["metrics"]])
        made.append(("curves.png", "Per-epoch figures per point: mean over the finished seeds, band min..max."))
    for key in sweep["keys"]:
        values = [p["values"][key] for p in sweep["points"] if key in p["values"]]
        # only a numeric key gets an x axis (a list-valued key, e.g. model.norm_layers, is not hashable either)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) or len(set(values)) < 2:
            continue
        log_x = min(values) > 0 and max(values) / min(values) >= 100
        leaf = key.rpartition(".")[2]
        for metric in [m for m in sweep["lead"] if m in sweep["metrics"]]:
            series = {}
            for p in sweep["points"]:
                if key in p["values"]:
                    label = ",".join(f"{k.rpartition('.')[2]}={v}" for k, v in p["values"].items() if k != key) or "all"
                    series.setdefault(label, []).append((p["values"][key], final_values(p["runs"], metric),
                                                         counts(p["runs"])["diverged"]))
            name = f"{metric}_vs_{leaf}.png"
            plots.metric_against(series, out / name, key, f"final {metric}", log_x,
                                 title=f"{metric} against {key}: mean ± std over seeds, dots: seeds, x: diverged")
            made.append((name, f"Final {metric} against {key}{' (log axis)' if log_x else ''}: mean ± std over the "
                               f"finished seeds, one dot per seed, a red x per diverged run."))
    return made


def provenance_lines(sweep: dict, provenance: dict) -> list:
    metas = [r["meta"] for r in sweep["runs"] if r["meta"]]
    values = lambda key: ", ".join(sorted({str(m.get(key)) for m in metas})) or "unknown"  # noqa: E731
    calls = provenance.get("invocations", [])
    run_seconds = sum(row["seconds"] for r in sweep["runs"] for row in r["rows"])
    wall = sum(c.get("wall_seconds", 0) for c in calls)
    lines = ["## Provenance", "",
             f"- compute: {run_seconds / 60:.1f} min in epochs (training, evaluation, precise BN) summed over the "
             f"runs; {wall / 60:.1f} min of wall time over {len(calls)} invocation(s) that trained"]
    for c in calls:
        setup = f"{c['executor']} executor, {c['jobs']} job(s) x {c['threads_per_run']} thread(s)" \
            if "executor" in c else c.get("how", "")
        lines.append(f"  - `{c.get('command', '?')}` at git commit {c.get('git_commit', '?')}: {c.get('trained', '?')} "
                     f"run(s), {c.get('wall_seconds', float('nan')) / 60:.1f} min ({c.get('started', '?')} to "
                     f"{c.get('ended', '?')}){'; ' + setup if setup else ''}{'; stopped' if c.get('stopped') else ''}")
    lines += adopted_lines(sweep)
    lines += [f"- runs' own git commits: {values('git_commit')}",
              f"- hardware: {values('device_name')} (device {values('device')}, torch threads per run "
              f"{values('threads')}); CPU {values('cpu')}",
              f"- versions: Python {values('python')}, torch {values('torch')}, torchvision {values('torchvision')}",
              f"- platform: {values('platform')}",
              "- per-run files (config, metrics per epoch, gamma/beta per epoch, meta): runs/<point>/seed-<s>/"]
    if provenance.get("report_command"):
        lines.append(f"- this report regenerated from those files by `{provenance['report_command']}` at git "
                     f"commit {provenance['report_commit']}")
    return lines + [""]


def adopted_lines(sweep: dict) -> list:
    """Runs another command trained (e.g. another sweep with the same point) and this sweep adopted, config
    checked (executor.run_state): which command, how many."""
    spec_file = sweep["spec"].get("spec_file") or ""
    others = {}
    for r in sweep["runs"]:
        command = (r["meta"] or {}).get("command", "")
        if spec_file and command and "sweep " in command and Path(spec_file).name not in command:
            others.setdefault("bn-lenet " + command[command.index("sweep "):], []).append(r)
    return [f"- {len(runs)} of {len(sweep['runs'])} runs were trained by `{command}` and adopted here (the same "
            f"config, checked when adopted); their time is in the compute above, not in the invocations listed"
            for command, runs in others.items()]


def write_report(spec: dict, out, planned: list, provenance: dict) -> Path:
    sweep = load_sweep(spec, out, planned)
    write_summary_csv(sweep, sweep["out"] / "summary.csv")
    title = spec["title"].replace("{seeds}", str(len(spec["seeds"]))) if spec["title"] else f"Sweep {spec['name']}"
    lines = [f"# {title}", ""]
    question = spec["question"].strip() or (f"How do the final {', '.join(spec['report']['lead'])} depend on "
                                            f"{', '.join(sweep['keys']) or 'the seed'}?")
    lines += [question, ""]
    lines += ANSWERS[spec["report"]["answer"]](sweep)
    lines += table(sweep)
    made = [(name, caption) for name, caption in figures(sweep)]
    text = "\n".join(lines)
    unshown = [(n, c) for n, c in made if f"]({n})" not in text]  # an answer may already show a figure
    if unshown:
        lines += ["## Figures", ""]
        for name, caption in unshown:
            lines += [f"![{name}]({name})", "", caption, ""]
    lines += ["## Reproduce", "", f"    {provenance.get('reproduce') or spec_command(spec)}", "",
              "Rerunning it trains nothing when every run is done and resumes any that is not; adding `--report-only` "
              "rebuilds this report from the run directories' small files.", ""]
    lines += provenance_lines(sweep, provenance)
    path = sweep["out"] / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def spec_command(spec: dict) -> str:
    return f"bn-lenet sweep {spec['spec_file'] or spec['config']}"
