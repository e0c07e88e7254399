"""The batch_size and norm_kinds answers (bn_lenet/sweeps/answers_batch.py), on small sweeps built here whose answers
are known by construction: synthetic per-run metrics, no training. No figure here is a claim about real runs."""

import json
import math

from bn_lenet.sweeps import answers_batch
from bn_lenet.sweeps.answers import ANSWERS, ONE_LINE
from bn_lenet.sweeps.report import is_stuck

BATCHES = (16, 32, 64, 128, 256)


def make_run(values: dict, seed: int, status: str = "finished", rows=None) -> dict:
    run = {"point": ",".join(f"{k.rpartition('.')[2]}={v}" for k, v in values.items()), "values": values,
           "seed": seed, "status": status, "rows": rows or [], "meta": {"status": status}, "dir": None,
           "bn_history": [], "bn_params": {}}
    run["stuck"] = is_stuck(run)
    return run


def rows(acc: float, batch_acc=None, loss: float = 0.3, speed: float = 1000.0, epochs: int = 2) -> list:
    out = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "loss": loss, "train_acc": acc, "test_acc": acc, "examples_per_sec": speed, "seconds": 1.0}
        if batch_acc is not None:
            row["test_acc_batch_stats"] = batch_acc
        out.append(row)
    return out


def point(norm: str, batch: int, outcomes: list, gap: float | None = None, speed: float = 1000.0) -> tuple:
    """outcomes per seed: a final test accuracy, "stuck" (finite loss, chance), "diverged" or "running".
    ``gap``: the test accuracy with batch statistics is the moving one minus this (BN points)."""
    values = {"model.norm": norm, "train.batch_size": batch, "train.lr": batch / 256}
    runs = []
    for seed, o in enumerate(outcomes):
        if o == "stuck":
            runs.append(make_run(values, seed, rows=rows(0.10, loss=math.log(10))))
        elif o in ("diverged", "running"):
            runs.append(make_run(values, seed, status=o, rows=rows(0.5)[:1]))
        else:
            runs.append(make_run(values, seed, rows=rows(o, None if gap is None else o - gap, speed=speed)))
    return values, runs


def make_sweep(points: list, out=None) -> dict:
    pts = [{"id": runs[0]["point"], "values": values, "runs": runs} for values, runs in points]
    return {"spec": {"name": "t"}, "out": out, "points": pts, "runs": [r for p in pts for r in p["runs"]],
            "lead": ["test_acc"], "metrics": ["loss", "train_acc", "test_acc"], "keys": list(points[0][0])}


def seeds(m: float) -> list:
    """Three seeds around ``m``: std 0.005."""
    return [m - 0.005, m, m + 0.005]


def batch_sweep(bn: dict, group=None, layer=None, out=None, extra=()) -> dict:
    """bn / group / layer: {batch: mean final test acc} (3 seeds each, std 0.005); BN with a gap of 0.02 at
    batch 16, 0.01 elsewhere, between the moving and the batch-statistics test accuracy."""
    points = [point("scratch", b, seeds(m), gap=0.02 if b == 16 else 0.01) for b, m in bn.items()]
    for norm, curve in (("group", group), ("layer", layer)):
        points += [point(norm, b, seeds(m)) for b, m in (curve or {}).items()]
    return make_sweep(points + list(extra), out=out)


FALLING = {16: 0.70, 32: 0.80, 64: 0.877, 128: 0.88, 256: 0.88}  # 64: 0.003 below, within the 0.005 std
FLAT = {b: 0.86 for b in BATCHES}


def test_both_answers_are_registered_with_their_one_lines():
    assert ANSWERS["batch_size"] is answers_batch.batch_size
    assert ONE_LINE["batch_size"] is answers_batch.batch_size_one_line
    assert ANSWERS["norm_kinds"] is answers_batch.norm_kinds
    assert ONE_LINE["norm_kinds"] is answers_batch.norm_kinds_one_line


def test_a_falling_bn_curve_is_found_where_it_falls(tmp_path):
    sweep = batch_sweep(FALLING, group=FLAT, layer={**FLAT, 16: 0.80}, out=tmp_path)
    f = answers_batch.falloff(answers_batch.grid(sweep)["scratch"])
    assert f["holds_to"] == 64 and f["short"] == [16, 32]
    text = "\n".join(answers_batch.batch_size(sweep))
    assert text.startswith("## Answer")
    assert "**falls off below batch 64**" in text
    assert "at batch 32 it is 0.800 ± 0.005 (n=3), 0.080 below its best" in text
    assert "at batch 16 it is 0.700 ± 0.005 (n=3), 0.180 below its best" in text
    assert "GroupNorm **holds up** at batch 16" in text and "LayerNorm **falls short** at batch 16" in text
    assert "lr = batch / 256" in text and "falls short* of the best" in text  # the rule is stated
    assert "This agrees with the GroupNorm paper" in text
    assert "keep the batch at 64 or more" in text
    assert "the best mean is GroupNorm's (0.860 ± 0.005 (n=3)); short of it: BN, LayerNorm." in text
    assert (tmp_path / answers_batch.ACC_FIGURE).is_file() and (tmp_path / answers_batch.STATS_FIGURE).is_file()
    assert answers_batch.batch_size_one_line(sweep) == ("BN falls off below batch 64, BN 0.700 at batch 16, "
                                                        "GroupNorm 0.860 at batch 16, LayerNorm 0.800 at batch 16")


def test_a_drop_within_the_seeds_spread_is_not_a_fall_off():
    sweep = batch_sweep({16: 0.876, 32: 0.878, 64: 0.877, 128: 0.88, 256: 0.88}, group=FLAT)
    f = answers_batch.falloff(answers_batch.grid(sweep)["scratch"])
    assert f["holds_to"] == 16 and f["short"] == []
    text = "\n".join(answers_batch.batch_size(sweep))
    assert "BN does **not** fall off: down to batch 16, the smallest" in text
    assert "Where this disagrees with the GroupNorm paper: BN's error does **not** rise" in text
    assert "BN holds down to batch 16" in answers_batch.batch_size_one_line(sweep)


def test_gn_falling_too_is_said_to_disagree_with_the_paper():
    sweep = batch_sweep(FALLING, group={**FLAT, 16: 0.75})
    text = answers_batch.paper_sentence(answers_batch.grid(sweep))
    assert "GroupNorm's does **not** stay flat" in text and "BN's error does **not** rise" not in text


def test_the_gap_between_moving_and_batch_statistics_is_given_per_size():
    sweep = batch_sweep(FALLING)
    text = "\n".join(answers_batch.batch_size(sweep))
    assert "16: +0.020 ± 0.000; 32: +0.010 ± 0.000" in text and "widest at batch 16" in text
    row16 = next(line for line in text.splitlines() if line.startswith("| 16 |"))
    assert "| 0.0625 |" in row16 and "+0.020 ± 0.000 (n=3)" in row16


def test_diverged_and_stuck_are_named_apart_and_a_diverged_point_falls_short():
    bn = {b: 0.88 for b in (32, 64, 128, 256)}
    sweep = batch_sweep(bn, extra=[point("scratch", 16, ["diverged", "diverged", 0.88]),
                                   point("group", 16, ["stuck", "stuck", "stuck"]),
                                   point("group", 256, seeds(0.86))])
    curves = answers_batch.grid(sweep)
    assert answers_batch.falloff(curves["scratch"])["short"] == [16]
    text = "\n".join(answers_batch.batch_size(sweep))
    assert "2 of 3 runs diverged (loss or weights inf/NaN)" in text
    assert "3 of 3 stuck at chance (finite loss" in text
    assert "GroupNorm **falls short** at batch 16: 0.100 ± 0.000 (n=3)" in text


def test_runs_not_done_make_the_answer_provisional_and_are_not_judged():
    sweep = batch_sweep({32: 0.88, 64: 0.88, 256: 0.88}, extra=[point("scratch", 16, ["running"] * 3)])
    f = answers_batch.falloff(answers_batch.grid(sweep)["scratch"])
    assert f["short"] == [] and f["holds_to"] == 32  # 16 has nothing to judge yet
    text = "\n".join(answers_batch.batch_size(sweep))
    assert "**Provisional: 3 of 12 runs are not done**" in text and "3 of 3 not done yet" in text
    assert "provisional: 3 runs not done" in answers_batch.batch_size_one_line(sweep)


def test_a_best_at_the_fall_off_and_norms_not_done_at_the_smallest_batch_are_said_as_such():
    sweep = batch_sweep({16: 0.70, 64: 0.88, 256: 0.80}, extra=[point("group", 16, ["running"] * 3)])
    text = "\n".join(answers_batch.batch_size(sweep))
    assert "**falls off below batch 64**: its best, 0.880 ± 0.005 (n=3) at batch 64; at batch 16 it is 0.700" in text
    assert "At batch 16 the best mean is BN's (0.700 ± 0.005 (n=3)); not done yet: GroupNorm." in text


# --- norm_kinds -----------------------------------------------------------------------------------------

def kinds_sweep(at16: dict, at256: dict, speeds: dict, out=None) -> dict:
    return make_sweep([point(n, b, seeds(m), gap=0.01 if n == "scratch" else None, speed=speeds[n])
                       for b, accs in ((256, at256), (16, at16)) for n, m in accs.items()], out=out)


SPEEDS = {"scratch": 600.0, "layer": 800.0, "group": 700.0, "none": 1000.0}


def test_norm_kinds_picks_the_best_per_batch_and_says_who_is_within_spread():
    sweep = kinds_sweep(at16={"scratch": 0.80, "layer": 0.86, "group": 0.865, "none": 0.84},
                        at256={"scratch": 0.88, "layer": 0.85, "group": 0.86, "none": 0.83}, speeds=SPEEDS)
    text = "\n".join(answers_batch.norm_kinds(sweep))
    assert "At batch 256 use **BN**: 0.880 ± 0.005 (n=3); short of it: LayerNorm" in text
    assert "At batch 16 use **GroupNorm**: 0.865 ± 0.005 (n=3); within spread of it: LayerNorm 0.860" in text
    assert "short of it: BN 0.800 ± 0.005 (n=3), no norm 0.840" in text
    assert "BN 0.60x, LayerNorm 0.80x, GroupNorm 0.70x" in text  # examples/s over no norm's 1000
    assert "| 16 | GroupNorm | 700 ± 0 (n=3) | 0.70x |" in text
    assert "LayerNorm is the fastest of them" in text
    assert answers_batch.norm_kinds_one_line(sweep) == ("batch 256: BN 0.880, 0.60x no norm's examples/s; "
                                                        "batch 16: GroupNorm 0.865, 0.70x no norm's examples/s")


def test_norm_kinds_reads_how_many_runs_shared_the_machine_from_sweep_json(tmp_path):
    sweep = kinds_sweep(at16={"none": 0.84}, at256={"none": 0.83}, speeds=SPEEDS, out=tmp_path)
    assert "is not recorded" in "\n".join(answers_batch.norm_kinds(sweep))
    (tmp_path / "sweep.json").write_text(json.dumps({"provenance": {"invocations": [
        {"executor": "local", "jobs": 2, "threads_per_run": 1}]}}))
    text = "\n".join(answers_batch.norm_kinds(sweep))
    assert "Measured with 2 runs side by side, 1 torch thread(s) each (sweep.json): the runs shared" in text


def test_the_examples_per_sec_of_a_run_weighs_every_epoch_by_its_step_time():
    values, runs = point("none", 256, [0.8])
    runs[0]["rows"][0]["examples_per_sec"], runs[0]["rows"][1]["examples_per_sec"] = 1000.0, 500.0
    # the same examples per epoch: 2 epochs over 1/1000 + 1/500 of time per example
    assert math.isclose(answers_batch.speed({"runs": runs})[0], 2 / (1 / 1000 + 1 / 500))


def test_batch_statistics_beating_the_moving_ones_points_to_re_estimating_them():
    sweep = make_sweep([point("scratch", 16, seeds(0.80), gap=-0.03), point("scratch", 256, seeds(0.88), gap=0.0)])
    text = "\n".join(answers_batch.batch_size(sweep))
    assert "16: -0.030 ± 0.000" in text
    assert "0.030 below the test batches' own statistics" in text and "eval.precise_bn" in text


def test_norm_kinds_with_runs_not_done_is_provisional_and_names_them():
    sweep = make_sweep([point("scratch", 256, seeds(0.88), gap=0.01, speed=600.0), point("layer", 256, seeds(0.80)),
                        point("none", 256, ["running"] * 3), point("scratch", 16, [0.80, "running", "running"])])
    text = "\n".join(answers_batch.norm_kinds(sweep))
    assert "**Provisional: 5 of 12 runs are not done**" in text
    assert "At batch 256 the best so far is **BN**" in text and "not done yet: no norm" in text
    assert "At batch 16, only BN has finished runs so far." in text
    assert "ahead of every other norm done so far (not yet: no norm)" in text
    assert "| 256 | no norm | n/a | n/a |" in text and "| 256 | BN | 600 ± 0 (n=3) | n/a |" in text
    assert answers_batch.norm_kinds_one_line(sweep).endswith("(provisional: 5 runs not done)")


def test_a_lower_mean_whose_seeds_overlap_the_best_is_within_spread():
    """The rule of every study: LayerNorm's mean is 0.016 below BN's, more than either std, but its best seed
    (0.885) beats BN's worst (0.884): the seeds cannot tell them apart. GroupNorm's seeds all lie below BN's."""
    sweep = make_sweep([point("scratch", 16, [0.884, 0.893, 0.895]), point("layer", 16, [0.858, 0.882, 0.885]),
                        point("group", 16, [0.860, 0.870, 0.880])])
    text = "\n".join(answers_batch.norm_kinds(sweep))
    assert "At batch 16 use **BN**: 0.891 ± 0.006 (n=3); within spread of it: LayerNorm 0.875 ± 0.015 (n=3)" in text
    assert "short of it: GroupNorm 0.870 ± 0.010 (n=3)" in text


def test_norm_kinds_says_when_the_moving_statistics_hold_bn_down():
    """At batch 256 BN's batch-statistics accuracy (0.88) lies above its moving one (0.80) on every seed."""
    sweep = make_sweep([point("scratch", 256, seeds(0.80), gap=-0.08), point("none", 256, seeds(0.79)),
                        point("scratch", 16, seeds(0.88), gap=0.0), point("none", 16, seeds(0.80))])
    text = "\n".join(answers_batch.norm_kinds(sweep))
    assert ("BN's own figure at batch 256 is held down by its moving statistics: with each test batch's own "
            "statistics it reaches 0.880 ± 0.005 (n=3) against 0.800 ± 0.005 (n=3)") in text
    assert "at batch 16 is held down" not in text


def test_batch_size_names_a_fall_at_the_largest_batch_and_who_loses_least():
    """With lr = batch / 256 the largest batch trains at the largest lr: BN drops 0.04 there, GroupNorm 0.15."""
    sweep = make_sweep([point("scratch", 16, seeds(0.89)), point("scratch", 256, seeds(0.89)),
                        point("scratch", 1024, seeds(0.85)), point("group", 16, seeds(0.88)),
                        point("group", 256, seeds(0.87)), point("group", 1024, seeds(0.73))])
    text = "\n".join(answers_batch.batch_size(sweep))
    assert ("Where the accuracy does fall here is at the largest batch, 1024, with its lr scaled up to 4: BN 0.850 "
            "± 0.005 (n=3), below its best") in text
    assert "GroupNorm 0.730 ± 0.005 (n=3), below its best 0.880 ± 0.005 (n=3) at batch 16" in text
    assert "BN loses the least there (0.040 below its best)." in text


def test_batch_size_one_line_names_the_fall_at_the_largest_batch():
    sweep = make_sweep([point("scratch", 16, seeds(0.89)), point("scratch", 1024, seeds(0.85)),
                        point("group", 16, seeds(0.88)), point("group", 1024, seeds(0.73))])
    assert answers_batch.batch_size_one_line(sweep) == ("BN holds down to batch 16, BN 0.890 at batch 16, GroupNorm "
                                                        "0.880 at batch 16, at batch 1024 (lr 4) BN 0.850, "
                                                        "GroupNorm 0.730")
