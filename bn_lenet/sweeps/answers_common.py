"""What the studies' answers share: finding a point, final and per-epoch figures over seeds, and one verdict on
a difference that says whether it is beyond seed noise.

A ``sweep`` is report.load_sweep's dict; a point is one of its ``points`` ({"id", "values", "runs"}).
Only finished runs are averaged; a diverged run (loss or weights inf/NaN) and a stuck one (finished at chance)
are counted apart, because "it blew up" and "it never learned" are different answers.
"""

import math
import statistics

from .stats import describe, finished

STUCK_ACC = 0.15  # the sweep report's threshold (report.STUCK_ACC); chance is 0.10


def find(sweep: dict, values: dict) -> dict | None:
    """The point with exactly these swept values ({"model.norm": "scratch", "model.bias": False}), or None."""
    return next((p for p in sweep["points"] if p["values"] == values), None)


def finals(point: dict | None, metric: str = "test_acc") -> list:
    """The final epoch's figure of each finished run of the point."""
    if point is None:
        return []
    return [r["rows"][-1][metric] for r in finished(point["runs"]) if metric in r["rows"][-1]]


def at_epoch(point: dict | None, epoch: int, metric: str = "test_acc") -> list:
    """The figure after ``epoch`` (1-based) of each finished run that recorded it."""
    if point is None:
        return []
    return [row[metric] for r in finished(point["runs"]) for row in r["rows"]
            if row.get("epoch") == epoch and metric in row]


def by_seed(point: dict | None, epoch: int | None = None, metric: str = "test_acc") -> dict:
    """{seed: figure} of the finished runs, at the final epoch or after ``epoch``."""
    out = {}
    for r in finished(point["runs"]) if point else []:
        rows = r["rows"] if epoch is None else [row for row in r["rows"] if row.get("epoch") == epoch]
        if rows and metric in rows[-1]:
            out[r["seed"]] = rows[-1][metric]
    return out


def ms(values: list, digits: int = 3) -> str:
    """'0.885 ± 0.004 (n=3)': mean ± sample std over seeds and how many."""
    d = describe(values)
    if not d["n"]:
        return "n/a (no finished run)"
    return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f} (n={d['n']})"


def mean(values: list) -> float:
    return statistics.fmean(values) if values else math.nan


def status_note(point: dict | None) -> str:
    """' (1 of 3 runs diverged, 1 stuck at chance)' or '' when every run finished and learned."""
    if point is None:
        return " (point not in this sweep)"
    runs = point["runs"]
    parts = []
    diverged = sum(r["status"] == "diverged" for r in runs)
    stuck = sum(r.get("stuck", False) for r in runs)
    undone = sum(r["status"] not in ("finished", "diverged") for r in runs)
    if diverged:
        parts.append(f"{diverged} of {len(runs)} runs diverged (loss or weights inf/NaN)")
    if stuck:
        parts.append(f"{stuck} of {len(runs)} stuck at chance (finite loss, test acc <= {STUCK_ACC})")
    if undone:
        parts.append(f"{undone} of {len(runs)} not done yet")
    return f" ({'; '.join(parts)})" if parts else ""


def verdict(a: list, b: list) -> str:
    """Whether mean(a) - mean(b) is beyond the spread over seeds: every seed of one side beats every seed of
    the other (disjoint ranges). With 3 seeds a side no test can do better (the exact permutation p-value is
    at least 0.1), so this is the honest bar."""
    if len(a) < 2 or len(b) < 2:
        return "too few finished seeds to tell"
    if min(a) > max(b) or min(b) > max(a):
        return "beyond seed noise (the seeds' ranges do not overlap)"
    return "within seed noise (the seeds' ranges overlap)"


def beyond_noise(a: list, b: list) -> bool:
    return len(a) >= 2 and len(b) >= 2 and (min(a) > max(b) or min(b) > max(a))


def diff_line(name_a: str, a: list, name_b: str, b: list, metric: str = "test acc", digits: int = 3) -> str:
    """'A minus B: +0.012 in test acc (A 0.890 ± 0.003 (n=3), B 0.878 ± 0.004 (n=3)); within seed noise ...'"""
    if not a or not b:
        return f"{name_a} vs {name_b}: no comparison ({name_a}: {ms(a)}, {name_b}: {ms(b)})"
    return (f"{name_a} minus {name_b}: {mean(a) - mean(b):+.{digits}f} in {metric} ({name_a} {ms(a, digits)}, "
            f"{name_b} {ms(b, digits)}); {verdict(a, b)}")


def paired(a: dict, b: dict) -> list:
    """Per-seed differences a[seed] - b[seed] over the seeds both have (same seed: same initial weights and
    batches wherever the two configs draw the same random numbers)."""
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def paired_line(diffs: list, digits: int = 3) -> str:
    """'+0.012 ± 0.004 over 3 seeds, all 3 positive'."""
    if not diffs:
        return "no seed finished on both sides"
    up = sum(d > 0 for d in diffs)
    down = sum(d < 0 for d in diffs)
    signs = (f"all {len(diffs)} positive" if up == len(diffs) else f"all {len(diffs)} negative"
             if down == len(diffs) else f"{up} positive, {down} negative")
    return f"{mean(diffs):+.{digits}f} ± {describe(diffs)['std']:.{digits}f} over {len(diffs)} seeds, {signs}"


def gain_share(part: list, none: list, full: list) -> float:
    """How much of the full treatment's gain over none the partial one recovers: (part - none) / (full - none),
    on means; nan when full does not beat none beyond seed noise (a share of a gain the seeds cannot tell from
    zero would be a ratio of noise: hundreds of percent either way)."""
    if not (part and none and full) or mean(full) <= mean(none) or (len(full) >= 2 and len(none) >= 2
                                                                     and not beyond_noise(full, none)):
        return math.nan
    return (mean(part) - mean(none)) / (mean(full) - mean(none))


def pct(share: float) -> str:
    return "n/a" if math.isnan(share) else f"{100 * share:.0f}%"


def epoch_table(sweep: dict, points: list, epochs: tuple, labels: dict | None = None,
                metric: str = "test_acc") -> list:
    """Markdown table: point, then the figure after each of ``epochs`` and the final one, mean ± std over
    the finished seeds."""
    labels = labels or {}
    lines = [f"| point | " + " | ".join(f"{metric.replace('_', ' ')} after epoch {e}" for e in epochs) +
             " | final | finished of runs |", "|---|" + "---|" * (len(epochs) + 2)]
    for p in points:
        cells = [ms(at_epoch(p, e, metric)) for e in epochs] + [ms(finals(p, metric))]
        lines.append(f"| {labels.get(p['id'], p['id'])} | " + " | ".join(cells) +
                     f" | {len(finished(p['runs']))} of {len(p['runs'])} |")
    return lines + [""]


def ranked(points: list, metric: str = "test_acc") -> list:
    """Points with at least one finished run, best final mean first."""
    scored = [(mean(finals(p, metric)), p) for p in points if finals(p, metric)]
    return [p for _, p in sorted(scored, key=lambda sp: -sp[0])]


def loss_note(a_point, b_point, name_a: str, name_b: str) -> str:
    """A sentence when the final training loss separates two points beyond seed noise (it is far steadier over
    seeds than the test accuracy with the moving statistics, which swings from epoch to epoch), else ''."""
    a, b = finals(a_point, "loss"), finals(b_point, "loss")
    if not beyond_noise(a, b):
        return ""
    return (f" The final training loss does separate them: {name_a} {ms(a)} against {name_b} {ms(b)}, beyond seed "
            f"noise (the test accuracy with the moving statistics swings from epoch to epoch and hides it).")


def loss_notes(ref_point, ref_name: str, others: list) -> str:
    """loss_note for several points against one reference, as one sentence listing the points whose final
    training loss the seeds tell apart from the reference's; ``others``: [(point, name)]. '' when none."""
    ref = finals(ref_point, "loss")
    apart = [(name, finals(p, "loss")) for p, name in others if beyond_noise(finals(p, "loss"), ref)]
    if not apart:
        return ""
    return (f" The final training loss does separate them: {ref_name} {ms(ref)} against "
            + "; ".join(f"{name} {ms(loss)}" for name, loss in apart)
            + ", each beyond seed noise (the test accuracy with the moving statistics swings from epoch to epoch "
              "and hides it).")
