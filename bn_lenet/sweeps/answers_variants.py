"""The answers of the studies that vary how BN is laid out or configured (configs/sweeps/NAME.toml):

    layers       which layers carry BN's gain (model.norm_layers), in final accuracy and in speed (epochs 1, 2, 5)
    placement    BN before or after the activation, per activation
    lite_bn      which half of BN does the work: centering only, scaling only, both, none
    conventions  the tutorial's, PyTorch's and Keras's conventions, and momentum / eps one at a time

Each ``fn(sweep) -> list of markdown lines`` starts with ``## Answer``; the sweep report follows it with the
generic table and figures. Every number and every judging word is computed from the runs.
"""

from .answers_common import (at_epoch, beyond_noise, by_seed, diff_line, epoch_table, finals, find, gain_share,
                             loss_note, mean, ms, paired, pct, status_note)
from ..network.options import LAYERS
from .stats import describe

EARLY = (1, 2, 5)


# --- layers ---------------------------------------------------------------------------------------------

def layers_label(layers: list) -> str:
    if not layers:
        return "no layer"
    return "all four" if list(layers) == list(LAYERS) else " + ".join(layers)


def _layers_parts(sweep):
    all_four = find(sweep, {"model.norm_layers": list(LAYERS)})
    none = find(sweep, {"model.norm_layers": []})
    partial = [p for p in sweep["points"] if p not in (all_four, none)]
    return all_four, none, partial


def loss_share(part: list, none: list, full: list) -> float:
    """gain_share on the training loss (lower is better)."""
    return gain_share([-v for v in part], [-v for v in none], [-v for v in full])


def side(a: list, b: list, name_b: str) -> str:
    """'above no layer beyond seed noise' / 'below ...' / 'within seed noise of no layer' (test accuracy)."""
    if not beyond_noise(a, b):
        return f"within seed noise of {name_b}"
    return f"{'above' if mean(a) > mean(b) else 'below'} {name_b} beyond seed noise"


def layers(sweep: dict) -> list:
    all_four, none, partial = _layers_parts(sweep)
    label = {p["id"]: layers_label(p["values"].get("model.norm_layers", [])) for p in sweep["points"]}
    lines = ["## Answer", ""]
    full, bare = finals(all_four), finals(none)
    full_loss, bare_loss = finals(all_four, "loss"), finals(none, "loss")
    lines.append(f"Final test accuracy with BN in all four layers {ms(full)}{status_note(all_four)}, in no layer "
                 f"{ms(bare)}{status_note(none)}: {diff_line('all four', full, 'no layer', bare)}. Final training "
                 f"loss: {diff_line('all four', full_loss, 'no layer', bare_loss, metric='loss')}.")
    shares = []
    for p in partial:
        share_final = gain_share(finals(p), bare, full)
        share_1 = gain_share(at_epoch(p, 1), at_epoch(none, 1), at_epoch(all_four, 1))
        share_loss = loss_share(finals(p, "loss"), bare_loss, full_loss)
        shares.append((share_final, share_loss, p))
        lines.append(f"- {label[p['id']]}: test acc {ms(finals(p))}{status_note(p)}, {pct(share_final)} of the "
                     f"all-four gain at the end and {pct(share_1)} after epoch 1, {side(finals(p), bare, 'no layer')}; "
                     f"training loss {ms(finals(p, 'loss'))}, {pct(share_loss)} of the all-four loss reduction.")
    lines.append("")
    scored = [(s, p) for s, _, p in shares if s == s]
    lines += ["### What it means for you", ""]
    if not full or not bare:
        lines += ["Not enough finished runs to say yet.", ""]
    elif not beyond_noise(full, bare):
        said = ["BN in every layer does not beat no BN in final test accuracy beyond seed noise here (the test "
                "accuracy with the moving statistics swings from epoch to epoch; see the test_stats study), so the "
                "final test accuracy cannot say which layers carry BN's gain."]
        by_loss = sorted([(sl, p) for _, sl, p in shares if sl == sl], key=lambda sp: -sp[0])
        if by_loss:
            said.append(f"The final training loss can: BN in all four layers takes it from {mean(bare_loss):.3f} to "
                        f"{mean(full_loss):.3f}, and of that reduction " + ", ".join(
                            f"{label[p['id']]} alone recovers {pct(sl)}" for sl, p in by_loss) + ".")
        best = max(sweep["points"], key=lambda p: mean(finals(p)) if finals(p) else -1.0)
        if finals(best):
            said.append(f"The best final test accuracy is {label[best['id']]}'s, {ms(finals(best))}, "
                        f"{side(finals(best), bare, 'no layer')}.")
        worse = [label[p["id"]] for p in partial if finals(p) and beyond_noise(finals(p), bare)
                 and mean(finals(p)) < mean(bare)]
        if worse:
            said.append(f"{' and '.join(worse)} ends below no BN at all, beyond seed noise: BN there lowers the "
                        f"training loss but not the test accuracy with the moving statistics.")
        lines += [" ".join(said), ""]
    elif scored:
        best_share, best = max(scored, key=lambda sp: sp[0])
        name = label[best["id"]]
        if not beyond_noise(finals(best), full):
            lines += [f"{name} alone carries the gain: it recovers {pct(best_share)} of it and is within seed noise "
                      f"of BN in all four layers, so BN in the other layers adds nothing measurable here (each BN "
                      f"layer costs time per step; see the examples/sec column).", ""]
        else:
            lines += [f"No single part carries the whole gain: the best partial placement, {name}, recovers "
                      f"{pct(best_share)} of it and stays below all four beyond seed noise; keep BN in every layer, "
                      f"as the tutorial does.", ""]
    lines += ["### Speed of convergence", "",
              "Test accuracy after epochs 1, 2 and 5 and at the end, mean ± std over the finished seeds: how much "
              "sooner each placement gets there.", ""]
    return lines + epoch_table(sweep, sweep["points"], EARLY, label)


def layers_one_line(sweep: dict) -> str:
    all_four, none, partial = _layers_parts(sweep)
    full, bare = finals(all_four), finals(none)
    if not full or not bare or not partial:
        return "not enough finished runs yet"
    if len(full) >= 2 and len(bare) >= 2 and not beyond_noise(full, bare):
        full_loss, bare_loss = finals(all_four, "loss"), finals(none, "loss")
        best = max(partial, key=lambda p: loss_share(finals(p, "loss"), bare_loss, full_loss))
        top = max(sweep["points"], key=lambda p: mean(finals(p)) if finals(p) else -1.0)
        return (f"test acc within seed noise with BN in all four layers ({mean(full):.3f}) and in none "
                f"({mean(bare):.3f}); in training loss ({mean(bare_loss):.3f} -> {mean(full_loss):.3f}) "
                f"{layers_label(best['values']['model.norm_layers'])} alone recovers "
                f"{pct(loss_share(finals(best, 'loss'), bare_loss, full_loss))}; best test acc "
                f"{layers_label(top['values']['model.norm_layers'])}, {ms(finals(top))}")
    best = max(partial, key=lambda p: gain_share(finals(p), bare, full))
    name = layers_label(best["values"]["model.norm_layers"])
    return (f"test acc {mean(full):.3f} with BN in all four layers vs {mean(bare):.3f} in none; {name} alone recovers "
            f"{pct(gain_share(finals(best), bare, full))} of the gain ({mean(finals(best)):.3f})")


# --- placement ------------------------------------------------------------------------------------------

def _placement_pairs(sweep):
    acts = list(dict.fromkeys(p["values"].get("model.activation") for p in sweep["points"]))
    return [(a, find(sweep, {"model.activation": a, "model.placement": "before"}),
             find(sweep, {"model.activation": a, "model.placement": "after"})) for a in acts]


def placement(sweep: dict) -> list:
    lines = ["## Answer", ""]
    judged = []
    for act, before, after in _placement_pairs(sweep):
        b, a = finals(before), finals(after)
        lines.append(f"- **{act}**: BN before the activation {ms(b)}{status_note(before)}, after {ms(a)}"
                     f"{status_note(after)}; {diff_line('before', b, 'after', a)}. After epoch 1: before "
                     f"{ms(at_epoch(before, 1))}, after {ms(at_epoch(after, 1))}.")
        judged.append((act, b, a))
    lines += ["", "### What it means for you", ""]
    for act, b, a in judged:
        pair = next((bp, ap) for x, bp, ap in _placement_pairs(sweep) if x == act)
        if not b or not a:
            lines.append(f"- {act}: not enough finished runs to say.")
        elif not beyond_noise(b, a):
            lines.append(f"- {act}: the placement does not matter beyond seed noise here ({mean(b) - mean(a):+.3f}): "
                         f"this agrees with the article that says it hardly matters; the BN paper's choice (before "
                         f"the nonlinearity) is not better here, just not worse."
                         + loss_note(pair[0], pair[1], "before", "after"))
        elif mean(b) > mean(a):
            lines.append(f"- {act}: before wins by {mean(b) - mean(a):.3f} on every seed: the BN paper's choice (BN "
                         f"between the layer and its nonlinearity, as in the tutorial) holds here.")
        else:
            lines.append(f"- {act}: after wins by {mean(a) - mean(b):.3f} on every seed: here the BN paper's choice "
                         f"(before the nonlinearity) is the worse one, on the side of those who put BN after the "
                         f"activation.")
    return lines + ["", "The BN paper (Ioffe & Szegedy, 2015) normalizes the layer's output x = Wu + b right before "
                    "the nonlinearity, arguing that it is more Gaussian-like than the layer's input; the debate the "
                    "articles mention is whether normalizing the activation's output instead (what the next layer "
                    "sees) works as well or better. Diverged and stuck runs are counted per point above and in the "
                    "table.", ""]


def placement_one_line(sweep: dict) -> str:
    parts = []
    for act, before, after in _placement_pairs(sweep):
        b, a = finals(before), finals(after)
        if b and a:
            noise = "" if beyond_noise(b, a) else ", within seed noise"
            parts.append(f"{act}: before {mean(b):.3f} vs after {mean(a):.3f}{noise}")
    return "; ".join(parts) or "not enough finished runs yet"


# --- lite BN --------------------------------------------------------------------------------------------

LITE = {"full": "full BN", "mean": "centering only", "var": "scaling only"}


def _lite_parts(sweep):
    halves = {k: find(sweep, {"model.norm": "scratch", "bn.normalize": k}) for k in LITE}
    return halves, find(sweep, {"model.norm": "none"})


def lite_bn(sweep: dict) -> list:
    halves, none = _lite_parts(sweep)
    full, bare = finals(halves["full"]), finals(none)
    lines = ["## Answer", ""]
    for key, name in LITE.items():
        p = halves[key]
        share = "" if key == "full" else (f"; {pct(gain_share(finals(p), bare, full))} of full BN's gain over no BN "
                                          f"at the end, {pct(gain_share(at_epoch(p, 1), at_epoch(none, 1), at_epoch(halves['full'], 1)))} after epoch 1")
        lines.append(f"- {name}: final test acc {ms(finals(p))}{status_note(p)}{share}.")
    lines.append(f"- no BN: {ms(bare)}{status_note(none)}.")
    lines += ["", "### What it means for you", ""] + _lite_meaning(halves, none) + [""]
    labels = {p["id"]: LITE.get(p["values"].get("bn.normalize"), "no BN") for p in sweep["points"]}
    return lines + ["### Early epochs", ""] + epoch_table(sweep, sweep["points"], EARLY, labels)


def _lite_meaning(halves, none) -> list:
    full, bare = finals(halves["full"]), finals(none)
    if not full or not bare:
        return ["Not enough finished runs to say yet."]
    c, s = finals(halves["mean"]), finals(halves["var"])
    if not beyond_noise(full, bare):
        return [f"Full BN does not beat no BN beyond seed noise here ({diff_line('full', full, 'none', bare)}), so "
                f"neither half has a gain in final test accuracy to carry; compare the early epochs below."
                + loss_note(halves["full"], none, "full BN", "no BN")]
    working = [(LITE[k], v) for k, v in (("mean", c), ("var", s)) if v and not beyond_noise(v, full)]
    if len(working) == 2:
        return ["Either half alone is within seed noise of full BN: here one of them is enough."]
    if working:
        name, _ = working[0]
        return [f"{name.capitalize()} does the work: it is within seed noise of full BN, while the other half is "
                f"below it beyond seed noise (or did not finish)."]
    better = max((("centering only", c), ("scaling only", s)), key=lambda nv: mean(nv[1]) if nv[1] else -1)
    return [f"Neither half alone matches full BN (both below it beyond seed noise); {better[0]} gets closer. It "
            f"takes both: centering and scaling together."]


def lite_bn_one_line(sweep: dict) -> str:
    halves, none = _lite_parts(sweep)
    figures = [f"{name} {mean(finals(halves[k])):.3f}" for k, name in LITE.items() if finals(halves[k])]
    if finals(none):
        figures.append(f"no BN {mean(finals(none)):.3f}")
    return ("test acc " + ", ".join(figures)) if figures else "not enough finished runs yet"


# --- conventions ----------------------------------------------------------------------------------------

BASE = {"model.norm": "scratch", "bn.preset": "tutorial"}
EFFECTS = (("unbiased moving variance (pytorch preset vs tutorial)", {"model.norm": "scratch", "bn.preset": "pytorch"}, BASE),
           ("momentum 0.99 alone", {**BASE, "bn.momentum": 0.99}, BASE),
           ("eps 1e-3 alone", {**BASE, "bn.eps": 1e-3}, BASE),
           ("the keras bundle (momentum 0.99, eps 1e-3, biased)", {"model.norm": "scratch", "bn.preset": "keras"}, BASE),
           ("nn.BatchNorm vs scratch (both pytorch preset)", {"model.norm": "torch", "bn.preset": "pytorch"},
            {"model.norm": "scratch", "bn.preset": "pytorch"}))
CONV_EPOCHS = (1, 2, 3)


def _changes(diffs: list, noise: float) -> bool:
    """A convention changes a figure when every seed moves the same way and the mean move exceeds the
    baseline's own spread over seeds."""
    return len(diffs) >= 2 and (all(d > 0 for d in diffs) or all(d < 0 for d in diffs)) and abs(mean(diffs)) > noise


def _cell(diffs: list) -> str:
    if not diffs:
        return "n/a"
    return f"{mean(diffs):+.3f} ± {describe(diffs)['std']:.3f} ({sum(d > 0 for d in diffs)}/{len(diffs)} up)"


def _effects(sweep):
    out = []
    for name, changed, base in EFFECTS:
        a, b = find(sweep, changed), find(sweep, base)
        cols = {}
        for epoch in (*CONV_EPOCHS, None):
            diffs = paired(by_seed(a, epoch), by_seed(b, epoch))
            base_values = list(by_seed(b, epoch).values())
            noise = describe(base_values)["std"] if len(base_values) > 1 else float("inf")
            cols[epoch] = (diffs, _changes(diffs, noise))
        out.append((name, a, b, cols))
    return out


def conventions(sweep: dict) -> list:
    effects = _effects(sweep)
    base = find(sweep, BASE)
    lines = ["## Answer", "",
             f"Against the tutorial's convention (scratch BN, momentum 0.9, eps 1e-5, biased moving variance: "
             f"final test acc {ms(finals(base))}{status_note(base)}), per-seed differences in test accuracy (same "
             f"seed: same initial weights and batches, so the difference is the convention's alone):", ""]
    for name, a, b, cols in effects:
        changed = [("epoch " + str(e)) if e else "the end" for e, (_, ch) in cols.items() if ch]
        where = (f"changes test acc after {', '.join(changed)}" if changed else "changes no test acc figure measurably"
                 if any(diffs for diffs, _ in cols.values()) else "no seed finished on both sides yet")
        lines.append(f"- {name}: {where}; epoch 1 {_cell(cols[1][0])}, final {_cell(cols[None][0])}"
                     f"{status_note(a)}.")
    lines += ["", "\"Changes\" = every seed moves the same way and the mean move exceeds the baseline's spread over "
              "seeds (its std at that epoch).", "", "### What it means for you", ""]
    lines += _conventions_meaning(effects) + [""]
    lines += ["### Per epoch", "", "Mean ± std of the per-seed test accuracy difference (changed minus baseline), "
              "and how many seeds went up.", "",
              "| effect | " + " | ".join(f"epoch {e}" for e in CONV_EPOCHS) + " | final |",
              "|---|" + "---|" * (len(CONV_EPOCHS) + 1)]
    for name, _, _, cols in effects:
        lines.append(f"| {name} | " + " | ".join(_cell(cols[e][0]) + (" **changes**" if cols[e][1] else "")
                                                  for e in (*CONV_EPOCHS, None)) + " |")
    return lines + [""] + _scratch_vs_torch(sweep)


def _conventions_meaning(effects) -> list:
    conventions_ = effects[:-1]  # the last is the implementation, not a convention
    early = [name for name, _, _, cols in conventions_ if any(cols[e][1] for e in CONV_EPOCHS)]
    late = [name for name, _, _, cols in conventions_ if cols[None][1]]
    out = []
    verb = lambda names: "changes" if len(names) == 1 else "change"  # noqa: E731
    if early:
        lag = (" A slow momentum keeps the moving statistics near their starting values (mean 0, variance 1) for "
               "longer, so the network evaluates with stale statistics early on." if any("momentum" in n or "keras" in n
                                                                                        for n in early) else "")
        out.append(f"Early on, {', '.join(early)} {verb(early)} test accuracy beyond the seed spread.{lag}")
    else:
        out.append("No convention changes early-epoch test accuracy beyond the seed spread here.")
    if late:
        out.append(f"At the end, {', '.join(late)} still {verb(late)} it: choose that convention deliberately.")
    else:
        out.append("By the end of training none of them changes test accuracy beyond the seed spread: for a fully "
                   "trained model the convention is a detail (porting between libraries still needs PyTorch's "
                   "momentum written as 1 - m).")
    return [" ".join(out)]


def _scratch_vs_torch(sweep: dict) -> list:
    s = find(sweep, {"model.norm": "scratch", "bn.preset": "pytorch"})
    t = find(sweep, {"model.norm": "torch", "bn.preset": "pytorch"})
    lines = ["### Scratch BN and nn.BatchNorm under the same (pytorch) preset", "",
             "Same seed: same initial weights and batches. Per seed, nn.BatchNorm minus scratch, final epoch:", "",
             "| metric | per-seed differences | largest abs difference | spread over seeds (scratch std) | agree? |",
             "|---|---|---|---|---|"]
    for metric in ("loss", "train_acc", "test_acc"):
        diffs = paired(by_seed(t, None, metric), by_seed(s, None, metric))
        spread = describe(list(by_seed(s, None, metric).values()))
        if not diffs:
            lines.append(f"| {metric} | n/a | n/a | n/a | n/a |")
            continue
        largest = max(abs(d) for d in diffs)
        agree = "yes" if spread["n"] > 1 and largest < spread["std"] else "no" if spread["n"] > 1 else "?"
        lines.append(f"| {metric} | {', '.join(f'{d:+.2e}' for d in diffs)} | {largest:.2e} | "
                     f"{spread['std']:.2e} | {agree} |")
    return lines + ["", "They agree where the largest same-seed difference is below the spread over seeds: the "
                    "implementation then matters less than the seed.", ""]


def conventions_one_line(sweep: dict) -> str:
    effects = _effects(sweep)
    if not any(cols[1][0] for _, _, _, cols in effects):
        return "not enough finished runs yet"
    name, _, _, cols = max(effects[:-1], key=lambda e: abs(mean(e[3][1][0])) if e[3][1][0] else -1)
    impl = effects[-1][3][None][0]
    gap = f"; nn.BatchNorm vs scratch: final test acc differs by at most {max(abs(d) for d in impl):.3f}" if impl else ""
    return f"largest epoch-1 effect: {name}, {mean(cols[1][0]):+.3f} test acc{gap}"


ANSWERS = {"layers": layers, "placement": placement, "lite_bn": lite_bn, "conventions": conventions}
ONE_LINE = {"layers": layers_one_line, "placement": placement_one_line, "lite_bn": lite_bn_one_line,
            "conventions": conventions_one_line}
