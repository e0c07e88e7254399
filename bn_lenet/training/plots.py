"""Figures: learning curves (d2l style), gamma/beta per channel, and comparisons over seeds."""

import sys

import matplotlib

if "ipykernel" not in sys.modules:  # in a notebook, keep its inline backend: the user's own figures show there
    matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _save(fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves(rows: list, path, title: str = "") -> None:
    """Train loss, train acc and test acc against epoch, on one axis, as the tutorial's animator draws them."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    draw_curves(ax, rows, title)
    _save(fig, path)


def draw_curves(ax, rows: list, title: str = "") -> None:
    """curves() on a given axis (also the notebook's live plot, live_plot.py)."""
    epochs = [r["epoch"] for r in rows]
    ax.plot(epochs, [r["loss"] for r in rows], "-", label="train loss")
    ax.plot(epochs, [r["train_acc"] for r in rows], "m--", label="train acc")
    ax.plot(epochs, [r["test_acc"] for r in rows], "g-.", label="test acc")
    precise = [r.get("test_acc_precise") for r in rows]
    if any(v is not None for v in precise):  # eval.precise_bn_epochs = "last": one point, drawn as a dot
        ax.plot(epochs, precise, "k:", marker="o" if sum(v is not None for v in precise) == 1 else None,
                label="test acc (precise BN)")
    ax.set_xlabel("epoch")
    ax.set_xlim(min(epochs) - 0.2 if len(epochs) == 1 else min(epochs), max(epochs) + (0.2 if len(epochs) == 1 else 0))
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=9)


def bn_params(params: dict, path, title: str = "") -> None:
    """Gamma (top row) and beta (bottom row) per channel, one column per BN layer."""
    names = list(params)
    if not names:
        return  # a LeNet without BN (norm = none): nothing to draw
    fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 4.5), squeeze=False)
    for col, name in enumerate(names):
        for row, key in enumerate(("gamma", "beta")):
            values = params[name][key]
            ax = axes[row][col]
            ax.bar(range(len(values)), values, color="tab:blue" if key == "gamma" else "tab:orange")
            ax.axhline(1.0 if key == "gamma" else 0.0, color="gray", lw=0.8, ls="--")  # the initial value
            ax.set_title(f"{name} {key}", fontsize=9)
            ax.set_xlabel("channel", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


# --- comparisons over seeds (sweeps: bn_lenet/sweeps/report.py, the seed study: sweeps/study_report.py) --

COLORS = {"scratch": "tab:blue", "torch": "tab:orange", "none": "tab:gray"}
LABELS = {"scratch": "scratch BN", "torch": "nn.BatchNorm", "none": "no BN"}


CURVE_KEYS = [("loss", "train loss"), ("train_acc", "train acc"), ("test_acc", "test acc, moving statistics"),
              ("test_acc_precise", "test acc, re-estimated statistics")]


def band_curves(curves: dict, path, title: str = "", keys=None, labels=None) -> None:
    """Per-epoch metrics against epoch: per group (a BN variant, a sweep's point) the mean over seeds and a
    min..max band, one panel per metric.

    ``curves`` is {group: [rows of one run, ...]} (finished runs only, all with the same epochs); ``keys``
    [(metric, panel title), ...] (default: loss, train acc, test acc moving and re-estimated); ``labels``
    {group: legend label} (default: the BN variant's name, else the group itself)."""
    keys = keys or CURVE_KEYS
    labels = labels or {}
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.8), sharey=False, squeeze=False)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, label) in zip(axes[0], keys):
        for i, (group, runs) in enumerate(curves.items()):
            if any(key not in r for rows in runs for r in rows):
                continue  # no BN: no re-estimated statistics
            color = COLORS.get(group, cycle[i % len(cycle)])
            epochs = [r["epoch"] for r in runs[0]]
            per_epoch = list(zip(*[[r[key] for r in rows] for rows in runs]))
            mean = [sum(v) / len(v) for v in per_epoch]
            ax.plot(epochs, mean, color=color, label=f"{labels.get(group, LABELS.get(group, group))} "
                    f"(mean of {len(runs)})")
            ax.fill_between(epochs, [min(v) for v in per_epoch], [max(v) for v in per_epoch],
                            color=color, alpha=0.25, lw=0)
        ax.set_title(label + "\n(band: min..max over seeds)", fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8 if len(curves) <= 6 else 6)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def metric_against(series: dict, path, xlabel: str, ylabel: str, log_x: bool = False, title: str = "") -> None:
    """A final metric against a swept value, one line per series: {label: [(x, [value per finished seed],
    diverged count), ...]}. Line: mean; error bar: std over seeds; dots: the seeds; red x at the bottom:
    one per diverged run (it has no final value)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        points = sorted(points, key=lambda p: p[0])
        shown = [(x, v) for x, v, _ in points if v]
        if shown:
            xs = [x for x, _ in shown]
            means = [sum(v) / len(v) for _, v in shown]
            stds = [(sum((y - m) ** 2 for y in v) / (len(v) - 1)) ** 0.5 if len(v) > 1 else 0.0
                    for (_, v), m in zip(shown, means)]
            line = ax.errorbar(xs, means, yerr=stds, marker="o", ms=4, capsize=3, label=label)
            color = line[0].get_color()
            for x, v in shown:
                ax.scatter([x] * len(v), v, s=10, color=color, alpha=0.4)
        for x, _, diverged in points:
            if diverged:
                ax.scatter([x] * diverged, [0.02 * (k + 1) for k in range(diverged)], marker="x", color="tab:red",
                           transform=ax.get_xaxis_transform(), s=25)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    _save(fig, path)


def swings(curves: dict, path, title: str = "") -> None:
    """Test accuracy per epoch with the moving statistics (solid) and re-estimated ones (dashed), one thin
    line per seed, one panel per BN variant."""
    variants = [v for v in curves if any("test_acc_precise" in r for rows in curves[v] for r in rows)]
    if not variants:
        return
    fig, axes = plt.subplots(1, len(variants), figsize=(5.5 * len(variants), 3.8), squeeze=False, sharey=True)
    for ax, variant in zip(axes[0], variants):
        for i, rows in enumerate(curves[variant]):
            epochs = [r["epoch"] for r in rows]
            ax.plot(epochs, [r["test_acc"] for r in rows], "-", color="tab:red", alpha=0.7, lw=1,
                    label="moving statistics" if i == 0 else None)
            ax.plot(epochs, [r.get("test_acc_precise") for r in rows], "--", color="tab:green", alpha=0.8, lw=1,
                    label="re-estimated (precise BN)" if i == 0 else None)
        ax.set_title(f"{LABELS[variant]}: test acc per epoch, one line per seed", fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def _layer_grid(layers: list):
    fig, axes = plt.subplots(2, len(layers), figsize=(3.3 * len(layers), 6), squeeze=False)
    for col, name in enumerate(layers):
        for row, key in enumerate(("gamma", "beta")):
            axes[row][col].set_title(f"{name} {key}", fontsize=9)
            axes[row][col].tick_params(labelsize=7)
            axes[row][col].grid(True, alpha=0.3)
    return fig, axes


def bn_same_seed(a: dict, b: dict, labels: tuple, path, title: str = "") -> None:
    """Per channel, gamma and beta of run a (x) against run b (y), one panel per layer and parameter:
    points on the diagonal are channels that learned the same value in both."""
    fig, axes = _layer_grid(list(a))
    for col, name in enumerate(a):
        for row, key in enumerate(("gamma", "beta")):
            ax, x, y = axes[row][col], a[name][key], b[name][key]
            lo, hi = min(x + y), max(x + y)
            ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8, ls="--")
            ax.scatter(x, y, s=8, alpha=0.7)
            ax.set_xlabel(labels[0], fontsize=8)
            ax.set_ylabel(labels[1], fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def bn_over_seeds(params: dict, path, title: str = "") -> None:
    """Box plots of the per-channel gamma and beta of every run: {variant: {seed: bn_params}}, one box per
    (variant, seed), one panel per layer and parameter."""
    first = next(iter(next(iter(params.values())).values()))
    fig, axes = _layer_grid(list(first))
    for col, name in enumerate(first):
        for row, key in enumerate(("gamma", "beta")):
            ax, boxes, colors, ticks = axes[row][col], [], [], []
            for variant, by_seed in params.items():
                for seed, p in by_seed.items():
                    boxes.append(p[name][key])
                    colors.append(COLORS[variant])
                    ticks.append(f"{variant[0]}{seed}")
            parts = ax.boxplot(boxes, patch_artist=True, widths=0.6, flierprops={"markersize": 2})
            for patch, color in zip(parts["boxes"], colors):
                patch.set_facecolor(color)
                patch.set_alpha(0.6)
            ax.set_xticks(range(1, len(ticks) + 1), ticks, fontsize=6, rotation=90)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def bn_evolution(histories: dict, path, title: str = "") -> None:
    """Gamma and beta over epochs from bn_history.json, {variant: {seed: history}}: per run the mean over
    channels (scratch solid, built-in dashed, so runs that coincide stay visible); for each variant's first
    seed also the min..max over channels (band)."""
    first = next(iter(next(iter(histories.values())).values()))[0]["params"]
    fig, axes = _layer_grid(list(first))
    for variant, by_seed in histories.items():
        for k, (seed, history) in enumerate(by_seed.items()):
            epochs = [h["epoch"] for h in history]
            for col, name in enumerate(first):
                for row, key in enumerate(("gamma", "beta")):
                    values = [h["params"][name][key] for h in history]
                    ax = axes[row][col]
                    ax.plot(epochs, [sum(v) / len(v) for v in values], "--" if variant == "torch" else "-",
                            color=COLORS[variant], lw=1.6 if k == 0 else 0.8, alpha=1 if k == 0 else 0.6,
                            label=f"{LABELS[variant]}, seed {seed}" if k == 0 else None)
                    if k == 0:
                        ax.fill_between(epochs, [min(v) for v in values], [max(v) for v in values],
                                        color=COLORS[variant], alpha=0.12, lw=0)
                    ax.set_xlabel("epoch", fontsize=8)
                    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
