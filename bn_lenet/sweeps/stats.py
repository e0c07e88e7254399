"""Per-run figures and their description over seeds.

A run is a dict with at least ``status`` and ``rows`` (its metrics per epoch), as report.load_sweep loads it.
From each per-epoch metric a run gives several statistics:

    final        the last epoch's value
    lastK_mean   the mean over the last K epochs (K = the report's k, default 3): steadier than ``final``
    lastK_swing  the std over the same last K epochs: how much the metric moves within the run at its end
    precise      the last value of METRIC_precise (test accuracy with BN statistics re-estimated, eval.precise_bn);
                 for a network without batch statistics (no BN, LayerNorm, GroupNorm) the last value of METRIC
                 itself: it has no statistics to re-estimate, its test accuracy is already exact
    run          examples_per_sec over the whole run (all examples over all step time)
    epochN       the value after epoch N (how fast a point gets somewhere; not a steady figure)
    reachT       the training steps until METRIC first reaches T (>= T; <= T for a loss), read from the run's
                 curve.jsonl (log.eval_every): time to a target. A run that never reaches it has no figure, and
                 the report says how many did. For a network without batch statistics, test_acc_batch_stats
                 reads as its own test_acc (as ``precise`` does)
    landscape_mean  the mean of METRIC over the run's landscape.jsonl measurements (log.landscape)

A metric is a name in the rows (test_acc), KEY.LAYER for a per-layer figure (ics_l2.fc1), or A-B for the
difference of two (train_acc-test_acc: the generalization gap; loss_max-loss_min: the loss variation).

``steady`` picks the statistic a verdict uses for a metric: the training loss as it ends (an average over
the last epoch's batches already), test accuracy with precise-BN statistics where the runs recorded them,
else the last-K mean. The last epoch's test accuracy with the moving statistics swings by up to 0.14 between
epochs at lr 1.0: it is shown in the tables, never the only basis of a verdict.
"""

import math
import re
import statistics

STUCK_ACC = 0.15  # 10 classes: chance is 0.10; a finished run at or below this test accuracy is "stuck"
STATISTICS = ("final", "precise", "run", "landscape_mean")  # and lastK_mean, lastK_swing, epochN, reachT
STEP_FILES = {"curve": "curve.jsonl", "landscape": "landscape.jsonl"}  # per-step rows a run may record


def finished(runs: list) -> list:
    """The runs that trained every epoch; diverged, corrupt or unfinished ones are reported, never averaged."""
    return [r for r in runs if r["status"] == "finished"]


def examples_per_sec(rows: list) -> float:
    """The tutorial's figure: all examples over all step time (epochs weighted equally, as each has n examples)."""
    return len(rows) / sum(1 / r["examples_per_sec"] for r in rows)


def is_statistic(name: str) -> bool:
    return name in STATISTICS or re.fullmatch(
        r"last[1-9][0-9]*_(mean|swing)|epoch[1-9][0-9]*|reach[0-9]*\.?[0-9]+", name) is not None


def field(row: dict, name: str):
    """A row's figure NAME: a key, KEY.LAYER inside a per-layer table, or A-B; None where the row lacks it."""
    if "-" in name:
        a, b = (field(row, part) for part in name.split("-", 1))
        return None if a is None or b is None else a - b
    key, _, layer = name.partition(".")
    v = row.get(key)
    v = v.get(layer) if layer and isinstance(v, dict) else v
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def among(metric: str, names) -> bool:
    """Whether every part of METRIC (both sides of an A-B) is one of ``names``."""
    return all(part in names for part in metric.split("-"))


def fields(rows: list) -> set:
    """The names field() can read from these rows (each per-layer table's entries as KEY.LAYER)."""
    out = set()
    for row in rows:
        for k, v in row.items():
            out |= {f"{k}.{layer}" for layer in v} if isinstance(v, dict) else {k}
    return out


def curve_name(run: dict, metric: str) -> str:
    """The curve.jsonl figure a run gives for METRIC: test_acc_batch_stats reads as the test_acc of a network
    without batch statistics (its test accuracy is already exact, as for ``precise``)."""
    if not run.get("bn", True) and metric.endswith("_batch_stats"):
        return metric.removesuffix("_batch_stats")
    return metric


def reach(run: dict, metric: str, target: float):
    """The step of the run's first curve.jsonl row where the metric reaches the target, else None."""
    rows = run.get("curve", [])
    metric = curve_name(run, metric)
    for row in rows:
        v = field(row, metric)
        if v is not None and (v <= target if "loss" in metric else v >= target):
            return row["step"]
    return None


def steady(metric: str, recorded: set, k: int) -> str:
    """The statistic a verdict on ``metric`` uses (see the module's docstring)."""
    if metric == "examples_per_sec":
        return "run"
    if "loss" in metric or metric.endswith("_precise"):
        return "final"
    if f"{metric}_precise" in recorded:
        return "precise"
    return f"last{k}_mean"


def series(run: dict, metric: str, statistic: str) -> list:
    """The per-epoch values a statistic is taken from (METRIC_precise for ``precise`` where the run has BN)."""
    name = f"{metric}_precise" if statistic == "precise" and run.get("bn", True) else metric
    rows = run.get("landscape", []) if statistic == "landscape_mean" else run["rows"]
    return [v for v in (field(row, name) for row in rows) if v is not None]


def value(run: dict, metric: str, statistic: str):
    """One run's figure, or None when the run did not record it."""
    if statistic == "run":
        return examples_per_sec(run["rows"]) if run["rows"] else None
    if statistic.startswith("epoch"):
        return next((field(row, metric) for row in run["rows"] if row.get("epoch") == int(statistic[5:])), None)
    if statistic.startswith("reach"):
        return reach(run, metric, float(statistic[5:]))
    values = series(run, metric, statistic)
    if not values:
        return None
    if statistic in ("final", "precise"):
        return values[-1]
    if statistic == "landscape_mean":
        return statistics.fmean(values)
    k = int(statistic[4:statistic.index("_")])
    if statistic.endswith("_mean"):
        return statistics.fmean(values[-k:])
    return statistics.stdev(values[-k:]) if len(values[-k:]) > 1 else 0.0


def by_seed(runs: list, metric: str, statistic: str) -> dict:
    """{seed: figure} over the finished runs that recorded it."""
    out = {r["seed"]: value(r, metric, statistic) for r in finished(runs)}
    return {s: v for s, v in out.items() if v is not None and math.isfinite(v)}


def swing(runs: list, metric: str, statistic: str, k: int):
    """Mean over the finished runs of the within-run std of the statistic's series over the last k epochs."""
    if statistic in ("run", "landscape_mean") or statistic.startswith(("epoch", "reach")):
        return None
    values = []
    for r in finished(runs):
        s = series(r, metric, statistic)[-k:]
        if len(s) > 1:
            values.append(statistics.stdev(s))
    return statistics.fmean(values) if values else None


def describe(values: list) -> dict:
    """n, mean, sample std (n - 1; 0 for one value), min, max."""
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"n": len(values), "mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values)}


def pm(d: dict, digits: int = 3) -> str:
    """A ``describe`` result as the reports write it: mean ± std (min..max)."""
    if not d.get("n"):
        return "n/a"
    f = f".{digits}f"
    return f"{d['mean']:{f}} ± {d['std']:{f}} ({d['min']:{f}}..{d['max']:{f}})"
