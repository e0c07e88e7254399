"""The one analysis engine: a sweep's declared contrasts, limits, rankings and per-layer breakdowns (or the
default, each swept value against the first), computed from its runs under the one rule (rule.py).

``analyse(sweep)`` returns {"items": [...], "contrasts": [...]}: each item is one [report] table with its
results; every contrast any item states is one row of ``contrasts`` (contrasts.csv), and Holm's correction runs
over all of them. Nothing here writes a sentence (sentences.py) or a file (report.py).
"""

import json
import math

from ..errors import UserError
from ..training.files import read_json
from . import rule
from .report_spec import DEFAULT_MARGIN, check_against, matches
from .stats import among, by_seed, describe, finished, steady, swing

NO_RUN = "no finished run"
NOT_REACHED = "the target is not reached"  # steps to a target: a side none of whose runs got there


def analyse(sweep: dict) -> dict:
    report, where = sweep["spec"]["report"], sweep["spec"].get("spec_file") or sweep["spec"]["name"]
    check_against(report, sweep["points"], where)
    check_recorded(sweep, where)
    items = [dict(i, kind=kind) for kind in ("contrast", "limit", "ranking", "layers") for i in report[kind]]
    if not any(i["kind"] != "layers" for i in items):
        items = default_items(sweep) + items
    if items and not any(i.get("headline") for i in items):
        items[0]["headline"] = True
    for n, item in enumerate(items, 1):
        item["no"] = n
    contrasts = []
    for item in items:
        item.update(globals()[item["kind"]](sweep, item, contrasts))
    rule.verdicts([c for c in contrasts if c.get("note") not in (NO_RUN, NOT_REACHED)])
    return {"items": items, "contrasts": contrasts}


def check_recorded(sweep: dict, where: str) -> None:
    """Every metric the analysis names is recorded by some run; k is no longer than the runs."""
    report = sweep["spec"]["report"]
    recorded = set(sweep["metrics"]) | {"examples_per_sec"} | {f for names in sweep["steps"].values() for f in names}
    named = named_metrics(report)
    done = [r for r in finished(sweep["runs"])]
    if not done:
        return  # nothing to check against yet: every figure says "no finished run"
    for metric in named:
        if not among(metric.partition(":")[0], recorded):
            raise UserError(f"{where}: [report] metric {metric.partition(':')[0]!r} is recorded by no run of this "
                            f"sweep (they record {', '.join(sorted(recorded))})")
    shortest = min(len(r["rows"]) for r in done)
    if report["k"] > shortest and not report.get("k_given", True):
        report["k"] = shortest  # the default k on runs shorter than it: all their epochs
    if report["k"] > shortest:
        raise UserError(f"{where}: [report] k = {report['k']} is out of range: the shortest finished run has "
                        f"{shortest} epoch(s)")


def named_metrics(report: dict) -> list:
    """Every METRIC[:STATISTIC] a [report] names: its lead, its contrasts' metrics and versus, its limits' and
    rankings' metric."""
    return [*report["lead"], *(m for c in report["contrast"] for m in [*c.get("metrics", []), c.get("versus", "")] if m),
            *(i["metric"] for kind in ("limit", "ranking") for i in report[kind] if "metric" in i)]


def metric_statistic(sweep: dict, metric: str, points=None) -> tuple:
    """(metric, statistic): as written (METRIC:STATISTIC), else the steady one; precise BN only where every
    point compared recorded it (a network without BN has no statistics to re-estimate)."""
    name, _, statistic = metric.partition(":")
    if statistic:
        return name, statistic
    if name not in sweep["metrics"] and among(name, sweep["steps"]["landscape"]):
        return name, "landscape_mean"  # a figure measured along the steps, not per epoch
    k = sweep["spec"]["report"]["k"]
    statistic = steady(name, set(sweep["metrics"]), k)
    if statistic == "precise" and points and not all(
            not r.get("bn", True) or any(row.get(f"{name}_precise") is not None for row in r["rows"])
            for p in points for r in finished(p["runs"])):
        statistic = f"last{k}_mean"
    return name, statistic


def margin_of(sweep: dict, metric: str, statistic: str = ""):
    """The equivalence margin: the spec's, else the default for an accuracy or a loss itself (not for steps to
    a target or a landscape figure, which have no default)."""
    margins = sweep["spec"]["report"]["margin"]
    if metric in margins:
        return margins[metric]
    own = not statistic.startswith(("reach", "landscape")) and "-" not in metric
    return DEFAULT_MARGIN if own and ("acc" in metric or "loss" in metric) else None


def lower_is_better(metric: str) -> bool:
    return "loss" in metric or "swing" in metric


# --- contrasts --------------------------------------------------------------------------------------------

def contrast_row(sweep: dict, pa: dict, pb: dict, metric: str, item_no: int, versus: str = "") -> dict:
    """A on ``metric`` against B on it; with ``versus``, A on ``metric`` against A's own runs on ``versus``."""
    name, statistic = metric_statistic(sweep, metric, [pa, pb])
    a = by_seed(pa["runs"], name, statistic)
    if versus:
        other, other_statistic = metric_statistic(sweep, versus)
        b = by_seed(pa["runs"], other, other_statistic)
        name, statistic = f"{name} vs {other}", f"{statistic} vs {other_statistic}"
    else:
        b = by_seed(pb["runs"], name, statistic)
    row = {"a": pa["id"], "b": pb["id"], "metric": name, "statistic": statistic, "item": item_no}
    margin = margin_of(sweep, name.partition(" vs ")[0], statistic.partition(" vs ")[0])
    if not a or not b:
        done = [finished(p["runs"]) for p in (pa, pb)]
        note = NOT_REACHED if statistic.startswith("reach") and all(done) else NO_RUN
        if note == NOT_REACHED:
            row["reached"] = f"{len(a)}/{len(pa['runs'])}+{len(b)}/{len(pb['runs'])}"
        return row | {"n": f"{len(a)}+{len(b)}", "paired": False, "mean_a": None, "mean_b": None, "diff": None,
                      "ci_low": None, "ci_high": None, "p": None, "p_t": None, "note": note, "verdict": "inconclusive",
                      "seeds_needed": None, "swing": None, "margin": margin}
    row.update(rule.compare(a, b, margin))
    if statistic.startswith("reach"):  # steps to a target: the paper states a ratio ("14x fewer steps")
        row["ratio"] = row["mean_a"] / row["mean_b"] if row["mean_b"] else None
        row["reached"] = f"{len(a)}/{len(pa['runs'])}+{len(b)}/{len(pb['runs'])}"
    k = sweep["spec"]["report"]["k"]
    swings = [] if versus else [swing(p["runs"], name, statistic, k) for p in (pa, pb)]
    row["swing"] = max((s for s in swings if s is not None), default=None)
    return row


def groups(points: list, keys: list) -> list:
    """[(their values of keys, [points])] in sweep order."""
    order = {}
    for p in points:
        order.setdefault(tuple(repr(p["values"].get(k)) for k in keys), []).append(p)
    return list(order.values())


def contrast(sweep: dict, item: dict, rows: list) -> dict:
    if "versus" in item:
        start = len(rows)
        rows += [contrast_row(sweep, p, p, m, item["no"], item["versus"]) for p in sweep["points"]
                 if matches(p, item["a"]) for m in item.get("metrics") or sweep["lead"]]
        return {"rows": list(range(start, len(rows)))}
    pairs = []
    each = item.get("for_each", [])
    points = [p for p in sweep["points"] if all(k in p["values"] for k in each)]  # "for each value" of a key
    for group in groups(points, each):
        pa = [p for p in group if matches(p, item["a"])]
        pb = [p for p in group if matches(p, item["b"])]
        if len(pa) > 1 or len(pb) > 1:
            raise UserError(f"[[report.contrast]] {item['a']!r} vs {item['b']!r}: a side picks several points at once "
                            f"({', '.join(p['id'] for p in pa + pb)}): name more keys, or add for_each")
        if pa and pb and pa[0] is not pb[0]:
            pairs.append((pa[0], pb[0]))
    start = len(rows)
    for pa, pb in pairs:
        rows += [contrast_row(sweep, pa, pb, m, item["no"]) for m in item.get("metrics") or sweep["lead"]]
    return {"rows": list(range(start, len(rows)))}


def default_items(sweep: dict) -> list:
    """Each swept value against the key's first value, within each combination of the other swept keys (a zip
    is one key); each explicit point against the first point."""
    spec, items = sweep["spec"], []
    grid_points = [p for p in sweep["points"] if p.get("from") == "grid"]
    axes = [[k] for k in spec.get("grid", {})] + ([list(spec["zip"])] if spec.get("zip") else [])
    for axis in axes if grid_points else []:
        others = [k for a in axes if a is not axis for k in a]
        first = {k: grid_points[0]["values"][k] for k in axis}
        for p in grid_points:
            values = {k: p["values"][k] for k in axis}
            if values != first and not any(i["a"] == values for i in items):
                items.append({"kind": "contrast", "a": values, "b": first, "for_each": others, "default": True})
    listed = [p for p in sweep["points"] if p.get("from") != "grid"]
    if listed:
        base = sweep["points"][0]
        items += [{"kind": "contrast", "a": p["id"], "b": base["id"], "default": True} for p in listed if p is not base]
    return items


# --- rankings and limits ----------------------------------------------------------------------------------

def ranking(sweep: dict, item: dict, rows: list) -> dict:
    """Within each group, the points by the metric's steady statistic; the best against every other point."""
    metric = item.get("metric", sweep["lead"][0])
    name, statistic = metric_statistic(sweep, metric)
    sign = 1 if lower_is_better(name) else -1
    ranked_groups = []
    for group in groups(sweep["points"], item.get("for_each", [])):
        scored = [(describe(list(by_seed(p["runs"], name, statistic).values())), p) for p in group]
        scored = sorted([s for s in scored if s[0]["n"]], key=lambda s: sign * s[0]["mean"])
        if not scored:
            continue
        best = scored[0][1]
        start = len(rows)
        rows += [contrast_row(sweep, best, p, metric, item["no"]) for _, p in scored[1:]]
        meets = [p["id"] for d, p in scored if d["mean"] >= item.get("at_least", -math.inf)
                 and d["std"] <= item.get("std_at_most", math.inf) and d["n"] == len(p["runs"])]
        ranked_groups.append({"points": [(p["id"], d) for d, p in scored], "best": best["id"],
                              "rows": list(range(start, len(rows))), "meets": meets})
    return {"metric": name, "statistic": statistic, "groups": ranked_groups}


def trains(sweep: dict, point: dict, item: dict, name: str, statistic: str) -> dict:
    runs = point["runs"]
    done = [r for r in runs if r["status"] in ("finished", "diverged")]
    diverged = sum(r["status"] == "diverged" for r in runs)
    stuck = sum(r["stuck"] for r in runs)
    d = describe(list(by_seed(runs, name, statistic).values()))
    ok = len(done) == len(runs) and not diverged and not stuck and d["n"] > 0
    if ok and "at_least" in item:
        ok = d["mean"] >= item["at_least"]
    if ok and "at_most" in item:
        ok = d["mean"] <= item["at_most"]
    return {"point": point["id"], "value": point["values"][item["key"]], "trains": ok, "diverged": diverged,
            "stuck": stuck, "not_done": len(runs) - len(done), "figure": d}


def limit(sweep: dict, item: dict, rows: list) -> dict:
    name, statistic = metric_statistic(sweep, item.get("metric", sweep["lead"][0]))
    by = item.get("by")
    series = {}
    for p in (p for p in sweep["points"] if item["key"] in p["values"]):  # points off the key's axis: not in it
        series.setdefault(str(p["values"].get(by)) if by else "all", []).append(p)
    out = {}
    for label, points in series.items():
        steps = sorted((trains(sweep, p, item, name, statistic) for p in points), key=lambda s: s["value"])
        ok = [s["value"] for s in steps if s["trains"]]
        largest, smallest = (max(ok), min(ok)) if ok else (None, None)
        above = [s["value"] for s in steps if largest is not None and s["value"] > largest]
        below = [s["value"] for s in steps if smallest is not None and s["value"] < smallest]
        out[label] = {"steps": steps, "largest": largest, "next": min(above) if above else None,
                      "smallest": smallest, "previous": max(below) if below else None}
    ratios = []
    for pair in item.get("ratio", []):
        a, b = (out.get(str(v)) for v in pair)
        if a and b and a["largest"] and b["largest"]:
            ratios.append({"pair": pair, "value": a["largest"] / b["largest"],
                           "low": a["largest"] / b["next"] if b["next"] else None,
                           "high": a["next"] / b["largest"] if a["next"] else math.inf})
    return {"metric": name, "statistic": statistic, "series": out, "ratios": ratios}


# --- per-layer files --------------------------------------------------------------------------------------

def layer_figures(run: dict, item: dict) -> dict:
    """{layer: figure} of one run: gamma/beta means over channels, or a per-layer .jsonl row at an epoch."""
    path = run["dir"] / item["file"]
    if not path.is_file():
        return {}
    if item["file"] == "bn_params.json":
        params = read_json(path)
        return {f"{layer}.{key}": sum(v[key]) / len(v[key]) for layer, v in params.items() for key in ("gamma", "beta")
                if v.get(key)}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    epoch = item.get("epoch") or (rows[-1]["epoch"] if rows else None)
    row = next((r for r in rows if r.get("epoch") == epoch), None)
    return {k: v for k, v in (row or {}).items() if k != "epoch"}


def layers(sweep: dict, item: dict, rows: list) -> dict:
    table = {}
    for p in sweep["points"]:
        runs = [layer_figures(r, item) for r in finished(p["runs"])]
        names = list(dict.fromkeys(k for r in runs for k in r))
        table[p["id"]] = {n: describe([r.get(n) for r in runs]) for n in names}
        if item.get("ratio"):
            la, lb = item["ratio"]
            table[p["id"]][f"{la} / {lb}"] = describe([r[la] / r[lb] for r in runs if r.get(la) and r.get(lb)])
    return {"table": table}

