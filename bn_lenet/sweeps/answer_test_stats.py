"""The test_stats study's answer (configs/sweeps/test_stats.toml): why the test accuracy swings from epoch to
epoch, and which setting gives a stable final number. Every figure and judging sentence is computed from the
runs.

Three test accuracies per epoch of the same weights: with the moving statistics (``test_acc``, what the
tutorial reports), with statistics re-estimated over the training set with the weights fixed (precise BN,
``test_acc_precise``) and with each test batch's own statistics (``test_acc_batch_stats``). If the swing were
the moving statistics lagging behind the weights, the two others would not swing; if it is the weights moving
(lr 1.0), all three swing alike and the swing shrinks at a lower or decaying lr.

    swing   the sample std of a run's test accuracy over its last SWING_EPOCHS epochs, averaged over seeds
    spread  the sample std over seeds of the final test accuracy
"""

import statistics

from .stats import describe, final_values, finished

NAME = "test_stats"
SWING_EPOCHS = 5
TARGET_MEAN, TARGET_STD = 0.88, 0.005
METRICS = [("test_acc", "moving statistics"), ("test_acc_precise", "precise BN"),
           ("test_acc_batch_stats", "batch statistics")]
MOSTLY = 0.5   # precise BN leaves at most half the swing: the statistics; at least STAYS of it: the weights
STAYS = 0.8
FIGURE = "test_stats_epochs.png"


def run_swing(run: dict, metric: str):
    values = [r.get(metric) for r in run["rows"][-SWING_EPOCHS:]]
    if len(values) < 2 or any(v is None for v in values):
        return None
    return statistics.stdev(values)


def point_stats(point: dict) -> dict:
    """{metric: {"swing": describe(per-seed swings), "final": describe(final values)}} for the metrics recorded."""
    out = {}
    for metric, _ in METRICS:
        swings = [s for s in (run_swing(r, metric) for r in finished(point["runs"])) if s is not None]
        if swings:
            out[metric] = {"swing": describe(swings), "final": describe(final_values(point["runs"], metric))}
    return out


def label(point: dict) -> str:
    v = point["values"]
    parts = [f"lr {v['train.lr']:g}" if "train.lr" in v else "",
             f"momentum {v['bn.momentum']:g}" if "bn.momentum" in v else "",
             f"{v['train.lr_schedule']} schedule" if v.get("train.lr_schedule", "constant") != "constant" else ""]
    return ", ".join(p for p in parts if p) or point["id"]


def find(points: list, lr: float, momentum=None, schedule="constant"):
    for p in points:
        v = p["values"]
        if (v.get("train.lr") == lr and v.get("train.lr_schedule", "constant") == schedule
                and (momentum is None or v.get("bn.momentum") == momentum)):
            return p
    return None


def meets(d: dict, seeds: int) -> bool:
    return d.get("n", 0) >= seeds and d["mean"] >= TARGET_MEAN and d["std"] <= TARGET_STD


def shortfall(d: dict) -> float:
    """How far a final figure is from the target, in accuracy: the mean's gap plus the std's excess."""
    return max(0.0, TARGET_MEAN - d["mean"]) + max(0.0, d["std"] - TARGET_STD)


def answer(sweep: dict) -> list:
    points = sweep["points"]
    stats = {p["id"]: point_stats(p) for p in points}
    seeds = max(len(p["runs"]) for p in points)
    not_done = sum(r["status"] not in ("finished", "diverged") for r in sweep["runs"])
    lines = ["## Answer", ""]
    if not_done:
        lines += [f"**Provisional: {not_done} of {len(sweep['runs'])} runs are not done**; the figures below are over "
                  "the runs done so far. Rerun the sweep's command to complete them.", ""]
    lines += [f"Swing = the std of a run's test accuracy over its last {SWING_EPOCHS} epochs, averaged over seeds; "
              "spread = the std over seeds of the final test accuracy (both sample std, n - 1).", ""]
    lines += [" ".join(why_sentences(points, stats) + target_sentences(points, stats, seeds)), ""]
    lines += meaning(points, stats, seeds)
    lines += stats_table(points, stats)
    draw(points, sweep["out"])
    lines += [f"![test accuracy per epoch, three statistics]({FIGURE})", "",
              "Test accuracy per epoch for each point: moving statistics, precise BN and batch statistics; line: "
              "mean over the finished seeds, band: min..max.", ""]
    return lines


def swing_of(stats: dict, point, metric: str):
    d = stats.get(point["id"], {}).get(metric) if point else None
    return d["swing"]["mean"] if d else None


def why_sentences(points: list, stats: dict) -> list:
    ref = find(points, 1.0, 0.9) or find(points, 1.0)
    moving, precise, batch = (swing_of(stats, ref, m) for m, _ in METRICS)
    if moving is None or precise is None:
        return ["The swing cannot be split: the reference point (lr 1, momentum 0.9) has no finished run with both "
                "the moving-statistics and the precise-BN test accuracy."]
    share = precise / moving if moving else float("nan")
    verdict = ("mostly the moving statistics lagging: precise BN removes most of it" if share <= MOSTLY else
               "mostly the weights moving: it stays when the statistics are re-estimated" if share >= STAYS else
               "both: re-estimating the statistics removes part of it, the rest is the weights moving")
    said = [f"At {label(ref)} the test accuracy swings by {moving:.4f} with the moving statistics, {precise:.4f} with "
            f"precise BN" + (f" and {batch:.4f} with batch statistics" if batch is not None else "")
            + f" (precise BN keeps {share:.0%} of the swing): the swing is **{verdict}**"
            + (f"; the {precise:.4f} left with precise BN (statistics re-estimated for the same weights) is the "
               "weights' own movement." if share < STAYS else ".")]
    low = find(points, 0.1, 0.9) or find(points, 0.1)
    cos = find(points, 1.0, 0.9, "cosine") or find(points, 1.0, None, "cosine")
    for other in (low, cos):
        s = swing_of(stats, other, "test_acc_precise")
        if s is not None:
            said.append(f"With precise BN at {label(other)} it is {s:.4f}"
                        + (f" ({s / precise:.2f}x that at {label(ref)})." if precise else "."))
    slow = find(points, 1.0, 0.99)
    s = swing_of(stats, slow, "test_acc")
    if s is not None:
        said.append(f"A slower moving average (momentum 0.99) swings by {s:.4f} with the moving statistics "
                    + (f"({s / moving:.2f}x momentum 0.9's)." if moving else "."))
    return said


def candidates(points: list, stats: dict) -> list:
    """Every (point, metric) with a final figure: [(point, metric, describe of the final values)]."""
    return [(p, m, stats[p["id"]][m]["final"]) for p in points for m, _ in METRICS
            if m in stats.get(p["id"], {}) and stats[p["id"]][m]["final"].get("n")]


def target_sentences(points: list, stats: dict, seeds: int) -> list:
    found = [(p, m, d) for p, m, d in candidates(points, stats) if meets(d, seeds)]
    names = dict(METRICS)
    goal = f"final test accuracy mean >= {TARGET_MEAN} with std <= {TARGET_STD} over {seeds} seeds"
    if found:
        return [f"The {goal} is met by: " + "; ".join(
            f"**{label(p)}** with {names[m]} ({d['mean']:.4f} ± {d['std']:.4f}, n={d['n']})" for p, m, d in found) + "."]
    close = sorted(candidates(points, stats), key=lambda c: shortfall(c[2]))
    if not close:
        return [f"No run finished, so no setting can be checked against the {goal}."]
    p, m, d = close[0]
    misses = [f"mean {d['mean']:.4f} < {TARGET_MEAN}" if d["mean"] < TARGET_MEAN else "",
              f"std {d['std']:.4f} > {TARGET_STD}" if d["std"] > TARGET_STD else "",
              f"only {d['n']} of {seeds} seeds finished" if d["n"] < seeds else ""]
    said = [f"No setting meets the {goal}; the closest is **{label(p)}** with {names[m]}: {d['mean']:.4f} ± "
            f"{d['std']:.4f} (n={d['n']}; misses: {', '.join(x for x in misses if x)})."]
    if d["std"] > TARGET_STD:
        swing = stats[p["id"]][m]["swing"]["mean"]
        said.append(f"Why the spread: each of its runs swings by {swing:.4f} over its last {SWING_EPOCHS} epochs, "
                    + ("of the size of the seeds' spread, so the last epoch catches each run at a different point of "
                       "its swing." if swing >= d["std"] / 2 else
                       "far less than the seeds' spread, so the runs are steady but the seeds end at different "
                       "accuracies."))
    if d["mean"] < TARGET_MEAN:
        top = max(c[2]["mean"] for c in close)
        said.append(f"Why the mean: the best mean of any setting and statistic here is {top:.4f}"
                    + (f", below {TARGET_MEAN}." if top < TARGET_MEAN else
                       f"; the settings at or above {TARGET_MEAN} end further apart over seeds."))
    return said


def meaning(points: list, stats: dict, seeds: int) -> list:
    said = []
    ref = find(points, 1.0, 0.9) or find(points, 1.0)
    moving, precise = swing_of(stats, ref, "test_acc"), swing_of(stats, ref, "test_acc_precise")
    if moving is not None and precise is not None:
        if precise / moving >= STAYS:
            said.append("Do not blame the moving statistics for the tutorial's jumpy test curve, nor fix it with "
                        "precise BN: at lr 1.0 the weights themselves still move a lot from epoch to epoch, so a "
                        "single epoch's test accuracy is a noisy sample.")
        elif precise / moving <= MOSTLY:
            said.append("The tutorial's jumpy test curve is mostly the moving statistics lagging behind the "
                        "weights: re-estimate them after training (precise BN) before you report a number.")
        else:
            said.append("Both the moving statistics and the weights make the tutorial's test curve jump: "
                        "re-estimating the statistics helps, and a decaying lr removes the rest.")
    best = sorted(candidates(points, stats), key=lambda c: shortfall(c[2]))
    if best:
        p, m, d = best[0]
        names = dict(METRICS)
        if meets(d, seeds):
            said.append(f"For a stable final number: use {label(p)} and report the test accuracy with "
                        f"{names[m]}; over {d['n']} seeds it ends at {d['mean']:.3f} ± {d['std']:.4f}.")
        else:
            said.append(f"The most stable final number here is {label(p)} with {names[m]} ({d['mean']:.3f} ± "
                        f"{d['std']:.4f}); report a mean over seeds, not one run's last epoch.")
    ref_final = stats.get(ref["id"], {}).get("test_acc") if ref else None
    if ref_final:
        d = ref_final["final"]
        said.append(f"The tutorial's setting (lr 1.0, constant) ends at {d['mean']:.3f} ± {d['std']:.3f} "
                    f"({d['min']:.3f}..{d['max']:.3f}) over {d['n']} seeds: one run's number can land anywhere "
                    "in that range.")
    return ["### What it means for you", "", " ".join(said), ""] if said else []


def stats_table(points: list, stats: dict) -> list:
    present = [(m, n) for m, n in METRICS if any(m in s for s in stats.values())]
    lines = ["### Swing and spread per point", "",
             f"Per test-time statistic: swing (std over the last {SWING_EPOCHS} epochs, mean over seeds) and the "
             "final test accuracy, mean ± std over seeds (n).", "",
             "| point | " + " | ".join(f"{n}: swing | {n}: final" for _, n in present) + " |",
             "|---|" + "---|---|" * len(present)]
    for p in points:
        cells = []
        for m, _ in present:
            d = stats[p["id"]].get(m)
            cells += [f"{d['swing']['mean']:.4f}", f"{d['final']['mean']:.4f} ± {d['final']['std']:.4f} "
                      f"(n={d['final']['n']})"] if d else ["n/a", "n/a"]
        lines.append(f"| {label(p)} | " + " | ".join(cells) + " |")
    return lines + [""]


def draw(points: list, out) -> None:
    """One panel per point, the three test accuracies per epoch: mean over finished seeds, min..max band."""
    if out is None:
        return
    from ..training import plots
    plt = plots.plt
    shown = [p for p in points if finished(p["runs"])]
    if not shown:
        return
    fig, axes = plt.subplots(1, len(shown), figsize=(max(6.0, 3.6 * len(shown)), 3.6), sharey=True, squeeze=False)
    for ax, p in zip(axes[0], shown):
        runs = finished(p["runs"])
        for (m, name), color in zip(METRICS, ("tab:blue", "tab:green", "tab:orange")):
            if any(m not in r for run in runs for r in run["rows"]):
                continue
            epochs = [r["epoch"] for r in runs[0]["rows"]]
            per_epoch = list(zip(*[[r[m] for r in run["rows"]] for run in runs]))
            ax.plot(epochs, [statistics.fmean(v) for v in per_epoch], color=color, label=name)
            ax.fill_between(epochs, [min(v) for v in per_epoch], [max(v) for v in per_epoch], color=color,
                            alpha=0.2, lw=0)
        ax.set_title(f"{label(p)} ({len(runs)} seeds)", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("test accuracy per epoch with three test-time statistics", fontsize=9)
    plots._save(fig, out / FIGURE)


def one_line(sweep: dict) -> str:
    """The index's line: the swing with the moving statistics vs precise BN at lr 1, and the setting that meets
    the target (or the closest), each with its key number."""
    points = sweep["points"]
    stats = {p["id"]: point_stats(p) for p in points}
    seeds = max(len(p["runs"]) for p in points)
    not_done = sum(r["status"] not in ("finished", "diverged") for r in sweep["runs"])
    parts = []
    ref = find(points, 1.0, 0.9) or find(points, 1.0)
    moving, precise = swing_of(stats, ref, "test_acc"), swing_of(stats, ref, "test_acc_precise")
    if moving and precise is not None:
        share = precise / moving
        cause = ("mostly the moving statistics" if share <= MOSTLY else "mostly the weights" if share >= STAYS else
                 "the statistics and the weights")
        parts.append(f"lr {ref['values']['train.lr']:g} swing {moving:.3f} (moving) vs {precise:.3f} (precise BN): "
                     f"{cause}")
    names = dict(METRICS)
    found = [(p, m, d) for p, m, d in candidates(points, stats) if meets(d, seeds)]
    target = f"mean >= {TARGET_MEAN}, std <= {TARGET_STD}"
    if found:
        p, m, d = max(found, key=lambda c: c[2]["mean"])
        parts.append(f"{target} met by {label(p)} ({d['mean']:.3f} ± {d['std']:.3f}, {names[m]})")
    elif candidates(points, stats):
        p, m, d = min(candidates(points, stats), key=lambda c: shortfall(c[2]))
        parts.append(f"{target} not met; closest {label(p)} ({d['mean']:.3f} ± {d['std']:.3f}, {names[m]})")
    text = "; ".join(parts) or "no run finished yet"
    return text + (f" (provisional: {not_done} runs not done)" if not_done else "")
