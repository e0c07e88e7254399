"""Figures: learning curves (d2l style), gamma/beta per channel, and comparisons over seeds."""

import sys

import matplotlib

if "ipykernel" not in sys.modules:  # in a notebook, keep its inline backend: the user's own figures show there
    matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402


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
