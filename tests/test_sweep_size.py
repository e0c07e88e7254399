"""Sweeps of any size start or refuse at once: the number of runs comes from the spec's lengths before anything
is built; above --max-runs (default 10,000) one error line gives the count and the flag that confirms it."""

import time
import tracemalloc
from pathlib import Path

from bn_lenet.cli import main
from bn_lenet.sweeps import spec as spec_mod
from bn_lenet.sweeps import sweep as sweep_mod
from helpers import one_error_line

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "scratch_bn.toml"
TYPO = f"""
config = "{CONFIG}"
seeds = 1000
[grid]
"train.lr" = {[v / 10 for v in range(1, 11)]}
"train.epochs" = {list(range(1, 11))}
"train.batch_size" = {list(range(16, 26))}
"eval.batch_size" = {list(range(100, 110))}
"""  # every point valid: 10,000 points x 1,000 seeds


def test_ten_million_runs_are_refused_at_once_with_their_count_and_the_flag(tmp_path, capsys):
    spec = tmp_path / "typo.toml"
    spec.write_text(TYPO)
    main(["sweep", str(CONFIG), "--seeds", "10001", "--out", str(tmp_path / "out")])  # the modules imported first
    capsys.readouterr()
    tracemalloc.start()
    started = time.perf_counter()
    code = main(["sweep", str(spec), "--out", str(tmp_path / "out")])
    seconds, (_, peak) = time.perf_counter() - started, tracemalloc.get_traced_memory()
    tracemalloc.stop()
    one_error_line(capsys, code, "this sweep plans 10,000,000 runs", "10 x 10 x 10 x 10 grid", "1,000 seed(s)",
                   "--max-runs 10,000", "confirm the count with --max-runs 10000000")
    assert seconds < 1.0 and peak < 20e6  # before: over 60 s and 1.3 GB without a word
    assert not (tmp_path / "out").exists()


def test_a_billion_seeds_are_counted_not_listed(tmp_path, capsys):
    started = time.perf_counter()
    code = main(["sweep", str(CONFIG), "--seeds", str(10 ** 9), "--out", str(tmp_path / "out")])
    one_error_line(capsys, code, "this sweep plans 1,000,000,000 runs")
    assert time.perf_counter() - started < 1.0


def test_max_runs_confirms_a_larger_sweep_which_says_its_count_before_planning(tmp_path, capsys, monkeypatch):
    argv = ["sweep", str(CONFIG), "--grid", "train.lr=0.1,1", "--seeds", "3", "--out", str(tmp_path / "out"),
            "--report-only"]
    one_error_line(capsys, main([*argv, "--max-runs", "5"]), "this sweep plans 6 runs", "--max-runs 6")
    printed_before_planning = []
    real_plan = sweep_mod.plan
    monkeypatch.setattr(sweep_mod, "plan", lambda *a: printed_before_planning.append(
        (capsys.readouterr().out, time.perf_counter() - started)) or real_plan(*a))
    started = time.perf_counter()
    one_error_line(capsys, main([*argv, "--max-runs", "6"]), "no sweep in")  # planned, then: nothing to report
    [(printed, seconds)] = printed_before_planning
    assert printed == f"sweep scratch_bn: 6 runs (3 seeds x 2 points) -> {tmp_path / 'out'}\n" and seconds < 1.0
    one_error_line(capsys, main([*argv, "--max-runs", "0"]), "--max-runs 0: give the number of runs to allow")


def test_the_default_limit_allows_ten_thousand_runs():
    spec = {"grid": {"train.lr": list(range(100))}, "points": [], "seeds": range(100)}
    assert spec_mod.run_count(spec) == (100, 100)
    spec_mod.check_size(spec)  # exactly at the limit: planned

