"""What a sweep spec's ``[report]`` may declare: the analysis as data, checked before anything is trained.

    [report]
    lead = ["test_acc", "loss"]     # the metrics every analysis decides on (default); "METRIC:STATISTIC" picks
                                    # the statistic (stats.py), else each metric's steady one
    k = 3                           # the last k epochs for lastK_mean and the swing (1..50)
    margin = { test_acc = 0.01 }    # equivalence margin per metric (defaults below)
    names = { none = "no BN" }      # how a swept value reads in sentences (default: key=value)
    published = true                # the tutorial's published figures placed among the runs (published_section.py)

    [[report.contrast]]             # point A against point B
    a = { "model.norm" = "scratch" }      # the swept values that pick A (or a point id, "norm=scratch")
    b = { "model.norm" = "none" }
    for_each = ["train.lr"]         # optional: A vs B within each value of these swept keys
    metrics = ["test_acc"]          # optional: default the lead metrics
    [[report.contrast]]             # or one metric against another on the same runs (paired by run)
    a = { "model.norm" = "scratch" }
    metrics = ["test_acc_precise:final"]
    versus = "test_acc:final"
    [[report.limit]]                # the largest value of a swept key at which a point still trains
    key = "train.lr"
    by = "model.norm"               # optional: one series per value of this key
    metric = "test_acc"             # what "trains" is judged on, with at_least / at_most (optional)
    at_least = 0.7
    ratio = ["scratch", "none"]     # optional: series A's limit over series B's, with the grid's bounds
                                    # (or several pairs: [["scratch", "none"], ["torch", "none"]])
    [[report.ranking]]              # the points by a metric, the best against every other
    metric = "test_acc"
    for_each = ["train.batch_size"]
    at_least = 0.88                 # optional target: which points reach this mean ...
    std_at_most = 0.005             # ... with at most this std over seeds
    [[report.layers]]               # a per-layer file's figures per point
    file = "grad_norms.jsonl"       # or "bn_params.json"
    epoch = 1                       # a .jsonl file's epoch (default: the last)
    ratio = ["conv1.conv.weight", "fc3.weight"]

Every table may add ``label`` (its heading) and ``headline = true`` (its result goes into the one-line answer;
default: the first table). With no contrast, limit or ranking, every sweep gets each swept value against the
key's first value (per combination of the other keys), or each explicit point against the first point.
"""

from ..errors import UserError

REPORT_KEYS = ("lead", "k", "margin", "names", "published", "contrast", "limit", "ranking", "layers")
ITEM_KEYS = {"contrast": ("a", "b", "versus", "for_each", "metrics", "label", "headline"),
             "limit": ("key", "by", "metric", "at_least", "at_most", "ratio", "label", "headline"),
             "ranking": ("metric", "for_each", "at_least", "std_at_most", "label", "headline"),
             "layers": ("file", "epoch", "ratio", "label", "headline")}
LAYER_FILES = ("bn_params.json", "grad_norms.jsonl")
DEFAULT_MARGIN = 0.01  # accuracy (a fraction) and cross-entropy loss alike: a hundredth is below what matters here


def read(table, where: str) -> dict:
    """The [report] table checked for shape: unknown keys, types, k and margins in range."""
    if not isinstance(table, dict):
        raise UserError(f"{where}: [report] must be a table, got {table!r}")
    unknown = [k for k in table if k not in REPORT_KEYS]
    if unknown:
        raise UserError(f"{where}: [report] has unknown key {unknown[0]!r}; it takes {', '.join(REPORT_KEYS)}")
    lead = table.get("lead", ["test_acc", "loss"])
    lead = [lead] if isinstance(lead, str) else lead
    if not isinstance(lead, list) or not lead or not all(isinstance(m, str) and m for m in lead):
        raise UserError(f"{where}: [report] lead must be a list of metric names, e.g. [\"test_acc\", \"loss\"]")
    k = table.get("k", 3)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 50:
        raise UserError(f"{where}: [report] k = {k!r} is out of range: give the number of last epochs, 1 to 50")
    margin = table.get("margin", {})
    if not isinstance(margin, dict) or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0
                                           for v in margin.values()):
        raise UserError(f"{where}: [report] margin must be a table of metric = a number > 0, e.g. "
                        f"{{ test_acc = 0.01 }}, got {margin!r}")
    names = table.get("names", {})
    if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
        raise UserError(f"{where}: [report] names must be a table of value = \"display name\", got {names!r}")
    # k_given: a default k shortens itself to the shortest run (a one-epoch test sweep); a stated one must fit
    if not isinstance(table.get("published", False), bool):
        raise UserError(f"{where}: [report] published must be true or false")
    report = {"lead": lead, "k": k, "k_given": "k" in table, "margin": margin, "names": names,
              "published": table.get("published", False)}
    for kind in ("contrast", "limit", "ranking", "layers"):
        items = table.get(kind, [])
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise UserError(f"{where}: [[report.{kind}]] must be tables")
        report[kind] = [_item(kind, i, n, where) for n, i in enumerate(items, 1)]
    for metric in [*lead, *(m for c in report["contrast"] for m in c.get("metrics", []))]:
        _metric_syntax(metric, f"{where}: [report]")
    return report


def _item(kind: str, item: dict, n: int, where: str) -> dict:
    here = f"{where}: [[report.{kind}]] {n}"
    unknown = [k for k in item if k not in ITEM_KEYS[kind]]
    if unknown:
        raise UserError(f"{here}: unknown key {unknown[0]!r}; it takes {', '.join(ITEM_KEYS[kind])}")
    needed = {"contrast": ("a", "versus") if "versus" in item else ("a", "b"), "limit": ("key",),
              "layers": ("file",)}.get(kind, ())
    if kind == "contrast" and "versus" in item and "b" in item:
        raise UserError(f"{here}: give b (another point) or versus (another metric of the same runs), not both")
    for key in needed:
        if key not in item:
            raise UserError(f"{here}: {key} is missing")
    for key in ("for_each", "metrics"):
        value = item.get(key, [])
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{here}: {key} must be a list of names, got {item[key]!r}")
        if key in item:
            item[key] = value
    for key in ("at_least", "at_most", "std_at_most"):
        if key in item and (isinstance(item[key], bool) or not isinstance(item[key], (int, float))):
            raise UserError(f"{here}: {key} must be a number, got {item[key]!r}")
    if "ratio" in item:  # [A, B], or several such pairs (limits: one ratio per pair of series)
        pairs = item["ratio"] if item["ratio"] and all(isinstance(r, list) for r in item["ratio"]) else [item["ratio"]]
        if kind == "layers":
            pairs = [item["ratio"]]
        if not all(isinstance(r, list) and len(r) == 2 for r in pairs):
            raise UserError(f"{here}: ratio must be two values [A, B] (or a list of such pairs), got {item['ratio']!r}")
        if kind == "limit":
            item["ratio"] = pairs
    if kind == "layers":
        if item["file"] not in LAYER_FILES:
            raise UserError(f"{here}: file = {item['file']!r} is not a per-layer file; give one of "
                            f"{', '.join(LAYER_FILES)}")
        epoch = item.get("epoch")
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1):
            raise UserError(f"{here}: epoch = {epoch!r} is out of range: give an epoch >= 1")
    for key in ("metric", "versus"):
        if key in item:
            _metric_syntax(item[key], here)
    return item


def _metric_syntax(metric, where: str) -> None:
    from .stats import is_statistic
    name, _, statistic = str(metric).partition(":")
    if not name or (statistic and not is_statistic(statistic)):
        raise UserError(f"{where}: metric {metric!r}: write METRIC or METRIC:STATISTIC with a statistic among "
                        f"final, precise, run, lastK_mean, lastK_swing, epochN")


def check_against(report: dict, points: list, where: str) -> None:
    """Every point id, key and value the analysis names is in the sweep (points: spec.points_of)."""
    keys = list(dict.fromkeys(k for p in points for k in p["values"]))
    ids = {p["id"] for p in points}

    def known_key(key, here):
        if key not in keys:
            raise UserError(f"{here}: {key!r} is not a swept key of this sweep (its keys: {', '.join(keys) or 'none'})")

    for kind, items in (("contrast", report["contrast"]), ("limit", report["limit"]), ("ranking", report["ranking"])):
        for n, item in enumerate(items, 1):
            here = f"{where}: [[report.{kind}]] {n}"
            for key in item.get("for_each", []):
                known_key(key, f"{here} for_each")
            for side in ("a", "b"):
                if side not in item:
                    continue
                sel = item[side]
                if isinstance(sel, str):
                    if sel not in ids:
                        raise UserError(f"{here} {side}: no point {sel!r} in this sweep (its points: "
                                        f"{', '.join(sorted(ids)[:6])}{', ...' if len(ids) > 6 else ''})")
                elif isinstance(sel, dict):  # {} picks every point (a contrast with versus)
                    for key in sel:
                        known_key(key, f"{here} {side}")
                    if not any(matches(p, sel) for p in points):
                        raise UserError(f"{here} {side}: no point has {sel!r}")
                else:
                    raise UserError(f"{here} {side}: give a point id or a table of swept key = value, got {sel!r}")
            if kind == "limit":
                known_key(item["key"], f"{here} key")
                if "by" in item:
                    known_key(item["by"], f"{here} by")
                    values = {str(p["values"].get(item["by"])) for p in points}
                    for v in (v for pair in item.get("ratio", []) for v in pair):
                        if str(v) not in values:
                            raise UserError(f"{here} ratio: {v!r} is not a value of {item['by']}")
                elif "ratio" in item:
                    raise UserError(f"{here}: ratio needs by (the key whose series it divides)")


def matches(point: dict, selector) -> bool:
    if isinstance(selector, str):
        return point["id"] == selector
    return all(point["values"].get(k) == v for k, v in selector.items())
