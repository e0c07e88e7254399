"""A plug-in section for the compare study's report (``[report] published = true``): where the tutorial's
published final figures fall among our runs of the same setup.

Why a plug-in and not a contrast: the published figures come from the book's own builds (bn_lenet/published.py),
not from any run directory, so the engine has no runs to pair them with; they are placed, not judged.
"""

from .. import published
from .stats import by_seed, describe, pm

LABELS = {"scratch": "scratch BN", "torch": "nn.BatchNorm"}


def lines(sweep: dict) -> list:
    points = {p["values"].get("model.norm"): p for p in sweep["points"]}
    out = ["## Where the tutorial's published figures fall among our runs", "",
           published.citation() + " \"k of n below\": how many of our finished runs have a lower value.", "",
           "| variant | source | published loss / train acc / test acc | ours: test acc, final (moving) | ours below "
           "the published test acc | ours: test acc, precise BN | ours: training loss |", "|---|---|---|---|---|---|---|"]
    for p in published.RUNS:
        point = points.get(p.variant)
        ours = list(by_seed(point["runs"], "test_acc", "final").values()) if point else []
        if not ours:
            continue
        precise = describe(list(by_seed(point["runs"], "test_acc", "precise").values()))
        loss = describe(list(by_seed(point["runs"], "loss", "final").values()))
        out.append(f"| {LABELS[p.variant]} | {p.source} | {p.loss:.3f} / {p.train_acc:.3f} / {p.test_acc:.3f} | "
                   f"{pm(describe(ours))} | {sum(x < p.test_acc for x in ours)} of {len(ours)} | {pm(precise)} | "
                   f"{pm(loss)} |")
    for variant, (lo, hi) in published.TEST_ACC_RANGE.items():
        ours = describe(list(by_seed(points[variant]["runs"], "test_acc", "final").values())) if variant in points else {}
        if ours.get("n"):
            out.append(f"\n{LABELS[variant]}: published builds range {lo:.2f}-{hi:.2f} in final test accuracy; ours "
                       f"{ours['min']:.3f}-{ours['max']:.3f} with the moving statistics.")
    return out + [""]
