"""The seed study's answer (the compare sweep, configs/sweeps/compare.toml): its sections of
results/sweeps/compare/report.md and their figures, made only from the runs' files.

Every number and every sentence that judges a number is computed here from the runs' files, so
``bn-lenet compare --report-only`` regenerates the same report from committed data. ``study`` is
{norm: [run, ...]}, each run as bn_lenet/sweeps/report.py loads it.
"""

import statistics
from pathlib import Path

from ..training import plots
from .. import published
from .stats import describe, final, finished, permutation_p, ranges_overlap, swing, welch_t

# The tutorial's published final figures (V100 builds; sources in published.py), placed in our distribution.
PUBLISHED = [(p.variant, p.source, p.loss, p.train_acc, p.test_acc) for p in published.RUNS]
PUBLISHED_RANGE = published.TEST_ACC_RANGE
LABELS = plots.LABELS
SWING_EPOCHS = 5
ALPHA = 0.05


def pm(d: dict, digits: int = 3) -> str:
    """'mean ± std (min..max)' of a describe() dict."""
    if not d or d.get("n", 0) == 0:
        return "n/a"
    f = f".{digits}f"
    return f"{d['mean']:{f}} ± {d['std']:{f}} ({d['min']:{f}}..{d['max']:{f}})"


def finals(runs: list, key: str) -> list:
    return [final(r, key) for r in finished(runs)]


def study_sections(study: dict, out) -> list:
    """Everything the report says beyond the sweep's generic table and provenance."""
    out = Path(out)
    curves = {v: [r["rows"] for r in finished(runs)] for v, runs in study.items() if finished(runs)}
    bn_variants = [v for v in ("scratch", "torch") if v in curves]
    epochs = max(len(rows) for rows_list in curves.values() for rows in rows_list) if curves else 0
    plots.swings({v: curves[v] for v in bn_variants}, out / "swings.png",
                 title="test accuracy with the moving vs re-estimated BN statistics")
    lines = [f"The tutorial's setup (LeNet, sigmoid, SGD lr 1.0, batch 256, {epochs} epochs, Xavier init) for "
             f"{', '.join(LABELS[v] for v in study)}, seeds {', '.join(str(r['seed']) for r in next(iter(study.values())))}. "
             "A seed fixes the initial weights and the order of the training batches; for a given seed the scratch "
             "and built-in runs start from the same weights and see the same batches. Test accuracy is measured "
             "every epoch in eval mode with the moving statistics, and for the BN variants also with the "
             "statistics re-estimated over the whole training set with the weights fixed (\"precise BN\", "
             "`eval.precise_bn`).", ""]
    lines += headline(study, bn_variants) + final_table(study) + [
        "## Learning curves", "", "![learning curves](curves.png)", "",
        "Line: mean over seeds; band: min..max over seeds. Where scratch and nn.BatchNorm coincide, the later "
        "drawn (nn.BatchNorm) hides the other.", ""]
    lines += beyond_noise(study) + swing_section(study, bn_variants, curves) + published_section(study)
    return lines + gamma_beta_section(study, out) + equivalence_section()


def headline(study, bn_variants) -> list:
    lines = ["## Headline", ""]
    for v in study:
        moving = describe(finals(study[v], "test_acc"))
        text = f"- {LABELS[v]}: final test acc {pm(moving)} with the moving statistics"
        if v in bn_variants:
            text += f", {pm(describe(finals(study[v], 'test_acc_precise')))} with re-estimated statistics"
        lines.append(text + f" (mean ± std (min..max) over {moving.get('n', 0)} finished runs).")
    return lines + [""]


def final_table(study) -> list:
    lines = ["## Final metrics per variant", "", "mean ± std (min..max) over the finished runs; loss and train acc "
             "are the running averages over the last epoch in train mode (as the tutorial prints them).", "",
             "| variant | finished | loss | train acc | test acc (moving) | test acc (re-estimated) | examples/sec |",
             "|---|---|---|---|---|---|---|"]
    for v, runs in study.items():
        cells = [pm(describe(finals(runs, k))) for k in ("loss", "train_acc", "test_acc", "test_acc_precise")]
        eps = describe(finals(runs, "examples_per_sec"))
        lines.append(f"| {LABELS[v]} | {len(finished(runs))} of {len(runs)} | " + " | ".join(cells) +
                     f" | {pm(eps, 0)} |")
    for v, runs in study.items():
        for r in runs:
            if r["status"] != "finished":
                m = r["meta"]
                where = f" at epoch {m['diverged_at_epoch']} (loss {m['diverged_loss']})" if "diverged_at_epoch" in m else ""
                lines.append(f"\n{LABELS[v]} seed {r['seed']}: **{r['status']}**{where}; left out of every average.")
    # The runs of a study follow one another, each on whatever else the machine was doing then: their
    # examples/sec are a by-product, not a benchmark (that one interleaves its runs in one process).
    note = ("examples/sec: training steps only, as the tutorial counts them, from runs made one after another; "
            "for speed comparisons see results/benchmark/, which interleaves its runs in one process.")
    return lines + ["", note, ""]


def beyond_noise(study) -> list:
    if not all(v in study and len(finished(study[v])) >= 2 for v in ("scratch", "torch")):
        return []
    lines = ["## Do scratch and built-in BN differ beyond seed noise?", "",
             "Welch's t (unequal variances) and an exact permutation test (every split of the pooled runs into two "
             "groups; no normality assumed) on the final figures; and whether the two ranges overlap.", "",
             "| final metric | scratch | nn.BatchNorm | difference of means | Welch t (df) | permutation p | ranges overlap |",
             "|---|---|---|---|---|---|---|"]
    verdicts = []
    for key, label in (("test_acc", "test acc (moving)"), ("test_acc_precise", "test acc (re-estimated)"),
                       ("loss", "loss"), ("train_acc", "train acc")):
        a, b = finals(study["scratch"], key), finals(study["torch"], key)
        t, df = welch_t(a, b)
        p = permutation_p(a, b)
        overlap = ranges_overlap(a, b)
        lines.append(f"| {label} | {pm(describe(a))} | {pm(describe(b))} | {statistics.fmean(a) - statistics.fmean(b):+.4f} "
                     f"| {t:+.2f} ({df:.1f}) | {p:.3f} | {'yes' if overlap else 'no'} |")
        verdicts.append((label, p, overlap))
    differ = [label for label, p, overlap in verdicts if p < ALPHA or not overlap]
    lines += [""]
    if differ:
        lines.append(f"**They differ** on {', '.join(differ)} (permutation p < {ALPHA} or ranges apart).")
    else:
        lines.append(f"**No difference beyond seed noise**: on every final metric the permutation p is >= {ALPHA} "
                     "and the ranges overlap.")
    return lines + [""] + same_seed_pairs(study) + [""]


def same_seed_pairs(study) -> list:
    """Scratch and built-in on the same seed start from the same weights and see the same batches."""
    pairs = [(a, b) for a in finished(study["scratch"]) for b in finished(study["torch"]) if a["seed"] == b["seed"]]
    if not pairs:
        return []
    lines = ["Same seed, same initial weights, same batches: the absolute difference of the train loss, scratch "
             "vs built-in, and each one's final test accuracy. In train mode the two layers compute the same "
             "function (see the equivalence tests): only float rounding differs; in eval mode the stored variance "
             "differs by the factor n/(n-1) of each batch's contribution (biased here, unbiased there).", "",
             "| seed | loss difference, epoch 1 | loss difference, last epoch | final test acc scratch (moving / "
             "re-estimated) | final test acc built-in (moving / re-estimated) |", "|---|---|---|---|---|"]
    for a, b in pairs:
        d = lambda k, i: abs(a["rows"][i][k] - b["rows"][i][k])  # noqa: E731
        acc = lambda r: f"{final(r, 'test_acc'):.4f} / {final(r, 'test_acc_precise'):.4f}"  # noqa: E731
        lines.append(f"| {a['seed']} | {d('loss', 0):.2e} | {d('loss', -1):.2e} | {acc(a)} | {acc(b)} |")
    largest = lambda k: max(abs(final(a, k) - final(b, k)) for a, b in pairs)  # noqa: E731
    lines += ["", f"Paired by seed, the sharper comparison: the largest same-seed difference of the final test "
              f"accuracy is {largest('test_acc'):.4f} with the moving statistics and {largest('test_acc_precise'):.4f} "
              f"re-estimated, of the final loss {largest('loss'):.1e}, against a spread over seeds of "
              f"{describe(finals(study['scratch'], 'test_acc'))['std']:.3f} (std of the scratch runs' final test acc)."]
    return lines


def swing_section(study, bn_variants, curves) -> list:
    if not bn_variants:
        return []
    lines = ["## Why test accuracy jumps: moving vs re-estimated statistics", "",
             "![test accuracy per epoch](swings.png)", "",
             "Mean over seeds of the test accuracy after each epoch (± std over seeds):", "",
             "| epoch | " + " | ".join(f"{LABELS[v]} moving | {LABELS[v]} re-estimated" for v in bn_variants) + " |",
             "|---|" + "---|---|" * len(bn_variants)]
    for i in range(max(len(rows) for v in bn_variants for rows in curves[v])):
        cells = []
        for v in bn_variants:
            for key in ("test_acc", "test_acc_precise"):
                d = describe([rows[i].get(key) for rows in curves[v] if len(rows) > i])
                cells.append(f"{d['mean']:.3f} ± {d['std']:.3f}" if d["n"] else "n/a")
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    lines += ["", f"Swing: the mean absolute epoch-to-epoch change of test accuracy over the last {SWING_EPOCHS} "
              "epochs of each run; then mean ± std (min..max) over seeds. Gain: re-estimated minus moving, "
              "final epoch, per seed.", "",
              "| variant | swing, moving | swing, re-estimated | final gain (re-estimated - moving) | seeds where re-estimated is higher |",
              "|---|---|---|---|---|"]
    findings = []
    for v in bn_variants:
        runs = finished(study[v])
        s_mov = describe([swing([r["test_acc"] for r in run["rows"]], SWING_EPOCHS) for run in runs])
        s_pre = describe([swing([r.get("test_acc_precise") for r in run["rows"]], SWING_EPOCHS) for run in runs])
        gains = [final(r, "test_acc_precise") - final(r, "test_acc") for r in runs]
        higher = sum(g > 0 for g in gains)
        lines.append(f"| {LABELS[v]} | {pm(s_mov, 4)} | {pm(s_pre, 4)} | {pm(describe(gains), 4)} | "
                     f"{higher} of {len(gains)} |")
        if s_mov.get("n") and s_pre.get("n"):
            steadier = "steadier" if s_pre["mean"] < s_mov["mean"] else "not steadier"
            better = "higher" if statistics.fmean(gains) > 0 else "not higher"
            findings.append(f"{LABELS[v]}: re-estimated statistics give a final test accuracy {better} on average "
                            f"({statistics.fmean(gains):+.4f}, higher in {higher} of {len(gains)} seeds) and "
                            f"{steadier} from epoch to epoch (swing {s_pre['mean']:.4f} vs {s_mov['mean']:.4f}).")
    return lines + [""] + [f"- {f}" for f in findings] + [""]


def published_section(study) -> list:
    lines = ["## Where the tutorial's published figures fall in our distribution", "",
             published.citation() + " \"k of n below\": how many of our finished runs have a lower value.", "",
             "| variant | source | published loss / train acc / test acc | our test acc (moving) | ours below the "
             "published test acc | our train acc | our loss |", "|---|---|---|---|---|---|---|"]
    for v, source, loss, train_acc, test_acc in PUBLISHED:
        if v not in study or not finished(study[v]):
            continue
        ours = finals(study[v], "test_acc")
        lines.append(f"| {LABELS[v]} | {source} | {loss:.3f} / {train_acc:.3f} / {test_acc:.3f} | {pm(describe(ours))} "
                     f"| {sum(x < test_acc for x in ours)} of {len(ours)} | {pm(describe(finals(study[v], 'train_acc')))} "
                     f"| {pm(describe(finals(study[v], 'loss')))} |")
    for v, (lo, hi) in PUBLISHED_RANGE.items():
        if v in study and finished(study[v]):
            d = describe(finals(study[v], "test_acc"))
            lines.append(f"\n{LABELS[v]}: published builds range {lo:.2f}-{hi:.2f} in test acc; ours "
                         f"{d['min']:.3f}-{d['max']:.3f} with the moving statistics, "
                         f"{pm(describe(finals(study[v], 'test_acc_precise')))} re-estimated.")
    return lines + [""]


def gamma_beta_section(study, out: Path) -> list:
    bn = {v: {r["seed"]: r["bn_params"] for r in finished(study[v]) if r["bn_params"]}
          for v in ("scratch", "torch") if v in study}
    bn = {v: p for v, p in bn.items() if p}
    if not bn:
        return []
    lines = ["## Learned gamma and beta", ""]
    common = sorted(set.intersection(*[set(p) for p in bn.values()]))
    if len(bn) == 2 and common:
        seed = common[0]
        plots.bn_same_seed(bn["scratch"][seed], bn["torch"][seed], ("scratch BN", "nn.BatchNorm"),
                           out / "bn_same_seed.png", title=f"gamma/beta per channel after the last epoch, seed {seed}")
        lines += [f"Same seed ({seed}): each point is one channel, scratch (x) against built-in (y).", "",
                  "![same seed](bn_same_seed.png)", ""]
        lines += same_seed_gap(study, seed)
    plots.bn_over_seeds(bn, out / "bn_over_seeds.png", title="gamma/beta per channel after the last epoch, "
                        "one box per run (s = scratch, t = nn.BatchNorm; seed)")
    histories = {v: {r["seed"]: r["bn_history"] for r in finished(study[v])} for v in bn}
    plots.bn_evolution(histories, out / "bn_evolution.png", title="gamma/beta over epochs: mean over channels, one "
                       "line per run (bold: first seed, with its min..max over channels as a band)")
    lines += ["Over seeds: one box per run.", "", "![over seeds](bn_over_seeds.png)", "",
              "Over epochs (from each run's bn_history.json; scratch solid, nn.BatchNorm dashed):", "", "![over epochs](bn_evolution.png)", "",
              "Per layer, over channels and over all finished seeds pooled: mean, std, min, max.", "",
              "| layer | param | " + " | ".join(f"{LABELS[v]} mean | std | min | max" for v in bn) + " |",
              "|---|---|" + "---|---|---|---|" * len(bn)]
    first = next(iter(next(iter(bn.values())).values()))
    for layer in first:
        for key in ("gamma", "beta"):
            cells = []
            for v in bn:
                d = describe([x for p in bn[v].values() for x in p[layer][key]])
                cells.append(f"{d['mean']:.3f} | {d['std']:.3f} | {d['min']:.3f} | {d['max']:.3f}")
            lines.append(f"| {layer} | {key} | " + " | ".join(cells) + " |")
    return lines + [""]


def same_seed_gap(study, seed) -> list:
    """Largest per-channel |scratch - built-in| of gamma and beta after each epoch, on one seed."""
    a = next(r for r in study["scratch"] if r["seed"] == seed)["bn_history"]
    b = next(r for r in study["torch"] if r["seed"] == seed)["bn_history"]
    lines = ["Largest per-channel |scratch - built-in| on that seed, after each epoch (0 would be identical):", "",
             "| epoch | " + " | ".join(a[0]["params"]) + " |", "|---|" + "---|" * len(a[0]["params"])]
    for ha, hb in zip(a, b):
        cells = [max(abs(x - y) for key in ("gamma", "beta")
                     for x, y in zip(ha["params"][layer][key], hb["params"][layer][key])) for layer in ha["params"]]
        lines.append(f"| {ha['epoch']} | " + " | ".join(f"{c:.2e}" for c in cells) + " |")
    return lines + [""]


def equivalence_section() -> list:
    return ["## Equivalence of the two layers (tests, not this study)", "",
            "`tests/test_equivalence.py` (extending `tests/test_batchnorm.py`) checks on every test run:", "",
            "- configured with PyTorch's conventions (`BatchNorm(momentum=0.9, unbiased=True)` here == "
            "`nn.BatchNorm1d/2d(momentum=0.1)`; in general our m == their 1 - m), the scratch layer matches in "
            "float64 to 1e-12: forward in train and eval mode, the gradients of input, gamma and beta in both "
            "modes, and the moving statistics after 300 steps of batch sizes 2 to 96 with drifting inputs;",
            "- two LeNets, one with each layer, from the same weights: identical SGD steps at lr 1.0 in float64 "
            "(losses to 1e-10, parameters and moving statistics to 1e-9), and on the real data in float32 the same "
            "per-batch loss curve over the first 40 batches of epoch 1 (to 1e-4) and the same test accuracy "
            "(to 0.002);",
            "- with the tutorial's conventions (the defaults) the differences are the documented ones (README: "
            "\"The scratch BatchNorm, and how it differs\"), "
            "each shown by a test that fails otherwise: the momentum number counts from the other end (0.9 vs "
            "0.1 give the same average; the same number gives a different one); eps is 1e-5 in both; the moving "
            "variance is biased here and unbiased there, and handing ours the unbiased variance removes every "
            "eval-mode difference; state names differ one to one (gamma/beta/moving_* vs weight/bias/running_*) "
            "and only nn.BatchNorm counts batches; only nn.BatchNorm has `affine`/`track_running_stats`; both "
            "refuse one value per channel in training;",
            "- precise BN (`reestimate_bn`) lands on exactly what `torch.optim.swa_utils.update_bn` computes for "
            "nn.BatchNorm (the average of per-batch statistics), on the same statistics for the scratch layer "
            "with `unbiased=True`, keeps the biased variance of the tutorial's layer, and leaves weights and the "
            "model's own statistics untouched.", "",
            "Run them with `python -m pytest tests/test_equivalence.py -v`.", ""]
