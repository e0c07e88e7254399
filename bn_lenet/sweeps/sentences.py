"""The engine's results (analysis.py) in words: the answer's sentences, the one-line answer of the index, and
the report's setup line. Every number comes from the results; nothing here judges a number anew.
"""

import math

from .spec import id_value
from .stats import pm

METRIC_NAMES = {"test_acc": "test acc", "loss": "training loss", "train_acc": "train acc",
                "test_acc_precise": "test acc (precise BN)", "test_acc_batch_stats": "test acc (batch statistics)",
                "examples_per_sec": "examples/s", "train_loss": "training loss",
                "train_acc-test_acc": "train - test acc gap",
                "train_acc-test_acc_precise": "train - test acc gap (precise BN)",
                "loss_max-loss_min": "loss variation along the step",
                "grad_change": "gradient change along the step", "beta_smoothness": "effective beta-smoothness",
                "ics_l2": "ICS (l2)", "ics_cos": "ICS (cosine)"}


def metric_name(metric: str) -> str:
    """A metric in words; a per-layer one as 'ICS (l2) at fc1'."""
    key, _, layer = metric.partition(".") if "-" not in metric else (metric, "", "")
    return METRIC_NAMES.get(key, key) + (f" at {layer}" if layer else "")


def metric_label(metric: str, statistic: str) -> str:
    name = metric_name(metric)
    if statistic.startswith("reach"):
        return f"steps to {name} {'<=' if 'loss' in metric else '>='} {statistic[5:]}"
    if statistic == "landscape_mean":
        return f"{name}, mean over the run's measurements"
    if statistic == "precise":
        return f"{name} with precise-BN statistics"
    if statistic == "last1_mean":
        return f"{name}, final"
    if statistic.endswith("_mean"):
        return f"{name}, mean of the last {statistic[4:-5]} epochs"
    if statistic.endswith("_swing"):
        return f"{name}, swing (std) over the last {statistic[4:-6]} epochs"
    if statistic.startswith("epoch"):
        return f"{name} after epoch {statistic[5:]}"
    return name if statistic in ("run", "final") and "loss" in metric or statistic == "run" else f"{name}, final"


def number(x, metric: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if metric == "examples_per_sec":
        return f"{x:,.0f}"
    if abs(x) >= 100:  # steps, a diverging loss: three decimals say nothing
        return f"{x:,.1f}"
    return f"{x:.3f}" if abs(x) >= 0.01 or x == 0 else f"{x:.2e}"


def signed(x, metric: str = "") -> str:
    text = number(x, metric)
    return text if text.startswith("-") or text == "n/a" else "+" + text


def value_label(sweep: dict, key: str, value) -> str:
    """A swept value in words: the spec's name for it, else leaf=value as in a point id (lr=0.1, bias=false)."""
    text = id_value(value)
    return sweep["spec"]["report"]["names"].get(text, f"{key.rpartition('.')[2]}={text}")


def short(metric: str, statistic: str) -> str:
    """A metric in the one-line answer: its name and, where it is not the plain final value, the statistic."""
    name = metric_name(metric)
    if statistic.startswith("reach"):
        return f"steps to {name} {statistic[5:]}"
    if statistic in ("last1_mean", "landscape_mean"):  # the plain figure of a one-epoch run; a landscape mean
        return name
    if statistic.endswith("_swing"):
        return f"swing of {name}"
    if statistic == "precise":
        return f"{name} (precise BN)"
    if statistic.startswith("epoch"):
        return f"{name} (epoch {statistic[5:]})"
    return f"{name} ({statistic.replace('_', ' ')})" if statistic.endswith("_mean") else name


def point_label(sweep: dict, point_id: str, hide=()) -> str:
    """A point by its swept values in words, leaving out the keys its group already names (hide) and the keys
    zipped with the first of a [zip] (its value names theirs: lr = batch / 256 is said once, in the setup)."""
    point = next(p for p in sweep["points"] if p["id"] == point_id)
    hide = {*hide, *list(sweep["spec"].get("zip") or {})[1:]}
    parts = [value_label(sweep, k, v) for k, v in point["values"].items() if k not in hide]
    return ", ".join(parts) or point_id


def group_label(sweep: dict, point_id: str, keys) -> str:
    point = next(p for p in sweep["points"] if p["id"] == point_id)
    parts = [value_label(sweep, k, point["values"][k]) for k in keys if k in point["values"]]
    return f" at {', '.join(parts)}" if parts else ""


def verdict_text(row: dict) -> str:
    if row.get("note"):
        return row["note"]
    text = f"**{row['verdict']}**"
    if row["verdict"] == "inconclusive":
        text += f" at n={row['n']}"
        if row["ci_low"] is not None and (row["ci_low"] > 0 or row["ci_high"] < 0):
            text += " after Holm's correction (its own 95% interval excludes 0)"
        if row.get("seeds_needed"):
            more = row["seeds_needed"]
            text += (f" (about {more} seeds{' a side' if not row['paired'] else ''} would settle it at this spread)"
                     if more <= 1000 else " (more than 1,000 seeds would be needed at this spread)")
    return text


def status_note(sweep: dict, point_id: str) -> str:
    """' (2 of 5 runs stuck at chance)' where some runs of the point did not simply finish and learn."""
    runs = next(p for p in sweep["points"] if p["id"] == point_id)["runs"]
    parts = [f"{n} of {len(runs)} runs {what}" for n, what in (
        (sum(r["status"] == "diverged" for r in runs), "diverged"), (sum(r["stuck"] for r in runs), "stuck at chance"),
        (sum(r["status"] not in ("finished", "diverged") for r in runs), "not done"), ) if n]
    return f" ({', '.join(parts)})" if parts else ""


def contrast_head(sweep: dict, row: dict, hide=()) -> str:
    if row["a"] == row["b"]:  # one metric against another on the same runs
        first, _, second = row["metric"].partition(" vs ")
        s1, _, s2 = row["statistic"].partition(" vs ")
        return (f"{point_label(sweep, row['a'])}{status_note(sweep, row['a'])}: {metric_label(first, s1)} vs "
                f"{metric_label(second, s2)}")
    return (f"{point_label(sweep, row['a'], hide)}{status_note(sweep, row['a'])} vs {point_label(sweep, row['b'], hide)}"
            f"{status_note(sweep, row['b'])}{group_label(sweep, row['a'], hide)}, "
            f"{metric_label(row['metric'], row['statistic'])}")


def contrast_sentence(sweep: dict, row: dict, hide=()) -> str:
    m = row["metric"].partition(" vs ")[0]
    head = contrast_head(sweep, row, hide)
    if row.get("note"):
        counted = f"reached by {row['reached']} runs" if row.get("reached") else f"{row['n']} finished"
        return f"{head}: {row['note']} ({counted})"
    text = f"{head}: {number(row['mean_a'], m)} vs {number(row['mean_b'], m)}, {signed(row['diff'], m)}"
    if row["ci_low"] is not None:
        text += f" [{signed(row['ci_low'], m)}, {signed(row['ci_high'], m)}]"
    how = f"n={row['n']} {'paired' if row['paired'] else 'unpaired'}"
    if row.get("p") is not None:
        how += f", permutation p {row['p']:.2g}"
    if row.get("p_holm") is not None:
        how += f", Holm-adjusted t p {row['p_holm']:.2g}"
    if row.get("ratio"):
        text += f", {row['ratio']:.3g}x the steps (reached by {row['reached']} runs)"
    text += f": {verdict_text(row)} ({how})"
    if row.get("swing") is not None and row["diff"] is not None and abs(row["diff"]) < row["swing"]:
        text += f"; the difference is smaller than this figure's swing within a run ({number(row['swing'], m)})"
    return text


def item_lines(sweep: dict, item: dict, rows: list) -> list:
    kind = item["kind"]
    hide = item.get("for_each", [])
    if kind == "contrast":
        return [f"- {contrast_sentence(sweep, rows[i], hide)}." for i in item["rows"]]
    if kind == "ranking":
        lines = []
        for g in item["groups"]:
            best, others = g["best"], [rows[i] for i in g["rows"]]
            tied = [r["b"] for r in others if r["verdict"] != ("lower" if "loss" in r["metric"] else "higher")]
            d = dict(g["points"])[best]
            lines.append(f"- Best {metric_label(item['metric'], item['statistic'])}{group_label(sweep, best, hide)}: "
                         f"**{point_label(sweep, best, hide)}** ({pm(d, 0 if item['metric'] == 'examples_per_sec' else 3)}, "
                         f"n={d['n']}); "
                         + (f"not told apart from it at this n: {', '.join(point_label(sweep, t, hide) for t in tied)}."
                            if tied else "every other point is beyond seed noise from it."))
            if "at_least" in item or "std_at_most" in item:
                target = " and ".join(t for t in (f"mean >= {item['at_least']}" if "at_least" in item else "",
                                                  f"std <= {item['std_at_most']}" if "std_at_most" in item else "") if t)
                met = [point_label(sweep, m, hide) for m in g["meets"]]
                lines.append(f"  Target {target}, every seed finished: {'met by ' + ', '.join(met) if met else 'met by no point'}.")
        return lines
    if kind == "limit":
        return limit_lines(sweep, item)
    return []


def limit_lines(sweep: dict, item: dict) -> list:
    key, lines = item["key"], []
    crit = metric_label(item["metric"], item["statistic"])
    rule = "every seed finishes, none diverges or sticks at chance" + (
        f", and the mean {crit} is >= {item['at_least']}" if "at_least" in item else "") + (
        f", and the mean {crit} is <= {item['at_most']}" if "at_most" in item else "")
    for label, s in item["series"].items():
        name = value_label(sweep, item["by"], label) if item.get("by") else "every point"
        if s["largest"] is None:
            lines.append(f"- {name}: trains at no {key} of the grid.")
            continue
        nxt = next((st for st in s["steps"] if st["value"] == s["next"]), None)
        why = (f"; at {s['next']} it does not ({why_not(nxt)})" if nxt else "; that is the grid's top")
        prev = next((st for st in s["steps"] if st["value"] == s["previous"]), None)
        low = (f" (and from {s['smallest']}: at {s['previous']} it does not ({why_not(prev)}))" if prev else "")
        lines.append(f"- {name}: trains up to {key} = {s['largest']}{why}{low}.")
    for r in item["ratios"]:
        a, b = (value_label(sweep, item["by"], v) for v in r["pair"])
        low = f"{r['low']:.3g}x" if r["low"] else "?"
        high = "unbounded" if math.isinf(r["high"]) else f"{r['high']:.3g}x"
        lines.append(f"- Largest {key} that trains, {a} over {b}: **{r['value']:.3g}x** (the grid bounds it to "
                     f"{low} .. {high}).")
    return lines + [f"  (\"trains\": {rule}.)"]


def why_not(step: dict) -> str:
    parts = [f"{step[k]} of the runs {w}" for k, w in (("diverged", "diverged"), ("stuck", "stuck at chance"),
                                                       ("not_done", "not done")) if step[k]]
    d = step["figure"]
    return "; ".join(parts) or (f"mean {d['mean']:.3f}" if d.get("n") else "no finished run")


def answer_lines(sweep: dict, result: dict) -> list:
    lines = ["## Answer", ""]
    runs = sweep["runs"]
    not_done = sum(r["status"] not in ("finished", "diverged") for r in runs)
    if not_done:
        lines += [f"**{not_done} of {len(runs)} runs are not done** (interrupted, failed or not started): rerun the "
                  "sweep's command to complete them; every figure below covers the runs done so far.", ""]
    for item in result["items"]:
        if item["kind"] == "layers":
            continue
        lines += [f"**{item.get('label') or heading(sweep, item)}**", ""] + item_lines(sweep, item, result["contrasts"]) + [""]
    return lines


def heading(sweep: dict, item: dict) -> str:
    if item["kind"] == "contrast":
        side = lambda s: s if isinstance(s, str) else ", ".join(value_label(sweep, k, v) for k, v in s.items())  # noqa: E731
        each = f", for each {', '.join(k.rpartition('.')[2] for k in item['for_each'])}" if item.get("for_each") else ""
        if "versus" in item:
            label = lambda m: metric_label(*(m.partition(":")[::2]) if ":" in m else (m, "final"))  # noqa: E731
            return (f"{side(item['a']) or 'every point'}: "
                    f"{', '.join(label(m) for m in item.get('metrics') or sweep['lead'])} vs {label(item['versus'])}")
        return f"{side(item['a'])} vs {side(item['b'])}{each}"
    if item["kind"] == "limit":
        return f"Up to which {item['key']} does each {item.get('by', 'point')} train?"
    return f"Ranking by {metric_label(item['metric'], item['statistic'])}"


def row_metric(r: dict) -> str:
    if " vs " in r["metric"]:
        (first, _, second), (s1, _, s2) = r["metric"].partition(" vs "), r["statistic"].partition(" vs ")
        return f"{short(first, s1)} vs {short(second, s2)}"
    return short(r["metric"], r["statistic"])


def row_outcome(r: dict) -> str:
    """'+0.030 inconclusive at n=5', '-0.228 lower' or 'no finished run'."""
    if r.get("note"):
        return r["note"]
    ratio = f" ({r['ratio']:.3g}x)" if r.get("ratio") else ""
    return f"{signed(r['diff'], r['metric'].partition(' vs ')[0])}{ratio} {r['verdict']}" + (
        f" at n={r['n']}" if r["verdict"] == "inconclusive" else "")


def one_line(sweep: dict, result: dict, limit: int = 4) -> str:
    """The index's one line: the headline items, each contrast as 'A vs B: metric diff verdict'."""
    parts, rows = [], result["contrasts"]
    for item in (i for i in result["items"] if i.get("headline")):
        hide = item.get("for_each", [])
        if item["kind"] == "contrast":
            pairs = {}  # the rows of one pair of points (one per metric) share one "A vs B:" head
            for r in (rows[i] for i in item["rows"]):
                pairs.setdefault((r["a"], r["b"]), []).append(r)
            for (a, b), pair_rows in list(pairs.items())[:limit]:
                if a == b:  # one metric against another on the same runs
                    head = point_label(sweep, a)
                else:
                    head = f"{point_label(sweep, a, hide)} vs {point_label(sweep, b, hide)}{group_label(sweep, a, hide)}"
                parts.append(f"{head}: " + ", ".join(f"{row_metric(r)} {row_outcome(r)}" for r in pair_rows))
            if len(pairs) > limit:
                parts.append(f"... {len(pairs) - limit} more in the report")
        elif item["kind"] == "ranking":
            for g in item["groups"][:limit]:
                d = dict(g["points"])[g["best"]]
                tied = sum(rows[i]["verdict"] not in ("higher", "lower") for i in g["rows"])
                parts.append(f"best {short(item['metric'], item['statistic'])}{group_label(sweep, g['best'], hide)}"
                             f" {point_label(sweep, g['best'], hide)} {number(d['mean'], item['metric'])} (n={d['n']}"
                             + (f"; {tied} of {len(g['rows'])} others not told apart from it at this n)" if tied else
                                f"; beyond seed noise from the {len(g['rows'])} others)"))
        elif item["kind"] == "limit":
            for label, s in item["series"].items():
                name = value_label(sweep, item["by"], label) if item.get("by") else "all"
                parts.append(f"{name} trains up to {s['largest']}" if s["largest"] is not None else f"{name} never trains")
            for r in item["ratios"]:
                a, b = (value_label(sweep, item["by"], v) for v in r["pair"])
                parts.append(f"{a} / {b} {r['value']:.3g}x (grid bounds {r['low'] or 0:.3g}x..{r['high']:.3g}x)")
    return "; ".join(parts) or "no analysis stated"
