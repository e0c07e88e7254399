"""A sweep's report, made only from its run directories' small files (config.toml, metrics.jsonl, meta.json,
bn_*.json, grad_norms.jsonl, curve.jsonl, landscape.jsonl), so ``--report-only`` rebuilds it from committed data:

    report.md      the question, the answer (the engine's verdicts in sentences), one line of setup, the rule,
                   the table per point, per-layer tables, figures, how to reproduce it, hardware, versions, time
    summary.csv    one row per point: point, each swept key by its full name, seeds, finished, stuck, diverged,
                   then <metric>_mean, _std, _min, _max of the final epoch's figures of the finished runs
                   (loss, train_acc, test_acc, then every other per-epoch metric the runs record), and
                   examples_per_sec_mean
    contrasts.csv  one row per contrast the report states (analysis.py, rule.py): a, b, metric, statistic, n,
                   paired, mean_a, mean_b, diff, ci_low, ci_high, p, verdict, then p_t, p_holm, margin, swing,
                   seeds_needed, note, ratio (steps to a target: mean_a / mean_b), reached (runs that reached it, a+b)
    curves.png, <metric>_vs_<key>.png, steps_*.png   (figures.py: which figures, and how they are drawn)

Statuses: finished (trained every epoch; averaged), of which stuck (finite loss but test acc at chance,
<= STUCK_ACC), diverged (loss or weights became inf/NaN: no final figure; counted, never averaged), and
interrupted / running / failed / not started (not done yet: rerun the command).
"""

import csv
import math
from datetime import datetime
from pathlib import Path

from ..errors import CorruptFile
from ..training import lock
from ..training.config import has_batch_stats, load as load_config
from ..training.files import read_json, read_metrics, read_steps, write_atomic
from ..training.run_dir import STAMP
from . import figures, sentences
from .analysis import analyse, metric_statistic
from .spec import points_of, toml_literal
from .stats import STEP_FILES, STUCK_ACC, among, by_seed, describe, examples_per_sec, fields, finished, pm

NOT_METRICS = ("epoch", "examples_per_sec", "seconds")
CONTRAST_COLUMNS = ("a", "b", "metric", "statistic", "n", "paired", "mean_a", "mean_b", "diff", "ci_low", "ci_high",
                    "p", "verdict", "p_t", "p_holm", "margin", "swing", "seeds_needed", "note", "ratio", "reached")


def load_run(run: dict) -> dict:
    """A run's small files. A damaged one makes the run "corrupt" (its ``damage`` names the file), a run another
    live process trains "held by another process": neither has figures, so neither is ever averaged."""
    d = Path(run["dir"])
    try:
        if run.get("state") == "corrupt":  # planning found damage the files below may not show (config.toml)
            raise CorruptFile(run["damage"])
        meta = read_json(d / "meta.json") if (d / "meta.json").is_file() else {}
        loaded = {"point": run["point"], "values": run["values"], "seed": run["seed"], "dir": d, "meta": meta,
                  "status": meta.get("status", "not started"), "rows": read_metrics(d),
                  "bn": has_batch_stats(load_config(d / "config.toml")) if (d / "config.toml").is_file() else True}
        loaded.update({key: read_steps(d / file) for key, file in STEP_FILES.items()})
    except CorruptFile as e:
        loaded = {"point": run["point"], "values": run["values"], "seed": run["seed"], "dir": d, "meta": {},
                  "status": "corrupt", "damage": str(e), "rows": [], "bn": True}
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
    origin = {p["id"]: p["from"] for p in points_of(spec)}
    points = []
    for run in runs:
        if not points or points[-1]["id"] != run["point"]:
            points.append({"id": run["point"], "values": run["values"], "runs": [], "from": origin.get(run["point"])})
        points[-1]["runs"].append(run)
    keys = list(dict.fromkeys(k for p in points for k in p["values"]))
    steps = {key: sorted(fields([row for r in runs for row in r.get(key, [])]) - {"step"}) for key in STEP_FILES}
    return {"spec": spec, "out": Path(out), "runs": runs, "points": points, "metrics": metric_names(runs),
            "lead": spec["report"]["lead"], "keys": keys, "steps": steps}


def counts(runs: list) -> dict:
    return {"seeds": len(runs), "finished": len(finished(runs)), "stuck": sum(r["stuck"] for r in runs),
            "diverged": sum(r["status"] == "diverged" for r in runs),
            "corrupt": sum(r["status"] == "corrupt" for r in runs)}  # damaged files (load_run): never averaged


def summary_rows(sweep: dict) -> list:
    rows = []
    for p in sweep["points"]:
        row = {"point": p["id"], **{k: p["values"].get(k, "") for k in sweep["keys"]}, **counts(p["runs"])}
        for metric in sweep["metrics"]:
            d = describe(list(by_seed(p["runs"], metric, "final").values()))
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


def shown_metrics(sweep: dict) -> list:
    """(metric, statistic) per table column: each lead metric as decided, its final value where that differs,
    and the final training loss always."""
    cols = []
    for m in sweep["lead"]:
        name, statistic = metric_statistic(sweep, m)
        own = statistic not in ("final", "run", "last1_mean") and not statistic.startswith(("reach", "landscape"))
        cols += [(name, statistic)] + ([(name, "final")] if own else [])
    if "loss" in sweep["metrics"]:
        cols.append(("loss", "final"))
    known = set(sweep["metrics"]) | set(sweep["steps"]["curve"]) | set(sweep["steps"]["landscape"])
    return [c for c in dict.fromkeys(cols) if c[1] == "run" or among(c[0], known)]


def table(sweep: dict) -> list:
    cols = shown_metrics(sweep)
    lines = ["## Results per point", "",
             "Mean ± std (min..max) over the finished runs; stuck = finished with test acc <= "
             f"{STUCK_ACC} (chance 0.10); diverged = loss or weights became inf/NaN (never averaged). summary.csv "
             "has every final figure.", "",
             "| point | runs | finished | stuck | diverged | " + " | ".join(sentences.metric_label(*c) for c in cols)
             + " | examples/s |", "|---|" + "---|" * (5 + len(cols))]
    for p in sweep["points"]:
        c = counts(p["runs"])
        speeds = [examples_per_sec(r["rows"]) for r in finished(p["runs"])]
        cells = [sentences.point_label(sweep, p["id"]), str(c["seeds"]), str(c["finished"]), str(c["stuck"]),
                 str(c["diverged"]), *(pm(describe(list(by_seed(p["runs"], m, s).values())), 0 if s.startswith("reach") else 3)
                   for m, s in cols),
                 f"{sum(speeds) / len(speeds):,.0f}" if speeds else "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    others = [r for r in sweep["runs"] if r["status"] != "finished"]
    if others:
        lines += [""] + [f"- {r['point']} seed {r['seed']}: **{r['status']}**{_where(r)}" for r in others]
    return lines + [""]


def _where(run: dict) -> str:
    if run["status"] == "corrupt":
        return f": {run['damage']} (left out of every figure)"
    m = run["meta"]
    if "diverged_at_epoch" in m:
        return f" at epoch {m['diverged_at_epoch']} (loss {m.get('diverged_loss')})"
    return f" after {m['epochs_done']} epoch(s)" if "epochs_done" in m else ""


def contrast_cells(row: dict) -> dict:
    cells = {}
    for col in CONTRAST_COLUMNS:
        v = row.get(col)
        if v is None and row.get("note") and col in ("mean_a", "mean_b", "diff", "ci_low", "ci_high", "p"):
            v = row["note"]
        cells[col] = "true" if v is True else "false" if v is False else "" if v is None else v
    return cells


def write_contrasts_csv(rows: list, path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CONTRAST_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(contrast_cells(r) for r in rows)


def setup_line(sweep: dict) -> str:
    """What was trained, from a run's own config.toml; the swept keys are named as swept."""
    run = next((r for r in sweep["runs"] if (r["dir"] / "config.toml").is_file()), None)
    if run is None:
        return "**Setup:** Fashion-MNIST (60,000 train / 10,000 test images); no run has started yet."
    cfg, swept = load_config(run["dir"] / "config.toml"), set(sweep["keys"])
    val = lambda key, text: "swept" if key in swept else text  # noqa: E731
    norm = {"none": "no norm", "scratch": "scratch BN", "torch": "nn.BatchNorm", "layer": "LayerNorm",
            "group": "GroupNorm"}.get(cfg.model.norm, cfg.model.norm)
    where = "" if cfg.model.norm == "none" else (" in the layers swept (model.norm_layers)" if "model.norm_layers" in swept
                                                 else f" in {', '.join(cfg.model.norm_layers) or 'no layer'}")
    where += f", {val('model.placement', cfg.model.placement)} the activation" if where else ""
    stats = ["the moving BN statistics"] + (["precise-BN statistics (re-estimated)"] if cfg.eval.precise_bn else []) \
        + (["each test batch's own statistics"] if cfg.eval.batch_stats else [])
    return (f"**Setup:** Fashion-MNIST (60,000 train / 10,000 test images, 28x28); LeNet, "
            f"{val('model.activation', cfg.model.activation)}, {'norm: swept (model.norm)' if 'model.norm' in swept else norm}"
            f"{where}; SGD without momentum, lr "
            f"{val('train.lr', f'{cfg.train.lr:g}')} ({cfg.train.lr_schedule}), batch "
            f"{val('train.batch_size', cfg.train.batch_size)}, {val('train.epochs', cfg.train.epochs)} epochs; test "
            f"batch {cfg.eval.batch_size}; test accuracy with {', '.join(stats)}; "
            f"{len(sweep['spec']['seeds'])} seeds (train.seed {', '.join(map(str, sweep['spec']['seeds']))}).")


def rule_lines(sweep: dict, result: dict) -> list:
    rows = [r for r in result["contrasts"] if not r.get("note")]
    k = sweep["spec"]["report"]["k"]
    return ["**How these verdicts are made** (README, \"The rule\"): runs with the same seed share initial weights "
            "and batches, so each contrast is paired by seed where both points finished the same seeds (else "
            "unpaired, Welch). The difference is given with its 95% t interval and an exact permutation p. "
            f"**higher** / **lower**: the interval excludes 0 and the contrast survives Holm's correction over this "
            f"report's {len(rows)} contrasts; **equivalent**: the interval lies inside ± the margin (0.01 for "
            "accuracy and loss unless the spec says otherwise); **inconclusive**: neither, which is not \"no "
            f"effect\". Test accuracy is judged on precise-BN statistics where the runs recorded them, else on its "
            f"mean over the last {k} epochs; the training loss on its final value. Every contrast is a row of "
            "contrasts.csv.", ""]


def layer_lines(sweep: dict, item: dict) -> list:
    table = item["table"]
    names = list(dict.fromkeys(n for cols in table.values() for n in cols))
    if not names:
        return []
    title = item.get("label") or f"Per layer: {item['file']}" + (f", epoch {item['epoch']}" if item.get("epoch") else "")
    lines = [f"## {title}", "", "Mean ± std over the finished seeds" + (
        " (gamma and beta: mean over each layer's channels)." if item["file"] == "bn_params.json" else "."), "",
             "| point | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for pid, cols in table.items():
        if not cols:
            continue  # e.g. the network without BN in a table of BN parameters
        cells = [f"{cols[n]['mean']:.3g} ± {cols[n]['std']:.2g}" if cols.get(n, {}).get("n") else "n/a" for n in names]
        lines.append(f"| {sentences.point_label(sweep, pid)} | " + " | ".join(cells) + " |")
    return lines + [""]


def stamp_span(metas: list):
    """The first start and the last end among the runs' own time stamps (datetimes), or None. For a sweep whose
    invocations were not recorded this bounds its wall time from above (it may include pauses between them)."""
    stamp = lambda text: datetime.strptime(text, STAMP)  # noqa: E731
    started = [stamp(m["started"]) for m in metas if m.get("started")]
    ended = [stamp(m["ended"]) for m in metas if m.get("ended")]
    return (min(started), max(ended)) if started and ended else None


def unrecorded_wall(metas: list) -> str:
    span = stamp_span(metas)
    if span is None:
        return "the invocations that trained them were not recorded, and their wall time is unknown"
    first, last = span
    return (f"the invocations that trained them were not recorded; the runs' own time stamps span "
            f"{(last - first).total_seconds() / 60:.1f} min ({first:{STAMP}} to {last:{STAMP}}), an upper bound on "
            f"the wall time")


def provenance_lines(sweep: dict, provenance: dict) -> list:
    metas = [r["meta"] for r in sweep["runs"] if r["meta"]]
    values = lambda key: ", ".join(sorted({str(m.get(key)) for m in metas})) or "unknown"  # noqa: E731
    calls = provenance.get("invocations", [])
    run_seconds = sum(row["seconds"] for r in sweep["runs"] for row in r["rows"])
    wall = sum(c.get("wall_seconds", 0) for c in calls)
    lines = ["## Provenance", "",
             f"- compute: {run_seconds / 60:.1f} min in epochs (training, evaluation, precise BN) summed over the "
             f"runs; " + (f"{wall / 60:.1f} min of wall time over {len(calls)} invocation(s) that trained" if calls
                          else unrecorded_wall(metas))]
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


def analysed(spec: dict, out, planned: list) -> tuple:
    """The sweep as loaded and the engine's result; a bad [report] raises here, before any file is rewritten."""
    sweep = load_sweep(spec, out, planned)
    return sweep, analyse(sweep)


def write_report(spec: dict, out, planned: list, provenance: dict, done=None) -> Path:
    sweep, result = done or analysed(spec, out, planned)
    title = spec["title"].replace("{seeds}", str(len(spec["seeds"]))) if spec["title"] else f"Sweep {spec['name']}"
    question = spec["question"].strip() or (f"How do {', '.join(sweep['lead'])} depend on "
                                            f"{', '.join(sweep['keys']) or 'the seed'}?")
    lines = [f"# {title}", "", question, ""] + sentences.answer_lines(sweep, result)
    lines += [setup_line(sweep), ""] + rule_lines(sweep, result) + table(sweep)
    for item in (i for i in result["items"] if i["kind"] == "layers"):
        lines += layer_lines(sweep, item)
    if spec["report"].get("published"):
        from .published_section import lines as published_lines
        lines += published_lines(sweep)
    write_summary_csv(sweep, sweep["out"] / "summary.csv")
    write_contrasts_csv(result["contrasts"], sweep["out"] / "contrasts.csv")
    made = figures.draw(sweep)
    for stale in set(sweep["out"].glob("*.png")) - {sweep["out"] / name for name, _ in made}:
        stale.unlink()  # a figure an earlier report drew and this one does not: it would contradict the report
    if made:
        lines += ["## Figures", ""]
        for name, caption in made:
            lines += [f"![{name}]({name})", "", caption, ""]
    lines += ["## Reproduce", "", f"    {provenance.get('reproduce') or spec_command(spec)}", "",
              "Rerunning it trains nothing when every run is done and resumes any that is not; adding `--report-only` "
              "rebuilds this report from the run directories' small files.", ""]
    lines += provenance_lines(sweep, provenance)
    path = sweep["out"] / "report.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def spec_command(spec: dict) -> str:
    return f"bn-lenet sweep {spec['spec_file'] or spec['config']}"
