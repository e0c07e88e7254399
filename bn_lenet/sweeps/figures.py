"""A sweep's figures, readable at a glance: at most PER_PANEL lines in a panel (small multiples beyond that),
legends beside the data rather than on it, log axes over decades, integer ticks for counts.

    curves.png               per-epoch curves per point: mean over the finished seeds, band min..max
    <metric>_vs_<key>.png    a metric's steady figure against each numeric swept key, mean ± std over seeds
    steps_<file>.png         figures recorded along the steps (curve.jsonl, landscape.jsonl) against the step,
                             mean over the finished seeds, band min..max (Santurkar et al.'s style)
"""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .analysis import metric_statistic, named_metrics  # noqa: E402
from .stats import among, by_seed, curve_name, describe, field, finished  # noqa: E402
from .sentences import metric_label, point_label  # noqa: E402

PER_PANEL = 6


def chunks(items: list, size: int = PER_PANEL) -> list:
    """Split into the fewest panels of at most ``size``, evenly (none for no items)."""
    if not items:
        return []
    n = math.ceil(len(items) / size)
    step = math.ceil(len(items) / n)
    return [items[i:i + step] for i in range(0, len(items), step)]


def panel_groups(sweep: dict) -> list:
    """Points in panels: by the first swept key's value where that keeps panels small, else in even chunks."""
    points = [p for p in sweep["points"] if finished(p["runs"])]
    keys = sweep["keys"]
    if len(points) <= PER_PANEL or not keys:
        return chunks(points)
    by_first = {}
    for p in points:
        by_first.setdefault(repr(p["values"].get(keys[0])), []).append(p)
    return [c for group in by_first.values() for c in chunks(group)]


def _save(fig, path) -> None:
    fig.savefig(path, dpi=100, bbox_inches="tight")  # "tight" also makes room for the legends below the panels
    plt.close(fig)


def curves(sweep: dict, metrics: list, path) -> bool:
    """One row per metric, one column per panel of points."""
    panels = panel_groups(sweep)
    if not panels:
        return False
    fig, axes = plt.subplots(len(metrics), len(panels), figsize=(4.2 * len(panels) + 1.5, 2.8 * len(metrics)),
                             squeeze=False)
    for col, points in enumerate(panels):
        for row, metric in enumerate(metrics):
            ax = axes[row][col]
            for p in points:
                runs = [r["rows"] for r in finished(p["runs"])]
                epochs = sorted({row_["epoch"] for rows in runs for row_ in rows if row_.get(metric) is not None})
                if not epochs:
                    continue
                per_epoch = [[row_[metric] for rows in runs for row_ in rows if row_["epoch"] == e
                              and row_.get(metric) is not None] for e in epochs]
                mean = [sum(v) / len(v) for v in per_epoch]
                (line,) = ax.plot(epochs, mean, marker="." if len(epochs) < 4 else None,
                                  label=point_label(sweep, p["id"]))
                ax.fill_between(epochs, [min(v) for v in per_epoch], [max(v) for v in per_epoch],
                                color=line.get_color(), alpha=0.2, lw=0)
            ax.set_title(metric_label(metric, "final").removesuffix(", final"), fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(True, alpha=0.3)
            ax.tick_params(labelsize=7)
            if "loss" in metric and all(v > 0 for line in ax.get_lines() for v in line.get_ydata()) and \
                    _spans_decades(ax):
                ax.set_yscale("log")
        axes[-1][col].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=1, frameon=False)
    fig.suptitle(f"{sweep['spec']['name']}: per epoch, mean over seeds (band: min..max)", fontsize=10)
    fig.subplots_adjust(hspace=0.5, wspace=0.3)  # room for each panel's title under the x label above it
    _save(fig, path)
    return True


def _spans_decades(ax) -> bool:
    values = [v for line in ax.get_lines() for v in line.get_ydata()]
    return bool(values) and max(values) / min(values) >= 30


def against(sweep: dict, key: str, metric: str, statistic: str, path) -> bool:
    """The metric's figure against a numeric swept key; one series per combination of the other keys, at most
    PER_PANEL series in a panel; a red x at the bottom per diverged run."""
    series = {}
    zipped = list(sweep["spec"].get("zip") or {})
    along = zipped if key in zipped else [key]  # keys zipped together move along the same axis
    for p in sweep["points"]:
        if key not in p["values"]:
            continue
        label = point_label(sweep, p["id"], hide=along) if set(p["values"]) - set(along) else "all"
        values = list(by_seed(p["runs"], metric, statistic).values())
        diverged = sum(r["status"] == "diverged" for r in p["runs"])
        series.setdefault(label, []).append((p["values"][key], values, diverged))
    xs = sorted({x for pts in series.values() for x, _, _ in pts})
    if len(xs) < 2:
        return False
    panels = chunks(list(series.items()))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) + 1.5, 3.8), squeeze=False, sharey=True)
    for ax, panel in zip(axes[0], panels):
        for label, pts in panel:
            pts = sorted(pts, key=lambda t: t[0])
            shown = [(x, describe(v)) for x, v, _ in pts if v]
            if shown:
                bar = ax.errorbar([x for x, _ in shown], [d["mean"] for _, d in shown],
                                  yerr=[d["std"] for _, d in shown], marker="o", ms=4, capsize=3, label=label)
                for x, v, _ in pts:
                    ax.scatter([x] * len(v), v, s=8, color=bar[0].get_color(), alpha=0.4)
            for x, _, diverged in pts:
                if diverged:
                    ax.scatter([x] * diverged, [0.03 * (k + 1) for k in range(diverged)], marker="x", s=25,
                               color="tab:red", transform=ax.get_xaxis_transform())
        if min(xs) > 0 and max(xs) / min(xs) >= 20:  # over a decade or more: a log axis
            ax.set_xscale("log")
        if all(float(x).is_integer() for x in xs):
            ax.set_xticks(xs, [f"{int(x)}" for x in xs])
            ax.minorticks_off()
        ax.set_xlabel(key, fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    axes[0][0].set_ylabel(metric_label(metric, statistic), fontsize=8)
    with_key = f" (with {', '.join(k for k in along if k != key)})" if len(along) > 1 else ""
    fig.suptitle(f"{metric_label(metric, statistic)} against {key}{with_key}: mean ± std over seeds, dots: seeds, "
                 f"x: a diverged run", fontsize=9)
    _save(fig, path)
    return True


def along_steps(sweep: dict, source: str, layout: list, path, targets=None) -> bool:
    """Figures from each run's per-step rows (source: "curve" or "landscape") against the step: one panel per
    metric of ``layout`` (rows of metrics) and group of points; a dashed line at each target of a metric."""
    groups = panel_groups(sweep)
    if not groups or not layout:
        return False
    ncols = max(len(r) for r in layout) * len(groups)
    fig, axes = plt.subplots(len(layout), ncols, figsize=(4.2 * ncols + 1.5, 2.8 * len(layout)), squeeze=False)
    for i, metrics in enumerate(layout):
        for j, metric in enumerate(metrics):
            for g, points in enumerate(groups):
                ax = axes[i][j * len(groups) + g]
                for p in points:
                    runs = [{row["step"]: field(row, curve_name(r, metric)) for row in r.get(source, [])}
                            for r in finished(p["runs"])]
                    steps = sorted({s for run in runs for s, v in run.items() if v is not None})
                    values = [[run[s] for run in runs if run.get(s) is not None] for s in steps]
                    if not steps:
                        continue
                    (line,) = ax.plot(steps, [sum(v) / len(v) for v in values], label=point_label(sweep, p["id"]))
                    ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values],
                                    color=line.get_color(), alpha=0.2, lw=0)
                for t in (targets or {}).get(metric, []):
                    ax.axhline(t, color="gray", ls="--", lw=0.8)
                ax.set_title(metric_label(metric, "final").removesuffix(", final"), fontsize=9)
                ax.set_xlabel("training step", fontsize=8)
                ax.grid(True, alpha=0.3)
                ax.tick_params(labelsize=7)
                values = [v for line in ax.get_lines()[:len(points)] for v in line.get_ydata()]
                bounded = "cos" in metric or "acc" in metric  # a cosine or an accuracy: never a log axis
                if values and min(values) > 0 and _spans_decades(ax) and not bounded:
                    ax.set_yscale("log")
        for j in range(len(metrics) * len(groups), ncols):
            axes[i][j].axis("off")
    for g in range(len(groups)):
        axes[-1][g].legend(*axes[0][g].get_legend_handles_labels(), fontsize=7, loc="upper center",
                           bbox_to_anchor=(0.5, -0.3), ncol=1, frameon=False)
    fig.suptitle(f"{sweep['spec']['name']}: along the training steps ({source}.jsonl), mean over seeds "
                 f"(band: min..max)", fontsize=10)
    fig.subplots_adjust(hspace=0.6, wspace=0.3, top=0.82 if len(layout) == 1 else 0.93)
    _save(fig, path)
    return True


# --- which figures a report gets -------------------------------------------------------------------------

def draw(sweep: dict) -> list:
    """Draw the figures; returns [(file name, caption)]."""
    out, made = sweep["out"], []
    metrics = list(dict.fromkeys(m for m in ("loss", "test_acc", "test_acc_precise") if m in sweep["metrics"]))
    if curves(sweep, metrics, out / "curves.png"):
        made.append(("curves.png", "Per-epoch figures per point: mean over the finished seeds, band min..max."))
    made += draw_steps(sweep)
    zipped = list(sweep["spec"].get("zip") or {})
    for key in [k for k in sweep["keys"] if k not in zipped[1:]]:  # keys zipped with the first add no new axis
        values = [p["values"][key] for p in sweep["points"] if key in p["values"]]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            continue  # only a numeric key gets an x axis
        for metric in sweep["lead"]:
            name, statistic = metric_statistic(sweep, metric)
            file = f"{name}_vs_{key.rpartition('.')[2]}.png"
            if name in sweep["metrics"] and against(sweep, key, name, statistic, out / file):
                made.append((file, f"{metric_label(name, statistic)} against {key}: mean ± std over the "
                                   f"finished seeds, one dot per seed, a red x per diverged run."))
    return made


def draw_steps(sweep: dict) -> list:
    """The figures recorded along the steps: the learning curve (with the targets of any steps-to-target
    metric dashed), the loss landscape, and internal covariate shift per layer."""
    report, out, made = sweep["spec"]["report"], sweep["out"], []
    targets = {}
    for name, _, statistic in (m.partition(":") for m in named_metrics(report)):
        if statistic.startswith("reach"):
            targets.setdefault(name, []).append(float(statistic[5:]))
    curve = sweep["steps"]["curve"]
    layout = [[m for m in ("test_acc_batch_stats" if "test_acc_batch_stats" in curve else "test_acc", "train_loss")
               if m in curve]]
    if curve and along_steps(sweep, "curve", layout, out / "steps_curve.png", targets):
        made.append(("steps_curve.png", "The learning curve every log.eval_every of an epoch (curve.jsonl): test "
                     "accuracy (with each test batch's own statistics where the network has BN) and the training "
                     "loss since the row before; mean over the finished seeds, band min..max; dashed: the targets."))
    land = sweep["steps"]["landscape"]
    smooth = [[m for m in ("loss_max-loss_min", "grad_change", "beta_smoothness")
               if among(m, land)]]
    if land and along_steps(sweep, "landscape", smooth, out / "steps_landscape.png"):
        made.append(("steps_landscape.png", "Along the SGD step, every log.landscape_every steps (landscape.jsonl): "
                     "the loss variation (largest minus least loss at 0.25 to 4 times the step), the gradient's "
                     "change (gradient predictiveness: small = predictive) and the effective beta-smoothness; "
                     "mean over the finished seeds, band min..max."))
    layers = list(dict.fromkeys(f.partition(".")[2] for f in land if f.startswith("ics_l2.")))
    ics = [[f"ics_l2.{layer}", f"ics_cos.{layer}"] for layer in layers]
    if ics and along_steps(sweep, "landscape", ics, out / "steps_ics.png"):
        made.append(("steps_ics.png", "Internal covariate shift per layer (Santurkar et al.'s definition): the l2 "
                     "distance and the cosine between a layer's gradient before and after the layers below it take "
                     "their step; mean over the finished seeds, band min..max."))
    return made
