"""The answers of the batch-size studies (configs/sweeps/NAME.toml), each point one (model.norm, train.batch_size):

    batch_size  batch 16..1024 x BN (scratch), GroupNorm, LayerNorm, none: where BN's final test accuracy falls
                off at small batches, whether GroupNorm and LayerNorm hold up, and how far the test accuracy with
                the moving statistics is from the one with each test batch's own statistics, per size
    norm_kinds  the same norms at batch 256 and 16: which to use at each, and what each costs in examples/s

One rule says whether two points differ, stated in both reports and the same as every other study's
(answers_common.beyond_noise): a point falls short of the best when its final test accuracies over seeds all lie
below the best's (the seeds' ranges do not overlap; with 3 seeds a side no test can do better), and a point with
a diverged run falls short too. Diverged runs (loss or weights inf/NaN) and stuck ones
(finite loss, chance accuracy) are named apart, never averaged as if they had trained.
"""

import json

from .answers_common import beyond_noise, by_seed, finals, mean, ms, paired, status_note
from .stats import STUCK_ACC, describe, examples_per_sec, finished

NORMS = {"scratch": "BN", "torch": "nn.BatchNorm", "group": "GroupNorm", "layer": "LayerNorm", "none": "no norm"}
ACC_FIGURE = "batch_size_test_acc.png"
STATS_FIGURE = "batch_size_bn_stats.png"
BATCH_STATS = "test_acc_batch_stats"
RULE = ("A point *falls short* of the best when every seed's final test accuracy is below every seed's of the best "
        "(the seeds' ranges do not overlap), or when one of its runs diverged; *within spread* otherwise. Figures "
        "are mean ± sample std over the finished seeds (n).")


def name(norm: str) -> str:
    return NORMS.get(norm, norm)


def grid(sweep: dict) -> dict:
    """{norm: {batch size: point}}, norms in the spec's order, batch sizes ascending."""
    out = {}
    for p in sweep["points"]:
        if "train.batch_size" not in p["values"]:
            raise ValueError("the batch-size answers need train.batch_size in every point")
        out.setdefault(p["values"].get("model.norm", "scratch"), {})[p["values"]["train.batch_size"]] = p
    return {norm: dict(sorted(curve.items())) for norm, curve in out.items()}


def std(values: list) -> float:
    return describe(values)["std"] if values else 0.0


def diverged(point: dict) -> int:
    return sum(r["status"] == "diverged" for r in point["runs"])


def falls_short(point: dict, best: list) -> bool | None:
    """The rule above; None when the point has nothing to judge yet (no finished and no diverged run)."""
    if diverged(point):
        return True
    acc = finals(point)
    if not acc or not best:
        return None
    return mean(acc) < mean(best) and beyond_noise(acc, best)


def best_batch(curve: dict):
    """The batch size whose mean final test accuracy is highest, or None when no point finished."""
    scored = [(mean(finals(p)), b) for b, p in curve.items() if finals(p)]
    return max(scored)[1] if scored else None


def falloff(curve: dict) -> dict | None:
    """Where one norm's curve falls off at small batches: {"best": batch, "holds_to": the smallest batch from
    which every judged size up to the best is within spread, "short": the judged sizes below it that fall short}.
    None when no point finished."""
    top = best_batch(curve)
    if top is None:
        return None
    best, holds_to = finals(curve[top]), top
    for b in sorted((b for b in curve if b < top), reverse=True):
        verdict = falls_short(curve[b], best)
        if verdict:
            break
        if verdict is False:
            holds_to = b
    short = [b for b in curve if b < holds_to and falls_short(curve[b], best)]
    return {"best": top, "holds_to": holds_to, "short": short}


def acc_at(point: dict) -> str:
    """'0.871 ± 0.004 (n=3)', or what happened instead: diverged / stuck / not done."""
    acc = finals(point)
    text = ms(acc) if acc else "no finished run"
    return text + status_note(point)


def drop(curve: dict, batch) -> dict | None:
    """How far the curve's point at ``batch`` is below its best: {"by", "short", "acc", "best"}."""
    top = best_batch(curve)
    if top is None or batch not in curve:
        return None
    best, acc = finals(curve[top]), finals(curve[batch])
    return {"by": mean(best) - mean(acc) if acc else None, "short": falls_short(curve[batch], best),
            "acc": acc, "best": best, "top": top}


def not_done(sweep: dict) -> int:
    return sum(r["status"] not in ("finished", "diverged") for r in sweep["runs"])


def provisional(sweep: dict) -> list:
    n = not_done(sweep)
    if not n:
        return []
    return [f"**Provisional: {n} of {len(sweep['runs'])} runs are not done** (interrupted, failed or not started); "
            "the figures below are over the runs done so far. Rerun the sweep's command to complete them.", ""]


def lr_rule(sweep: dict) -> str:
    """What the runs' lr is against the batch: 'lr = batch / 256 at every point' when it is."""
    ratios = {p["values"]["train.lr"] * 256 / p["values"]["train.batch_size"] for p in sweep["points"]
              if "train.lr" in p["values"]}
    if not ratios:
        return "The lr is the config's at every batch size (not scaled with the batch)."
    if len(ratios) == 1:
        k = ratios.pop()
        scale = "" if k == 1 else f"{k:g} × "
        return (f"The lr is scaled linearly with the batch, **lr = {scale}batch / 256** at every point (the "
                f"tutorial's lr 1.0 at batch 256), so every batch size trains the same epochs at the same lr per "
                f"example.")
    return "The lr is not one multiple of the batch size here: " + ", ".join(
        f"{p['id']}" for p in sweep["points"]) + "."


# --- batch_size -----------------------------------------------------------------------------------------

def bn_sentence(curve: dict) -> str:
    f = falloff(curve)
    if f is None:
        return "BN has no finished run yet"
    smallest = min(curve)
    best = f"its best, {ms(finals(curve[f['best']]))} at batch {f['best']}"
    if not f["short"]:
        held = f"batch {smallest}, the smallest" if f["holds_to"] == smallest else f"batch {f['holds_to']}"
        return f"BN does **not** fall off: down to {held}, its final test accuracy stays within spread of {best}"
    said = f"BN's final test accuracy **falls off below batch {f['holds_to']}**: " + (
        f"{best}" if f["holds_to"] == f["best"] else f"it stays within spread of {best} down to batch {f['holds_to']}")
    for b in sorted({max(f["short"]), smallest} & set(f["short"]), reverse=True):
        d = drop(curve, b)
        below = f", {d['by']:.3f} below its best" if d["by"] is not None else ""
        said += f"; at batch {b} it is {acc_at(curve[b])}{below}"
    return said


def hold_sentence(norm: str, curve: dict, bn_drop: dict | None) -> str:
    smallest = min(curve)
    d = drop(curve, smallest)
    if d is None or d["by"] is None:
        return f"{name(norm)} at batch {smallest}: {acc_at(curve[smallest])}"
    holds = "holds up" if not d["short"] else "falls short"
    vs_bn = (f" (BN: {d_bn:.3f} below its best)" if bn_drop and (d_bn := bn_drop["by"]) is not None else "")
    return (f"{name(norm)} **{holds}** at batch {smallest}: {ms(d['acc'])}{status_note(curve[smallest])} against its "
            f"best {ms(d['best'])} at batch {d['top']}, {d['by']:.3f} below{vs_bn}")


def gaps(curve: dict) -> dict:
    """{batch: per-seed moving minus batch-statistics final test accuracy} where the runs recorded both."""
    out = {}
    for b, p in curve.items():
        diffs = paired(by_seed(p), by_seed(p, metric=BATCH_STATS))
        if diffs:
            out[b] = diffs
    return out


def gap_sentence(curve: dict) -> str:
    g = gaps(curve)
    if not g:
        return ("No BN run recorded the test accuracy with batch statistics (eval.batch_stats), so the gap cannot "
                "be given.")
    sizes = "; ".join(f"{b}: {mean(d):+.3f} ± {std(d):.3f}" for b, d in g.items())
    widest = max(g, key=lambda b: abs(mean(g[b])))
    return (f"Moving minus batch-statistics test accuracy of BN, per batch size (mean ± std over seeds of the "
            f"per-seed difference): {sizes}; widest at batch {widest}.")


def paper_sentence(curves: dict) -> str:
    """Against Wu & He 2018: BN's error rising sharply at small batches while GroupNorm's stays flat."""
    bn, gn = curves.get("scratch"), curves.get("group")
    if not bn or not gn:
        return "The sweep lacks BN or GroupNorm, so the GroupNorm paper's claim cannot be checked."
    small = min(bn)
    b, g = drop(bn, small), drop(gn, small)
    if not b or not g or b["by"] is None or g["by"] is None:
        return f"Not enough finished runs at batch {small} to check the GroupNorm paper's claim yet."
    figures = (f"BN's error at batch {small} is {b['by']:+.3f} from its best, GroupNorm's {g['by']:+.3f} "
               f"from its own best")
    if b["short"] and not g["short"]:
        return (f"This agrees with the GroupNorm paper (BN's error rises at small batches, GroupNorm's stays flat): "
                f"{figures}. The paper's smallest batch was 2 images per GPU; this sweep stops at {small}.")
    said = []
    if not b["short"]:
        said.append(f"BN's error does **not** rise beyond the seeds' spread down to batch {small}, where the paper "
                    f"has it rising sharply (its batches went down to 2 images per GPU, ours to {small})")
    if g["short"]:
        said.append(f"GroupNorm's does **not** stay flat: it falls short of its best at batch {small} too")
    return f"Where this disagrees with the GroupNorm paper: {'; '.join(said)} ({figures})."


def meaning(curves: dict) -> str:
    small = min(min(c) for c in curves.values())
    bn = curves.get("scratch")
    f = falloff(bn) if bn else None
    said = []
    if f and f["short"]:
        said.append(f"With BN, keep the batch at {f['holds_to']} or more (lr scaled with it); below that it costs "
                    f"accuracy beyond seed noise.")
    elif f:
        said.append(f"BN is safe down to batch {small} here, with the lr scaled with the batch.")
    at_small = sorted(((mean(finals(c[small])), n) for n, c in curves.items() if small in c and finals(c[small])),
                      reverse=True)
    if at_small:
        top_norm = at_small[0][1]
        top = finals(curves[top_norm][small])
        others = [n for n in curves if n != top_norm and small in curves[n]]
        tied = [name(n) for n in others if falls_short(curves[n][small], top) is False]
        short = [name(n) for n in others if falls_short(curves[n][small], top)]
        undone = [name(n) for n in others if falls_short(curves[n][small], top) is None]
        said.append(f"At batch {small} the best mean is {name(top_norm)}'s ({ms(top)})"
                    + (f"; within spread of it: {', '.join(tied)}" if tied else "")
                    + (f"; short of it: {', '.join(short)}" if short else "")
                    + (f"; not done yet: {', '.join(undone)}" if undone else "") + ".")
    large = max(max(c) for c in curves.values())
    fell = [(n, drop(c, large)) for n, c in curves.items() if large in c and large != best_batch(c)]
    fell = [(n, d) for n, d in fell if d and d["short"]]
    if fell:  # the other end: with lr = batch / 256 the largest batches train at the largest lr
        said.append(f"Where the accuracy does fall here is at the largest batch, {large}, with its lr scaled up to "
                    f"{large / 256:g}: " + "; ".join(f"{name(n)} {acc_at(curves[n][large])}, below its best "
                                                      f"{ms(d['best'])} at batch {d['top']}" for n, d in fell)
                    + (f"; BN {acc_at(bn[large])} holds up best there" if bn and large in bn and "scratch" not in
                       dict(fell) else "") + ".")
        least = min(fell, key=lambda nd: nd[1]["by"] if nd[1]["by"] is not None else float("inf"))
        if len(fell) > 1 and least[1]["by"] is not None:
            said.append(f"{name(least[0])} loses the least there ({least[1]['by']:.3f} below its best).")
    g = gaps(bn) if bn else {}
    if g and small in g:
        gap = mean(g[small])
        if gap >= 0:
            said.append(f"At batch {small} BN's moving statistics give a test accuracy {gap:.3f} above the test "
                        f"batches' own statistics: evaluate in eval mode (moving statistics), as the tutorial does.")
        else:
            said.append(f"At batch {small} BN's moving statistics give a test accuracy {-gap:.3f} below the test "
                        f"batches' own statistics: the moving averages are off there; re-estimating them after "
                        f"training (eval.precise_bn) fixes that and still works one example at a time.")
    return " ".join(said)


def batch_table(curves: dict, sweep: dict) -> list:
    norms = list(curves)
    sizes = sorted({b for c in curves.values() for b in c})
    lrs = {p["values"]["train.batch_size"]: p["values"].get("train.lr") for p in sweep["points"]}
    has_gap = "scratch" in curves and gaps(curves["scratch"])
    head = ["batch", "lr"] + [f"{name(n)} test acc" for n in norms]
    if has_gap:
        head += ["BN test acc, batch statistics", "BN moving minus batch statistics (per seed)"]
    lines = ["### Final test accuracy per batch size and norm", "",
             "Mean ± std over the finished seeds (n); diverged = loss or weights inf/NaN, stuck = finished with "
             f"test acc <= {STUCK_ACC} (chance 0.10), not done = not finished yet.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in sizes:
        cells = [str(b), f"{lrs.get(b, ''):g}" if lrs.get(b) is not None else "config's"]
        cells += [acc_at(curves[n][b]) if b in curves[n] else "-" for n in norms]
        if has_gap:
            p = curves["scratch"].get(b)
            diffs = gaps(curves["scratch"]).get(b, [])
            cells += [ms(finals(p, BATCH_STATS)) if p else "-",
                      f"{mean(diffs):+.3f} ± {std(diffs):.3f} (n={len(diffs)})" if diffs else "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def batch_size(sweep: dict) -> list:
    curves = grid(sweep)
    bn = curves.get("scratch", {})
    lines = ["## Answer", ""] + provisional(sweep)
    others = [hold_sentence(n, c, drop(bn, min(c)) if bn else None) for n, c in curves.items()
              if n in ("group", "layer")]
    first = (bn_sentence(bn) if bn else "The sweep has no BN (scratch) point.") + (
        "; " + "; ".join(others) if others else "") + "."
    lines += [first + (" " + gap_sentence(bn) if bn else ""), ""]
    lines += [lr_rule(sweep) + " " + RULE, "", paper_sentence(curves), ""]
    lines += ["### What it means for you", "", meaning(curves), ""]
    lines += batch_table(curves, sweep)
    if draw_batch(curves, sweep["out"]):
        lines += [f"![final test accuracy against batch size]({ACC_FIGURE})", "",
                  "Final test accuracy against batch size (log2 axis), one line per norm: mean over the finished "
                  "seeds, error bars ± std over seeds.", ""]
        if bn and gaps(bn):
            lines += [f"![BN test accuracy, moving vs batch statistics]({STATS_FIGURE})", "",
                      "BN's final test accuracy against batch size with the moving statistics (eval mode) and with "
                      "each test batch's own statistics: mean ± std over seeds.", ""]
    return lines


def errorbar(ax, curve: dict, metric: str = "test_acc", **style) -> None:
    xs = [b for b, p in curve.items() if finals(p, metric)]
    if xs:
        ax.errorbar(xs, [mean(finals(curve[b], metric)) for b in xs],
                    yerr=[std(finals(curve[b], metric)) for b in xs], capsize=3, marker="o", **style)


def batch_axis(ax, sizes: list, label: str) -> None:
    """A log2 x axis labelled with the batch sizes themselves (16, 32, ...), not powers of 2."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.minorticks_off()
    ax.set_xlabel(label)


def draw_batch(curves: dict, out) -> bool:
    if out is None or not any(finals(p) for c in curves.values() for p in c.values()):
        return False
    from ..training import plots
    plt = plots.plt
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for norm, curve in curves.items():
        errorbar(ax, curve, label=name(norm))
    sizes = sorted({b for c in curves.values() for b in c})
    batch_axis(ax, sizes, "batch size (log2 axis)")
    ax.set_ylabel("final test accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("final test accuracy vs batch size: mean ± std over seeds", fontsize=9)
    plots._save(fig, out / ACC_FIGURE)
    bn = curves.get("scratch")
    if bn and gaps(bn):
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        errorbar(ax, bn, label="moving statistics (eval mode)")
        errorbar(ax, bn, BATCH_STATS, label="each test batch's own statistics")
        batch_axis(ax, sorted(bn), "batch size (log2 axis)")
        ax.set_ylabel("BN final test accuracy")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("BN: moving vs batch statistics at test time, mean ± std over seeds", fontsize=9)
        plots._save(fig, out / STATS_FIGURE)
    return True


def batch_size_one_line(sweep: dict) -> str:
    curves = grid(sweep)
    bn = curves.get("scratch")
    f = falloff(bn) if bn else None
    if f is None:
        return "no BN run finished yet"
    small = min(bn)
    parts = [f"BN falls off below batch {f['holds_to']}" if f["short"] else f"BN holds down to batch {small}"]
    for norm in ("scratch", "group", "layer"):
        if norm in curves and small in curves[norm] and finals(curves[norm][small]):
            parts.append(f"{name(norm)} {mean(finals(curves[norm][small])):.3f} at batch {small}")
    large = max(max(c) for c in curves.values())
    fell = [n for n, c in curves.items() if large in c and large != best_batch(c) and (drop(c, large) or {}).get("short")]
    if fell:
        parts.append(f"at batch {large} (lr {large / 256:g}) " + ", ".join(
            f"{name(n)} {mean(finals(curves[n][large])):.3f}" for n in fell if finals(curves[n][large])))
    n = not_done(sweep)
    return ", ".join(parts) + (f" (provisional: {n} runs not done)" if n else "")


# --- norm_kinds -----------------------------------------------------------------------------------------

def by_batch(sweep: dict) -> dict:
    """{batch size: {norm: point}}, largest batch first."""
    out = {}
    for norm, curve in grid(sweep).items():
        for b, p in curve.items():
            out.setdefault(b, {})[norm] = p
    return dict(sorted(out.items(), reverse=True))


def speed(point: dict) -> list:
    """examples/s of each finished run: its training steps only, over every epoch (stats.examples_per_sec)."""
    return [examples_per_sec(r["rows"]) for r in finished(point["runs"])
            if r["rows"] and all("examples_per_sec" in row for row in r["rows"])]


def choice_sentence(batch, norms: dict) -> str:
    ranked = sorted(((mean(finals(p)), n) for n, p in norms.items() if finals(p)), reverse=True)
    if not ranked:
        return f"At batch {batch}: no run finished yet."
    top = ranked[0][1]
    best = finals(norms[top])
    within = [n for n, p in norms.items() if n != top and falls_short(p, best) is False]
    short = [n for n, p in norms.items() if n != top and falls_short(p, best)]
    undone = [n for n in norms if n != top and falls_short(norms[n], best) is None]
    said = f"At batch {batch} {'the best so far is' if undone else 'use'} **{name(top)}**: {acc_at(norms[top])}"
    if within:
        said += "; within spread of it: " + ", ".join(f"{name(n)} {acc_at(norms[n])}" for n in within)
    if short:
        said += "; short of it: " + ", ".join(f"{name(n)} {acc_at(norms[n])}" for n in short)
    if undone:
        said += "; not done yet: " + ", ".join(name(n) for n in undone)
    return said + ("." if within or short or undone else " (the only norm finished).")


def how_measured(sweep: dict) -> str:
    """How many runs shared the machine while these were timed, from the sweep's own record (sweep.json)."""
    path = sweep["out"] / "sweep.json" if sweep.get("out") else None
    calls = json.loads(path.read_text()).get("provenance", {}).get("invocations", []) if path and path.is_file() else []
    setups = sorted({(c["jobs"], c["threads_per_run"]) for c in calls if "jobs" in c})
    if not setups:
        return ("How many runs shared the machine while these were timed is not recorded (yet: sweep.json records "
                "it when a sweep command ends).")
    said = " and ".join(f"{j} runs side by side, {t} torch thread(s) each" if j > 1 else
                        f"one run at a time, {t} torch thread(s)" for j, t in setups)
    shared = (": the runs shared the machine's cores, so these figures compare the norms with each other, not the "
              "speed one run would get alone" if any(j > 1 for j, _ in setups) else "")
    return f"Measured with {said} (sweep.json){shared}."


def throughput_lines(sweep: dict, table: dict) -> list:
    lines = ["### Throughput", "",
             "examples/s of the training steps (metrics.jsonl `examples_per_sec`, all epochs: examples over step "
             "time), mean ± std over the finished seeds, and relative to no norm at the same batch size. "
             + how_measured(sweep), "", "| batch | norm | examples/s | relative to no norm |", "|---|---|---|---|"]
    for b, norms in table.items():
        base = speed(norms["none"]) if "none" in norms else []
        for n, p in norms.items():
            s = speed(p)
            d = describe(s)
            cell = f"{d['mean']:.0f} ± {d['std']:.0f} (n={d['n']})" if s else "n/a"
            rel = f"{mean(s) / mean(base):.2f}x" if s and base else "n/a"
            lines.append(f"| {b} | {name(n)} | {cell} | {rel} |")
    return lines + [""]


def cost_sentence(table: dict) -> str:
    parts = []
    for b, norms in table.items():
        base = speed(norms["none"]) if "none" in norms else []
        costs = [f"{name(n)} {mean(speed(p)) / mean(base):.2f}x" for n, p in norms.items()
                 if n != "none" and speed(p) and base]
        if costs:
            parts.append(f"at batch {b} ({mean(base):.0f} examples/s without a norm): " + ", ".join(costs))
    if not parts:
        return "Throughput: no finished run with examples/s at both a norm and no norm yet."
    return "Throughput relative to no norm, " + "; ".join(parts) + "."


def norm_kinds(sweep: dict) -> list:
    table = by_batch(sweep)
    lines = ["## Answer", ""] + provisional(sweep)
    lines += [" ".join(choice_sentence(b, norms) for b, norms in table.items()) + " " + cost_sentence(table), ""]
    lines += [lr_rule(sweep) + " " + RULE, ""]
    lines += ["### What it means for you", "", kinds_meaning(table), ""]
    return lines + throughput_lines(sweep, table)


def kinds_meaning(table: dict) -> str:
    said = []
    for b, norms in table.items():
        ranked = sorted(((mean(finals(p)), n) for n, p in norms.items() if finals(p)), reverse=True)
        if not ranked:
            continue
        top = ranked[0][1]
        best = finals(norms[top])
        tied = [n for n, p in norms.items() if n != top and falls_short(p, best) is False]
        if tied:
            fastest = max([top] + tied, key=lambda n: mean(speed(norms[n])) if speed(norms[n]) else 0.0)
            group = [name(n) for n in [top] + tied]
            said.append(f"At batch {b}, {', '.join(group[:-1])} and {group[-1]} are within the seeds' spread of each "
                        f"other: pick on speed or convenience ({name(fastest)} is the fastest of them).")
        elif all(falls_short(p, best) is None for n, p in norms.items() if n != top):
            said.append(f"At batch {b}, only {name(top)} has finished runs so far.")
        else:
            undone = [name(n) for n, p in norms.items() if falls_short(p, best) is None]
            said.append(f"At batch {b}, {name(top)} is ahead of every other norm "
                        + (f"done so far (not yet: {', '.join(undone)}) " if undone else "")
                        + "beyond the seeds' spread: use it.")
        bn = norms.get("scratch") or norms.get("torch")
        moving, batch_stats = (finals(bn), finals(bn, BATCH_STATS)) if bn else ([], [])
        if batch_stats and beyond_noise(batch_stats, moving) and mean(batch_stats) > mean(moving):
            said.append(f"BN's own figure at batch {b} is held down by its moving statistics: with each test batch's "
                        f"own statistics it reaches {ms(batch_stats)} against {ms(moving)} (the test_stats study "
                        f"shows how to get there with the moving statistics).")
    return " ".join(said) or "Not enough finished runs to say yet."


def norm_kinds_one_line(sweep: dict) -> str:
    parts = []
    for b, norms in by_batch(sweep).items():
        ranked = sorted(((mean(finals(p)), n) for n, p in norms.items() if finals(p)), reverse=True)
        if ranked:
            top = ranked[0][1]
            base = speed(norms["none"]) if "none" in norms else []
            cost = (f", {mean(speed(norms[top])) / mean(base):.2f}x no norm's examples/s"
                    if top != "none" and base and speed(norms[top]) else "")
            parts.append(f"batch {b}: {name(top)} {ranked[0][0]:.3f}{cost}")
    n = not_done(sweep)
    return ("; ".join(parts) or "no run finished yet") + (f" (provisional: {n} runs not done)" if n else "")


ANSWERS = {"batch_size": batch_size, "norm_kinds": norm_kinds}
ONE_LINE = {"batch_size": batch_size_one_line, "norm_kinds": norm_kinds_one_line}
