"""The gradients study's answer (configs/sweeps/gradients.toml): does BN keep sigmoid LeNet's gradients
alive? From each finished run's grad_norms.jsonl (log.grad_norms: per epoch, the mean over the epoch's steps
of each parameter's gradient L2 norm; names as bn_lenet/training/train.py GradNorms gives them, e.g.
``conv1.conv.weight`` ... ``fc3.weight``), only the conv/linear weights are compared, the same five layers
with and without BN.

    ratio   first layer's weight-gradient norm / last layer's (conv1 vs fc3), per run, at epoch 1 and at the
            final epoch; mean ± std over seeds. Far below 1: the first layer gets little of the signal
            (vanishing gradients).

"Does the accuracy gain follow the gradient change": for each (activation, lr), BN's change of the ratio
(with / without) and of the final test accuracy (with - without) are compared in direction, where the accuracy
change is beyond seed noise (answers_common.beyond_noise: the seeds' ranges do not overlap); a change within the
noise is named as such and counts neither way.
"""

import json
import math
import statistics
from pathlib import Path

from .answers_common import beyond_noise
from .stats import describe, final_values, finished

NAME = "gradients"
FIGURE = "grad_norms.png"
LABELS = {"none": "no BN", "scratch": "scratch BN", "torch": "nn.BatchNorm"}


def grad_rows(run: dict) -> list:
    path = Path(run["dir"]) / "grad_norms.jsonl" if run.get("dir") else None
    if path is None or not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def weight_layers(rows: list) -> list:
    """The conv/linear weights in network order (the order GradNorms writes them)."""
    return [k for k in rows[0] if k.endswith(".weight")] if rows else []


def point_grads(point: dict) -> dict:
    """{"layers", "per_run": [rows], "ratio_first", "ratio_last": describe of per-run conv1/fc3 ratios}."""
    per_run = [rows for rows in (grad_rows(r) for r in finished(point["runs"])) if rows]
    layers = weight_layers(per_run[0]) if per_run else []

    def ratios(index):
        out = []
        for rows in per_run:
            first, last = rows[index][layers[0]], rows[index][layers[-1]]
            if math.isfinite(first) and math.isfinite(last) and last > 0:
                out.append(first / last)
        return describe(out)
    return {"layers": layers, "per_run": per_run, "ratio_first": ratios(0) if layers else {"n": 0},
            "ratio_last": ratios(-1) if layers else {"n": 0}, "acc_values": final_values(point["runs"], "test_acc"),
            "acc": describe(final_values(point["runs"], "test_acc"))}


def label(point: dict) -> str:
    v = point["values"]
    return ", ".join(x for x in (LABELS.get(v.get("model.norm"), v.get("model.norm", "")), v.get("model.activation", ""),
                                 f"lr {v['train.lr']:g}" if "train.lr" in v else "") if x)


def layer_mean(grads: dict, layer: str, index: int):
    vals = [rows[index][layer] for rows in grads["per_run"] if layer in rows[index]]
    vals = [v for v in vals if math.isfinite(v)]
    return statistics.fmean(vals) if vals else None


def ratio_text(d: dict) -> str:
    return f"{d['mean']:.3g} ± {d['std']:.2g} (n={d['n']})" if d.get("n") else "n/a"


def pairs(points: list, grads: dict) -> list:
    """[(activation, lr, no-BN point, BN point)] for every (activation, lr) with both norms present."""
    by = {}
    for p in points:
        v = p["values"]
        by.setdefault((v.get("model.activation", ""), v.get("train.lr")), {})[v.get("model.norm")] = p
    return [(act, lr, ps["none"], ps[bn]) for (act, lr), ps in by.items() for bn in ps if bn != "none" and "none" in ps]


def comparison(none: dict, bn: dict, grads: dict) -> dict:
    g0, g1 = grads[none["id"]], grads[bn["id"]]
    out = {}
    for when in ("ratio_first", "ratio_last"):
        if g0[when].get("n") and g1[when].get("n"):
            out[when] = g1[when]["mean"] / g0[when]["mean"]
    if g0["acc"].get("n") and g1["acc"].get("n"):
        out["gain"] = g1["acc"]["mean"] - g0["acc"]["mean"]
        out["beyond_noise"] = beyond_noise(g0["acc_values"], g1["acc_values"])
    done = finished(none["runs"])
    out["none_stuck"] = bool(done) and all(r.get("stuck") for r in done)  # no BN at chance: its gradients died
    return out


def follows(c: dict):
    """True when the accuracy moves the way the ratio does (both up or both down), False when against it,
    "noise" when the accuracy change is within seed noise (it then says nothing either way), None when unknown."""
    if "ratio_first" not in c or "gain" not in c:
        return None
    if not c["beyond_noise"]:
        return "noise"
    return (c["ratio_first"] > 1) == (c["gain"] > 0)


def answer(sweep: dict) -> list:
    points = sweep["points"]
    grads = {p["id"]: point_grads(p) for p in points}
    not_done = sum(r["status"] not in ("finished", "diverged") for r in sweep["runs"])
    lines = ["## Answer", ""]
    if not_done:
        lines += [f"**Provisional: {not_done} of {len(sweep['runs'])} runs are not done**; the figures below are over "
                  "the runs done so far. Rerun the sweep's command to complete them.", ""]
    layers = next((g["layers"] for g in grads.values() if g["layers"]), [])
    if not layers:
        return lines + ["No finished run has a grad_norms.jsonl (log.grad_norms = true): nothing to compare yet.", ""]
    lines += [f"Ratio = the first layer's weight-gradient norm ({layers[0]}) / the last layer's ({layers[-1]}), each "
              "the mean L2 norm over an epoch's steps, per run; mean ± std over seeds (n).", ""]
    details, verdicts = [], []
    for act, lr, none, bn in pairs(points, grads):
        c = comparison(none, bn, grads)
        g0, g1 = grads[none["id"]], grads[bn["id"]]
        bn_name = LABELS.get(bn["values"].get("model.norm"), "BN")
        s = (f"- {act}, lr {lr:g}: ratio at epoch 1 {ratio_text(g0['ratio_first'])} without BN, "
             f"{ratio_text(g1['ratio_first'])} with {bn_name}; at the last epoch {ratio_text(g0['ratio_last'])} vs "
             f"{ratio_text(g1['ratio_last'])}")
        if "gain" in c:
            s += (f"; final test acc {g0['acc']['mean']:.3f} ± {g0['acc']['std']:.3f} vs {g1['acc']['mean']:.3f} ± "
                  f"{g1['acc']['std']:.3f} ({c['gain']:+.3f})")
        details.append(s)
        f = follows(c)
        if f is not None:
            verdicts.append((act, lr, f, c))
    headline = [f"With sigmoid at lr {lr:g}, BN {'raises' if c['ratio_first'] > 1 else 'lowers'} the first/last "
                f"gradient ratio at epoch 1 {c['ratio_first']:.3g}x and changes the final test accuracy by "
                f"{c['gain']:+.3f}{' (within seed noise)' if f == 'noise' else ''}." for a, lr, f, c in verdicts
                if a == "sigmoid"]
    if verdicts:
        headline.append(follow_sentence(verdicts))
    lines += [" ".join(headline), "", *details, ""]
    lines += meaning(points, grads, verdicts)
    lines += ratio_table(points, grads) + layer_table(points, grads, layers)
    if draw(points, grads, layers, sweep["out"]):
        lines += [f"![weight-gradient norm per layer over epochs]({FIGURE})", "",
                  "Weight-gradient norm per layer (one panel each, log y) over epochs, one line per point: mean over "
                  "the finished seeds, band min..max.", ""]
    return lines


def follow_sentence(verdicts: list) -> str:
    """Where the accuracy change is beyond seed noise, does it go the way the ratio does? Names the exceptions."""
    clear = [v for v in verdicts if v[2] != "noise"]
    agree = [v for v in clear if v[2] is True]
    noisy = [f"{a} lr {lr:g} ({c['gain']:+.3f})" for a, lr, f, c in verdicts if f == "noise"]
    against = [f"{a} lr {lr:g} (ratio x{c['ratio_first']:.3g}, accuracy {c['gain']:+.3f}"
               f"{'; without BN every seed is stuck at chance' if c.get('none_stuck') else ''})"
               for a, lr, f, c in clear if f is False]
    text = (f"**The accuracy gain follows the gradient change in {len(agree)} of the {len(clear)} (activation, lr) "
            f"pairs where BN changes the final test accuracy beyond seed noise** (BN raising the epoch-1 ratio and "
            f"the accuracy, or lowering both)")
    text += ("; not at " + "; ".join(against)) if against else ""
    text += ("; the accuracy change is within seed noise at " + ", ".join(noisy)) if noisy else ""
    return text + "."


def meaning(points: list, grads: dict, verdicts: list) -> list:
    said = []
    none_act = {}
    for p in points:
        v = p["values"]
        if v.get("model.norm") == "none" and grads[p["id"]]["ratio_first"].get("n"):
            none_act.setdefault(v.get("model.activation"), []).append(grads[p["id"]]["ratio_first"]["mean"])
    if "sigmoid" in none_act and "relu" in none_act:
        s, r = statistics.fmean(none_act["sigmoid"]), statistics.fmean(none_act["relu"])
        said.append(f"Without BN the sigmoid network's epoch-1 ratio is {s:.3g} against {r:.3g} with ReLU (mean over "
                    "the lrs): " + ("the sigmoid starves its first layer more." if s < r else
                                    "the sigmoid does not starve its first layer more than ReLU."))
    verdicts = [v for v in verdicts if v[2] != "noise"]
    if verdicts:
        if all(v[2] for v in verdicts):
            said.append("Here the claim holds in direction: where BN gives the first layer more gradient, it also "
                        "gives more accuracy.")
        elif not any(v[2] for v in verdicts):
            said.append("Here the claim does not hold: BN's accuracy change goes against its change of the first "
                        "layer's gradient share everywhere, so the gain is not explained by unblocked gradients.")
        else:
            said.append("Here the claim holds only in part: the accuracy gain does not always follow the gradient "
                        "change, so rescued gradients are not the whole story.")
    return ["### What it means for you", "", " ".join(said), ""] if said else []


def ratio_table(points: list, grads: dict) -> list:
    lines = ["### First/last layer gradient ratio and accuracy per point", "",
             "| point | ratio, epoch 1 | ratio, last epoch | final test acc |", "|---|---|---|---|"]
    for p in points:
        g = grads[p["id"]]
        acc = f"{g['acc']['mean']:.3f} ± {g['acc']['std']:.3f} (n={g['acc']['n']})" if g["acc"].get("n") else "n/a"
        lines.append(f"| {label(p)} | {ratio_text(g['ratio_first'])} | {ratio_text(g['ratio_last'])} | {acc} |")
    return lines + [""]


def layer_table(points: list, grads: dict, layers: list) -> list:
    lines = ["### Weight-gradient norm per layer, epoch 1 → last epoch", "",
             "Mean over the finished seeds of each epoch's mean L2 norm per step.", "",
             "| point | " + " | ".join(layers) + " |", "|---|" + "---|" * len(layers)]
    for p in points:
        g = grads[p["id"]]
        cells = []
        for layer in layers:
            a, b = (layer_mean(g, layer, i) if g["per_run"] else None for i in (0, -1))
            cells.append(f"{a:.3g} → {b:.3g}" if a is not None and b is not None else "n/a")
        lines.append(f"| {label(p)} | " + " | ".join(cells) + " |")
    return lines + [""]


def draw(points: list, grads: dict, layers: list, out) -> bool:
    if out is None:
        return False
    from ..training import plots
    plt = plots.plt
    fig, axes = plt.subplots(1, len(layers), figsize=(3.4 * len(layers), 3.6), squeeze=False)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # One color per (activation, lr), so a point without BN and its BN twin share it (dashed vs solid).
    pair_of = lambda p: tuple(v for k, v in p["values"].items() if k != "model.norm")  # noqa: E731
    color = {key: cycle[i % len(cycle)] for i, key in enumerate(dict.fromkeys(pair_of(p) for p in points))}
    for ax, layer in zip(axes[0], layers):
        for p in points:
            runs = [rows for rows in grads[p["id"]]["per_run"] if all(layer in r for r in rows)]
            if not runs:
                continue
            epochs = [r["epoch"] for r in runs[0]]
            per_epoch = list(zip(*[[r[layer] for r in rows] for rows in runs]))
            style = "--" if p["values"].get("model.norm") == "none" else "-"
            ax.plot(epochs, [statistics.fmean(v) for v in per_epoch], style, color=color[pair_of(p)], label=label(p))
            ax.fill_between(epochs, [min(v) for v in per_epoch], [max(v) for v in per_epoch], color=color[pair_of(p)],
                            alpha=0.15, lw=0)
        ax.set_yscale("log")
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(plots.MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3, which="both")
    axes[0][0].set_ylabel("gradient L2 norm (mean per step)")
    axes[0][0].legend(fontsize=6)
    fig.suptitle("weight-gradient norm per layer: dashed no BN, solid BN", fontsize=9)
    plots._save(fig, out / FIGURE)
    return True


def one_line(sweep: dict) -> str:
    """The sigmoid pairs (the claim is about sigmoid) and the follow count over every pair."""
    points = sweep["points"]
    grads = {p["id"]: point_grads(p) for p in points}
    parts, verdicts = [], []
    for act, lr, none, bn in pairs(points, grads):
        c = comparison(none, bn, grads)
        if "ratio_first" in c and "gain" in c:
            verdicts.append(follows(c))
            if act == "sigmoid":
                parts.append(f"sigmoid lr {lr:g}: BN lifts the epoch-1 first/last gradient ratio "
                             f"{c['ratio_first']:.3g}x, test acc {c['gain']:+.3f}"
                             + (" (within noise)" if verdicts[-1] == "noise" else ""))
    if not verdicts:
        return "no finished run with gradient norms yet"
    clear = [v for v in verdicts if v != "noise"]
    not_done = sum(r["status"] not in ("finished", "diverged") for r in sweep["runs"])
    return ("; ".join(parts) + f". The accuracy gain follows the gradient change in {sum(v is True for v in clear)} "
            f"of the {len(clear)} cases beyond seed noise." + (f" (provisional: {not_done} runs not done)"
                                                              if not_done else ""))
