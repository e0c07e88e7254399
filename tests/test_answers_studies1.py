"""The answers of the lr, test_stats and gradients studies (issue 11), on small sweeps built here whose
answers are known by construction: no training, each test a fraction of a second."""

import json
import math
import statistics

from bn_lenet.sweeps import answer_gradients, answer_lr, answer_test_stats
from bn_lenet.sweeps.answers import ANSWERS, ONE_LINE
from bn_lenet.sweeps.report import is_stuck


def make_run(values: dict, seed: int, status: str = "finished", rows=None, directory=None) -> dict:
    run = {"point": ",".join(f"{k.rpartition('.')[2]}={v}" for k, v in values.items()), "values": values,
           "seed": seed, "status": status, "rows": rows or [], "meta": {"status": status}, "dir": directory,
           "bn_history": [], "bn_params": {}}
    run["stuck"] = is_stuck(run)
    return run


def final_rows(acc: float, loss: float = 0.4, epochs: int = 3) -> list:
    return [{"epoch": e, "loss": loss, "train_acc": acc, "test_acc": acc, "examples_per_sec": 1000.0, "seconds": 1.0}
            for e in range(1, epochs + 1)]


def make_sweep(points: list, lead=("test_acc",), out=None) -> dict:
    """points: [(values, [run, ...]), ...] -> the dict bn_lenet.sweeps.report.load_sweep gives the answers."""
    pts = [{"id": runs[0]["point"], "values": values, "runs": runs} for values, runs in points]
    return {"spec": {"name": "t"}, "out": out, "points": pts, "runs": [r for p in pts for r in p["runs"]],
            "lead": list(lead), "metrics": ["loss", "train_acc", "test_acc"], "keys": list(points[0][0])}


# --- lr ---------------------------------------------------------------------------------------------------

def lr_point(norm: str, lr: float, outcomes: list) -> tuple:
    """outcomes per seed: a final test accuracy, "stuck" (finished at chance, loss ln 10), "diverged" or "running"."""
    values = {"model.norm": norm, "train.lr": lr}
    runs = []
    for seed, o in enumerate(outcomes):
        if o == "stuck":
            runs.append(make_run(values, seed, rows=final_rows(0.10, loss=math.log(10))))
        elif o in ("diverged", "running"):
            runs.append(make_run(values, seed, status=o, rows=final_rows(0.5)[:1]))
        else:
            runs.append(make_run(values, seed, rows=final_rows(o)))
    return values, runs


def lr_sweep(extra=()) -> dict:
    """No BN trains at lr 1 only (stuck below, diverged above); scratch BN trains at 0.1, 1 and 10 (the top)."""
    return make_sweep([
        lr_point("none", 0.1, ["stuck"] * 3),
        lr_point("none", 1, [0.80, 0.81, 0.79]),
        lr_point("none", 10, ["diverged"] * 3),
        lr_point("scratch", 0.1, [0.85, 0.86, 0.84]),
        lr_point("scratch", 1, [0.88, 0.89, 0.87]),
        lr_point("scratch", 10, [0.72, 0.74, 0.76]),
        *extra])


def test_lr_is_registered_with_its_one_line():
    assert ANSWERS["lr"] is answer_lr.answer and ONE_LINE["lr"] is answer_lr.one_line


def test_lr_largest_that_trains_best_and_ratio_are_read_from_the_runs():
    norms = answer_lr.by_norm(lr_sweep())
    assert answer_lr.largest(norms["none"])["lr"] == 1
    assert answer_lr.largest(norms["scratch"])["lr"] == 10
    assert answer_lr.best(norms["scratch"])["lr"] == 1
    r = answer_lr.ratio(norms["scratch"], norms["none"])
    assert r["value"] == 10 and r["bn_at_top"] and math.isinf(r["high"]) and r["low"] == 1
    text = "\n".join(answer_lr.answer(lr_sweep()))
    assert text.startswith("## Answer")
    assert "no BN trains up to lr **1**" in text and "scratch BN trains up to lr **10**" in text
    assert "at least 10x" in text and "lower than the BN paper's 30x" in text
    assert "0.880 ± 0.010 (n=3)" in text  # scratch BN's best: mean and sample std of 0.88, 0.89, 0.87


def test_lr_trains_needs_every_seed_sound_and_the_mean_at_least_0_70():
    one_stuck = answer_lr.verdict({"values": {"model.norm": "none", "train.lr": 3},
                                   "runs": lr_point("none", 3, [0.99, 0.99, 0.99, "stuck"])[1]})
    assert one_stuck["acc"]["mean"] > 0.70 and not one_stuck["trains"]
    one_diverged = answer_lr.verdict({"values": {"model.norm": "none", "train.lr": 3},
                                      "runs": lr_point("none", 3, [0.9, 0.9, "diverged"])[1]})
    assert not one_diverged["trains"]
    low = answer_lr.verdict({"values": {"model.norm": "none", "train.lr": 3}, "runs": lr_point("none", 3, [0.69] * 3)[1]})
    assert not low["trains"]
    at = answer_lr.verdict({"values": {"model.norm": "none", "train.lr": 3}, "runs": lr_point("none", 3, [0.71] * 3)[1]})
    assert at["trains"]


def test_lr_table_tells_diverged_from_stuck_per_lr():
    text = "\n".join(answer_lr.answer(lr_sweep()))
    row = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert "stuck 3/3 (loss 2.3)" in row["| 0.1"] and "diverged" not in row["| 0.1"].split(" | ")[1]
    assert "diverged 3/3" in row["| 10"].split(" | ")[1] and "stuck" not in row["| 10"].split(" | ")[1]
    assert "**trains**" in row["| 10"].split(" | ")[2]
    assert "test_acc_vs_lr.png" in text  # the engine's figure, shown here once


def test_lr_ratio_of_30_or_more_agrees_with_the_paper():
    sweep = make_sweep([lr_point("none", 0.1, [0.8] * 3), lr_point("none", 1, ["stuck"] * 3),
                        lr_point("scratch", 0.1, [0.85] * 3), lr_point("scratch", 3, [0.85] * 3),
                        lr_point("scratch", 10, ["diverged"] * 3)])
    r = answer_lr.ratio(answer_lr.by_norm(sweep)["scratch"], answer_lr.by_norm(sweep)["none"])
    assert r["value"] == 30 and r["low"] == 3 and math.isclose(r["high"], 100)
    text = "\n".join(answer_lr.answer(sweep))
    assert "as high as or higher than the BN paper's 30x" in text and "do not reproduce" not in text


def test_lr_unfinished_runs_make_the_answer_provisional():
    sweep = lr_sweep(extra=[lr_point("scratch", 30, ["running", 0.8, 0.8])])
    text = "\n".join(answer_lr.answer(sweep))
    assert "**Provisional: 1 of 21 runs are not done**" in text
    assert "provisional" in answer_lr.one_line(sweep)
    assert "provisional" not in answer_lr.one_line(lr_sweep())


def test_lr_one_line_gives_each_norms_largest_lr_and_the_ratio():
    line = answer_lr.one_line(lr_sweep())
    assert "no BN trains up to lr 1 (best 0.800" in line and "scratch BN trains up to lr 10" in line
    assert "at least 10x" in line and "\n" not in line


# --- test_stats -------------------------------------------------------------------------------------------

def epochs_rows(moving: list, precise: list, batch: list) -> list:
    return [{"epoch": e + 1, "loss": 0.3, "train_acc": 0.9, "test_acc": m, "test_acc_precise": p,
             "test_acc_batch_stats": b, "examples_per_sec": 1000.0, "seconds": 1.0}
            for e, (m, p, b) in enumerate(zip(moving, precise, batch))]


def ts_point(values: dict, per_seed: list) -> tuple:
    """per_seed: [(moving per epoch, precise per epoch, batch per epoch), ...]"""
    return values, [make_run(values, s, rows=epochs_rows(*curves)) for s, curves in enumerate(per_seed)]


def zigzag(low: float, high: float, n: int = 6) -> list:
    return [low if e % 2 else high for e in range(n)]


def flat(v: float, n: int = 6) -> list:
    return [v] * n


def ts_sweep(precise_swings: bool, tmp_path=None, target_final=(0.881, 0.882, 0.883, 0.884, 0.885)) -> dict:
    """lr 1: the moving statistics zigzag 0.80/0.86; precise BN and batch statistics zigzag alike when
    ``precise_swings`` (the weights move), else stay flat at 0.85 (the statistics lag). lr 0.1: every
    statistic flat, precise BN ending at ``target_final`` per seed."""
    ref = [(zigzag(0.80, 0.86), zigzag(0.80, 0.86) if precise_swings else flat(0.85),
            zigzag(0.80, 0.86) if precise_swings else flat(0.85))] * 5
    low = [(flat(0.85), flat(v), flat(0.85)) for v in target_final]
    return make_sweep([ts_point({"train.lr": 1.0, "bn.momentum": 0.9}, ref),
                       ts_point({"train.lr": 0.1, "bn.momentum": 0.9}, low)], out=tmp_path)


def test_test_stats_is_registered_with_its_one_line():
    assert ANSWERS["test_stats"] is answer_test_stats.answer and ONE_LINE["test_stats"] is answer_test_stats.one_line


def test_test_stats_swing_that_precise_bn_removes_is_the_moving_statistics(tmp_path):
    text = "\n".join(answer_test_stats.answer(ts_sweep(precise_swings=False, tmp_path=tmp_path)))
    assert text.startswith("## Answer")
    # sample std of the last 5 epochs of 0.86, 0.80, 0.86, 0.80, 0.86 (the 6-epoch zigzag's tail)
    expected = statistics.stdev([0.80, 0.86, 0.80, 0.86, 0.80])
    assert f"swings by {expected:.4f} with the moving statistics, 0.0000 with precise BN" in text
    assert "**mostly the moving statistics lagging" in text
    assert (tmp_path / answer_test_stats.FIGURE).is_file()


def test_test_stats_swing_that_stays_with_precise_bn_is_the_weights():
    text = "\n".join(answer_test_stats.answer(ts_sweep(precise_swings=True)))
    assert "**mostly the weights moving" in text and "precise BN keeps 100% of the swing" in text
    assert "Do not blame the moving statistics" in text


def test_test_stats_names_the_setting_that_meets_mean_0_88_and_std_0_005():
    text = "\n".join(answer_test_stats.answer(ts_sweep(precise_swings=False)))
    assert "is met by: **lr 0.1, momentum 0.9** with precise BN (0.8830 ± 0.0016, n=5)" in text
    line = answer_test_stats.one_line(ts_sweep(precise_swings=False))
    assert line == ("lr 1 swing 0.033 (moving) vs 0.000 (precise BN): mostly the moving statistics; "
                    "mean >= 0.88, std <= 0.005 met by lr 0.1, momentum 0.9 (0.883 ± 0.002, precise BN)")


def test_test_stats_says_how_close_the_best_gets_when_none_meets_it():
    spread = ts_sweep(precise_swings=False, target_final=(0.87, 0.88, 0.89, 0.90, 0.91))  # mean 0.89, std 0.0158
    text = "\n".join(answer_test_stats.answer(spread))
    assert "No setting meets" in text and "met by" not in text
    assert "the closest is **lr 0.1, momentum 0.9** with precise BN: 0.8900 ± 0.0158" in text
    assert "std 0.0158 > 0.005" in text and "mean 0.8900 <" not in text
    assert "the runs are steady but the seeds end at different accuracies" in text  # flat curves, seeds apart
    line = answer_test_stats.one_line(spread)
    assert line.endswith("not met; closest lr 0.1, momentum 0.9 (0.890 ± 0.016, precise BN)") and len(line) < 200


# --- gradients --------------------------------------------------------------------------------------------

def grad_point(tmp_path, norm: str, activation: str, lr: float, first: float, last: float, acc: float) -> tuple:
    """3 seeds whose grad_norms.jsonl (GradNorms' own names for this norm) give conv1 ``first`` and fc3 ``last``
    at epoch 1 and half of each at epoch 2; the other weights 1.0, gamma/beta 1000 (never compared)."""
    from bn_lenet.network.model import lenet
    from bn_lenet.training.train import GradNorms
    names = GradNorms(lenet(norm)).names
    values = {"model.norm": norm, "model.activation": activation, "train.lr": lr}
    runs = []
    for seed in range(3):
        d = tmp_path / f"{norm}-{activation}-{lr}" / f"seed-{seed}"
        d.mkdir(parents=True)
        rows = []
        for epoch, scale in ((1, 1.0), (2, 0.5)):
            row = {"epoch": epoch, **{n: (1000.0 if not n.endswith(".weight") else 1.0) for n in names}}
            row["conv1.conv.weight"], row["fc3.weight"] = first * scale, last * scale * (1 + 0.1 * seed)
            rows.append(row)
        (d / "grad_norms.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs.append(make_run(values, seed, rows=final_rows(acc, epochs=2), directory=d))
    return values, runs


def grad_sweep(tmp_path) -> dict:
    """Sigmoid: BN raises the conv1/fc3 ratio (0.01 -> 0.5) and the accuracy: follows. ReLU: BN lowers the ratio
    (2 -> 1) yet raises the accuracy: does not follow."""
    return make_sweep([grad_point(tmp_path, "none", "sigmoid", 1.0, 0.001, 0.1, 0.80),
                       grad_point(tmp_path, "scratch", "sigmoid", 1.0, 0.05, 0.1, 0.88),
                       grad_point(tmp_path, "none", "relu", 1.0, 0.2, 0.1, 0.85),
                       grad_point(tmp_path, "scratch", "relu", 1.0, 0.1, 0.1, 0.89)], out=tmp_path)


def test_gradients_is_registered_with_its_one_line():
    assert ANSWERS["gradients"] is answer_gradients.answer and ONE_LINE["gradients"] is answer_gradients.one_line


def test_gradients_ratio_is_first_conv_over_last_linear_weight_per_run(tmp_path):
    sweep = grad_sweep(tmp_path)
    g = answer_gradients.point_grads(sweep["points"][0])
    assert g["layers"] == ["conv1.conv.weight", "conv2.conv.weight", "fc1.linear.weight", "fc2.linear.weight",
                           "fc3.weight"]
    expected = [0.001 / (0.1 * (1 + 0.1 * s)) for s in range(3)]
    assert math.isclose(g["ratio_first"]["mean"], statistics.fmean(expected))
    assert math.isclose(g["ratio_last"]["mean"], statistics.fmean(expected))  # both halve at epoch 2
    assert "bn.gamma" not in " ".join(answer_gradients.point_grads(sweep["points"][1])["layers"])


def test_gradients_answer_says_where_the_accuracy_follows_the_gradient_change(tmp_path):
    text = "\n".join(answer_gradients.answer(grad_sweep(tmp_path)))
    assert text.startswith("## Answer")
    assert ("**The accuracy gain follows the gradient change in 1 of the 2 (activation, lr) pairs where BN changes "
            "the final test accuracy beyond seed noise**") in text
    assert "not at relu lr 1" in text and "not at sigmoid" not in text
    assert "With sigmoid at lr 1, BN raises the first/last gradient ratio at epoch 1 50x" in text
    assert "the sigmoid starves its first layer more" in text  # 0.009 vs 1.8 without BN
    assert "holds only in part" in text
    assert (tmp_path / answer_gradients.FIGURE).is_file()
    line = answer_gradients.one_line(grad_sweep(tmp_path / "again"))
    assert "in 1 of the 2 cases beyond seed noise" in line


def test_gradients_an_accuracy_change_within_seed_noise_counts_neither_way(tmp_path):
    """ReLU: BN lowers the ratio and changes the accuracy by +0.01 while the seeds overlap: within noise, not
    'against'."""
    none_values, none_runs = grad_point(tmp_path, "none", "relu", 1.0, 0.2, 0.1, 0.85)
    bn_values, bn_runs = grad_point(tmp_path, "scratch", "relu", 1.0, 0.1, 0.1, 0.86)
    for run, acc in zip(none_runs, (0.80, 0.85, 0.90)):  # seeds spread over 0.80..0.90
        run["rows"][-1]["test_acc"] = acc
    text = "\n".join(answer_gradients.answer(make_sweep([(none_values, none_runs), (bn_values, bn_runs)],
                                                        out=tmp_path)))
    assert "follows the gradient change in 0 of the 0 (activation, lr) pairs" in text
    assert "within seed noise at relu lr 1 (+0.010)" in text and "not at relu" not in text


def test_gradients_without_grad_norms_says_so(tmp_path):
    values, runs = lr_point("none", 1, [0.8, 0.8])
    text = "\n".join(answer_gradients.answer(make_sweep([(values, runs)])))
    assert "No finished run has a grad_norms.jsonl" in text


def test_lr_a_point_within_one_std_of_0_70_is_called_borderline():
    sweep = make_sweep([lr_point("none", 0.3, [0.68, 0.70, 0.74]), lr_point("none", 1, [0.80, 0.81, 0.79])])
    text = "\n".join(answer_lr.answer(sweep))
    assert "trains at lr 0.3 (borderline), 1)" in text
