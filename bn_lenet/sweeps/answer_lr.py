"""The lr study's answer (configs/sweeps/lr.toml): up to which learning rate each norm still trains, its
best learning rate, and how many times higher the largest usable learning rate is with BN than without,
against the BN paper's 30x. Every figure and every judging sentence is computed from the runs.

"Trains" (TRAINS_ACC) is defined here once, and the report says it: every run of the point that is done
finished without diverging and without getting stuck at chance, and their mean final test accuracy is at
least 0.70. A grid's steps are about 3x apart, so a largest usable lr is known only to within one step; the
ratio is given with the bounds that follow from that.
"""

import math

from .stats import STUCK_ACC, describe, final_values, finished

NAME = "lr"
TRAINS_ACC = 0.70
PAPER_RATIO = 30  # Ioffe & Szegedy 2015 (sec. 4.2): Inception with BN, initial lr raised 5x and 30x
UNIFORM_LOSS = math.log(10)  # cross-entropy of the uniform guess over 10 classes: a net that learned nothing
LABELS = {"none": "no BN", "scratch": "scratch BN", "torch": "nn.BatchNorm"}


def verdict(point: dict) -> dict:
    """What one (norm, lr) point did: counts, final test accuracy over its finished seeds, whether it trains."""
    runs = point["runs"]
    fin = finished(runs)
    diverged = sum(r["status"] == "diverged" for r in runs)
    stuck = [r for r in runs if r["stuck"]]
    acc = describe(final_values(runs, "test_acc"))
    not_done = sum(r["status"] not in ("finished", "diverged") for r in runs)
    trains = bool(fin) and not diverged and not stuck and acc["mean"] >= TRAINS_ACC
    return {"lr": point["values"]["train.lr"], "norm": point["values"]["model.norm"], "runs": len(runs),
            "finished": len(fin), "diverged": diverged, "stuck": len(stuck), "not_done": not_done, "acc": acc,
            "stuck_loss": describe([r["rows"][-1]["loss"] for r in stuck]), "trains": trains}


def by_norm(sweep: dict) -> dict:
    """{norm: [verdict, ...] sorted by lr}, norms in the spec's order."""
    table = {}
    for p in sweep["points"]:
        v = verdict(p)
        table.setdefault(v["norm"], []).append(v)
    return {n: sorted(vs, key=lambda v: v["lr"]) for n, vs in table.items()}


def largest(verdicts: list):
    ok = [v for v in verdicts if v["trains"]]
    return ok[-1] if ok else None


def best(verdicts: list):
    """The lr with the highest mean final test accuracy, among those that train (else among any finished)."""
    pool = [v for v in verdicts if v["trains"]] or [v for v in verdicts if v["acc"]["n"]]
    return max(pool, key=lambda v: v["acc"]["mean"]) if pool else None


def next_lr(verdicts: list, lr):
    higher = [v["lr"] for v in verdicts if v["lr"] > lr]
    return min(higher) if higher else None


def ratio(bn: list, none: list) -> dict:
    """Largest usable lr with BN / without, and its bounds from the grid's resolution: the true largest lr
    lies between the largest that trains and the next grid value (unbounded past the grid's top)."""
    b, n = largest(bn), largest(none)
    if b is None or n is None:
        return {}
    b_next, n_next = next_lr(bn, b["lr"]), next_lr(none, n["lr"])
    low = b["lr"] / n_next if n_next else None  # no-BN trains up to the grid's top: no lower bound below 0
    high = b_next / n["lr"] if b_next else math.inf
    return {"value": b["lr"] / n["lr"], "low": low, "high": high, "bn_at_top": b_next is None}


def acc_text(v: dict) -> str:
    a = v["acc"]
    return f"{a['mean']:.3f} ± {a['std']:.3f} (n={a['n']})" if a["n"] else "n/a"


def cell(v: dict) -> str:
    """One table cell: the accuracy, then what went wrong, diverged and stuck told apart."""
    parts = []
    if v["acc"]["n"] and v["stuck"] < v["finished"]:
        parts.append(acc_text(v))
    if v["trains"]:
        parts.append("**trains**" + (f" (borderline: mean - std < {TRAINS_ACC:.2f})" if borderline(v) else ""))
    elif v["acc"]["n"] and not v["stuck"] and not v["diverged"]:
        parts.append(f"below {TRAINS_ACC:.2f}")
    if v["stuck"]:
        parts.append(f"stuck {v['stuck']}/{v['runs']} (loss {v['stuck_loss']['mean']:.3g})")
    if v["diverged"]:
        parts.append(f"diverged {v['diverged']}/{v['runs']}")
    if v["not_done"]:
        parts.append(f"{v['not_done']} not done")
    return ", ".join(parts) or "n/a"


def borderline(v: dict) -> bool:
    """Trains, but its mean is within one std over seeds of the threshold: another seed could flip it."""
    return v["trains"] and v["acc"]["mean"] - v["acc"]["std"] < TRAINS_ACC


def lr_range(verdicts: list) -> str:
    ok = [f"{v['lr']:g}" + (" (borderline)" if borderline(v) else "") for v in verdicts if v["trains"]]
    return ", ".join(ok) if ok else "no lr of the grid"


def times(x: float) -> str:
    return f"{x:,.0f}x" if x >= 10 else f"{x:.3g}x"


def ratio_text(r: dict) -> str:
    if not r:
        return "undefined (one of the two trains at no lr of the grid)"
    low = times(r["low"]) if r["low"] else "?"
    high = "open (BN trains at the grid's largest lr)" if math.isinf(r["high"]) else times(r["high"])
    return f"{'at least ' if r['bn_at_top'] else ''}{times(r['value'])} (grid bounds {low} .. {high})"


def vs_paper(r: dict) -> str:
    """The measured ratio against the paper's 30x, honest about the grid's resolution."""
    if r["value"] >= PAPER_RATIO:
        return f"as high as or higher than the BN paper's {PAPER_RATIO}x"
    if r["high"] > PAPER_RATIO:
        return (f"lower than the BN paper's {PAPER_RATIO}x on this grid, though its steps leave up to "
                f"{ratio_text(r).split(' .. ')[1].rstrip(')')} possible, so {PAPER_RATIO}x is not ruled out")
    return f"lower than the BN paper's {PAPER_RATIO}x, even at the grid's upper bound"


def grouped(sentences: dict) -> list:
    """{norm: sentence with '{who}'} -> one sentence per distinct text, naming every norm that says it (scratch
    BN and nn.BatchNorm usually train alike; one sentence for both reads better than two equal ones)."""
    by_text = {}
    for n, text in sentences.items():
        by_text.setdefault(text, []).append(LABELS.get(n, n))
    return [text.replace("{who}", " and ".join(who)) for text, who in by_text.items()]


def near_best(verdicts: list, top: dict) -> list:
    """Other lrs whose seeds' final accuracies overlap the best one's range: the best lr is not set apart."""
    def rng(v):
        return v["acc"]["min"], v["acc"]["max"]
    return [v["lr"] for v in verdicts if v is not top and v["trains"] and v["acc"]["n"]
            and max(rng(v)[0], rng(top)[0]) <= min(rng(v)[1], rng(top)[1])]


def answer(sweep: dict) -> list:
    norms = by_norm(sweep)
    bns = [n for n in norms if n != "none"]
    none = norms.get("none", [])
    not_done = sum(v["not_done"] for vs in norms.values() for v in vs)
    runs = sum(v["runs"] for vs in norms.values() for v in vs)
    lines = ["## Answer", ""]
    if not_done:
        lines += [f"**Provisional: {not_done} of {runs} runs are not done**; the figures below are over the runs "
                  "done so far. Rerun the sweep's command to complete them.", ""]
    lines += [f"\"Trains\" here means: every run of the (norm, lr) point finished all epochs without diverging "
              f"(loss or weights inf/NaN) and without getting stuck at chance (test acc <= {STUCK_ACC}), and the "
              f"mean final test accuracy over its seeds is >= {TRAINS_ACC:.2f}.", ""]
    sentences = []
    for n, vs in norms.items():
        big, top = largest(vs), best(vs)
        label = LABELS.get(n, n)
        if big is None:
            sentences.append(f"{label} trains at no lr of the grid"
                             + (f" (best: lr {top['lr']:g}, {acc_text(top)})" if top else "") + ".")
            continue
        near = near_best(vs, top)
        sentences.append(f"{label} trains up to lr **{big['lr']:g}** ({acc_text(big)}; trains at lr "
                         f"{lr_range(vs)}); its best lr is {top['lr']:g} with final test acc **{acc_text(top)}**"
                         + (f" (the seeds' range overlaps it at lr {', '.join(f'{x:g}' for x in near)})" if near else "")
                         + ".")
    ratios = {n: ratio(norms[n], none) for n in bns} if none else {}
    sentences += grouped({n: (f"The largest usable lr is {ratio_text(r)} higher with {{who}} than without BN: "
                              f"{vs_paper(r)}." if r else f"The ratio for {{who}} is {ratio_text(r)}.")
                          for n, r in ratios.items()})
    lines += [" ".join(sentences), ""]
    lines += meaning(norms, bns, none, ratios)
    lines += lr_table(sweep, norms)
    return lines


def meaning(norms: dict, bns: list, none: list, ratios: dict) -> list:
    said = []
    if ratios and all(ratios.values()):
        values = sorted(r["value"] for r in ratios.values())
        if values[-1] < PAPER_RATIO:
            open_top = any(r["high"] > PAPER_RATIO for r in ratios.values())
            said.append(f"Our numbers do not {'confirm' if open_top else 'reproduce'} \"BN allows a {PAPER_RATIO}x "
                        f"higher learning rate\" on this network: the gain in the largest usable lr is {times(values[0])}"
                        f"{'' if values[0] == values[-1] else f' to {times(values[-1])}'} on this grid"
                        + (f" (its steps cannot tell it from {PAPER_RATIO}x: a finer grid between the largest lr that "
                           "trains and the next would)" if open_top else "") + ". The paper's "
                        f"{PAPER_RATIO}x is a multiple of Inception's own lr that training with BN tolerated (Ioffe & "
                        "Szegedy 2015 raised it 5x and 30x), not a measured largest lr without BN; ours is measured "
                        "on both sides.")
        else:
            said.append(f"Our numbers agree with the claim: the largest usable lr is {times(values[0])} or more higher "
                        f"with BN, at least the BN paper's {PAPER_RATIO}x (it raised Inception's lr 5x and 30x).")
    ok_none = [v for v in none if v["trains"]]
    spans, gains = {}, {}
    for n in bns:
        ok = [v for v in norms[n] if v["trains"]]
        if ok and ok_none:
            span, span_none = ok[-1]["lr"] / ok[0]["lr"], ok_none[-1]["lr"] / ok_none[0]["lr"]
            spans[n] = (f"With {{who}} the lrs that train span {times(span)} (lr {ok[0]['lr']:g} to {ok[-1]['lr']:g}) "
                        f"against {times(span_none)} without BN (lr {ok_none[0]['lr']:g} to {ok_none[-1]['lr']:g}): "
                        + ("a wider range, so the lr needs less tuning." if span > span_none else "no wider range."))
        b, b_none = best(norms[n]), best(none)
        if b and b_none:
            gain = b["acc"]["mean"] - b_none["acc"]["mean"]
            gains[n] = (f"At each one's best lr, {{who}} ends {abs(gain):.3f} {'higher' if gain >= 0 else 'lower'} in "
                        f"test accuracy than no BN ({b['acc']['mean']:.3f} at lr {b['lr']:g} vs "
                        f"{b_none['acc']['mean']:.3f} at lr {b_none['lr']:g}): "
                        + ("BN's gain is not only a larger lr." if gain > 0 else "BN gives no accuracy of its own here."))
    said += grouped(spans) + grouped(gains)
    if ok_none:
        below = [v for v in none if v["lr"] < ok_none[0]["lr"] and (v["stuck"] or not v["trains"])]
        if below:
            flat = [f"{v['lr']:g}" for v in below if v["stuck"] and abs(v["stuck_loss"]["mean"] - UNIFORM_LOSS) < 0.05]
            said.append("Without BN a too-small lr fails too: at lr " + ", ".join(f"{v['lr']:g}" for v in below)
                        + " it ends at " + ", ".join(f"{v['acc']['mean']:.3f}" if v["acc"]["n"] else "n/a" for v in below)
                        + " test accuracy after the same epochs: it learns too slowly, it does not diverge"
                        + (f" (at lr {', '.join(flat)} the final loss is still ln 10 = {UNIFORM_LOSS:.2f}, the uniform "
                           "guess)." if flat else "."))
    if not any(v["diverged"] for vs in norms.values() for v in vs):
        said.append("No run diverged to inf/NaN: past its largest usable lr each network ends stuck at chance with a "
                    "finite loss, so a NaN check alone would not catch a too-large lr here.")
    return ["### What it means for you", "", " ".join(said), ""] if said else []


def lr_table(sweep: dict, norms: dict) -> list:
    lrs = sorted({v["lr"] for vs in norms.values() for v in vs})
    at = {(v["norm"], v["lr"]): v for vs in norms.values() for v in vs}
    lines = ["### Final test accuracy per learning rate", "",
             "Mean ± std over the finished seeds (n), then the verdict: **trains** (as defined above), below "
             f"{TRAINS_ACC:.2f}, stuck (finished with a finite loss, test acc <= {STUCK_ACC}; a final loss near ln 10 = "
             f"{UNIFORM_LOSS:.2f} is the uniform guess, a larger one an overshoot) or diverged (inf/NaN).", "",
             "| lr | " + " | ".join(LABELS.get(n, n) for n in norms) + " |", "|---|" + "---|" * len(norms)]
    for lr in lrs:
        lines.append(f"| {lr:g} | " + " | ".join(cell(at[(n, lr)]) if (n, lr) in at else "" for n in norms) + " |")
    figure = f"test_acc_vs_{'train.lr'.rpartition('.')[2]}.png"  # drawn by report.figures
    lines += ["", f"![final test accuracy against lr]({figure})", "",
              "Final test accuracy against lr (log axis), one line per norm: mean ± std over the finished seeds, one "
              "dot per seed, a red x per diverged run.", ""]
    return lines


def one_line(sweep: dict) -> str:
    norms = by_norm(sweep)
    none = norms.get("none", [])
    parts = []
    for n, vs in norms.items():
        big, top = largest(vs), best(vs)
        parts.append(f"{LABELS.get(n, n)} trains up to lr {big['lr']:g}" if big else f"{LABELS.get(n, n)} trains at no lr")
        if top:
            parts[-1] += f" (best {top['acc']['mean']:.3f} ± {top['acc']['std']:.3f} at lr {top['lr']:g})"
    ratios = [(n, ratio(norms[n], none)) for n in norms if n != "none" and none]
    text = "; ".join(parts) + "."
    if ratios and all(r for _, r in ratios):
        text += " Largest usable lr with BN / without: " + ", ".join(
            f"{ratio_text(r)} ({LABELS.get(n, n)})" for n, r in ratios) + f", against the BN paper's {PAPER_RATIO}x."
    not_done = sum(v["not_done"] for vs in norms.values() for v in vs)
    return text + (f" (provisional: {not_done} runs not done)" if not_done else "")
