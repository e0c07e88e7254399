"""Damaged run files are named, never a traceback: a truncated or malformed metrics.jsonl, meta.json, config.toml
or bn_params.json gives `inspect` and `run --resume` one `error:` line naming the file (and line), and makes a
sweep (training or --report-only) list the run as "corrupt" in report.md and summary.csv, never averaged, while
it goes on with the others. Runs: 2 epochs of a 512-example slice, trained here in a sweep's layout."""

import csv
import shutil
from pathlib import Path

import pytest

from bn_lenet.cli import main
from bn_lenet.training import runs
from bn_lenet.training.data import FashionMNIST
from bn_lenet.sweeps.spec import resolve_runs
from bn_lenet.sweeps.sweep import spec_for
from helpers import one_error_line

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "scratch_bn.toml"
TINY = ["train.epochs=2", "train.limit_batches=2", "train.threads=1"]
SWEEP = [str(CONFIG), "--grid", "model.norm=scratch", "--seeds", "2", *(a for s in TINY for a in ("--set", s)),
         "--jobs", "1", "--quiet"]


def truncate(path: Path, chars=12):
    path.write_text(path.read_text()[:-chars])


# What each damage does to its file, and what the error line then says of it.
DAMAGE = {
    "metrics.jsonl": (truncate, "metrics.jsonl line 2 is not valid JSON"),
    "meta.json": (truncate, "meta.json is not valid JSON (line"),
    "config.toml": (lambda p: p.write_text("[train\nlr = 1\n"), "config.toml is not valid TOML"),
    "bn_params.json": (lambda p: p.write_text('{"conv1.bn": {"gamma": "1.0"}}'), "bn_params.json has no lists of "
                       "numbers gamma and beta for layer 'conv1.bn'"),
}


@pytest.fixture(scope="module")
def made(fashion_mnist, tmp_path_factory):
    """A finished sweep of 2 runs, and a run interrupted after its first of 2 epochs (to resume)."""
    d = fashion_mnist
    data = FashionMNIST(d.train_images[:512], d.train_labels[:512], d.test_images[:500], d.test_labels[:500], "slice")
    base = tmp_path_factory.mktemp("corrupt")
    sweep = base / "sweep"
    spec = spec_for(str(CONFIG), grid=["model.norm=scratch"], seeds=2, sets=TINY)
    for run in resolve_runs(spec, sweep):
        assert runs.train_run(run["cfg"], out=run["dir"], data=data, log=lambda _: None)["status"] == "finished"
    assert main(["sweep", *SWEEP, "--out", str(sweep), "--report-only"]) == 0
    interrupted = base / "interrupted"
    with pytest.MonkeyPatch.context() as m:
        m.setenv("BN_LENET_TEST_SIGNAL", "SIGINT@batch:3")  # the first batch of epoch 2: Ctrl-C's stop
        cfg = resolve_runs(spec, sweep)[0]["cfg"]
        assert runs.train_run(cfg, out=interrupted, data=data, log=lambda _: None)["status"] == "interrupted"
    return sweep, interrupted


def damaged_copy(source: Path, where: Path, name: str) -> tuple:
    """A copy of ``source`` with ``name`` damaged in ``run`` (a run directory in it): (copy, damaged file, its
    text)."""
    shutil.copytree(source, where)
    run = where / "runs" / "norm=scratch" / "seed-1" if (where / "runs").is_dir() else where
    damage, _ = DAMAGE[name]
    damage(run / name)
    return where, run / name, (run / name).read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("name", DAMAGE)
def test_inspect_names_the_damaged_file_in_one_error_line(made, tmp_path, capsys, name):
    _, path, _ = damaged_copy(made[0], tmp_path / "sweep", name)
    one_error_line(capsys, main(["inspect", str(path.parent)]), str(path), DAMAGE[name][1])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["meta.json", "config.toml"])
def test_resume_names_a_damaged_meta_or_config_in_one_error_line_and_changes_nothing(made, tmp_path, capsys, name):
    run, path, text = damaged_copy(made[1], tmp_path / "run", name)
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    one_error_line(capsys, main(["run", "--resume", str(run)]), str(path), DAMAGE[name][1])
    assert path.read_bytes() == text and {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


@pytest.mark.slow
@pytest.mark.parametrize("name", ["metrics.jsonl", "bn_params.json"])
def test_resume_rewrites_damaged_metrics_or_bn_params_from_the_checkpoint(made, tmp_path, capsys, name):
    run, path, _ = damaged_copy(made[1], tmp_path / "run", name)
    assert main(["run", "--resume", str(run), "--quiet"]) == 0, capsys.readouterr().err
    assert [r["epoch"] for r in runs.read_metrics(run)] == [1, 2]
    assert set(runs.read_json(run / "bn_params.json")) == {"conv1.bn", "conv2.bn", "fc1.bn", "fc2.bn"}


def assert_listed_corrupt(out: Path, capsys, code: int, name: str, path: Path, text: bytes):
    """The run is named once as corrupt, counted so in summary.csv, never averaged, and left as it was."""
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err, captured.err
    assert "norm=scratch seed-0" not in captured.err  # only the corrupt run is named
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: norm=scratch seed-1 is corrupt") and str(path) in \
        errors[0] and DAMAGE[name][1] in errors[0], captured.err
    with open(out / "summary.csv") as f:
        [row] = list(csv.DictReader(f))
    seed0 = runs.read_metrics(out / "runs" / "norm=scratch" / "seed-0")[-1]
    assert (row["seeds"], row["finished"], row["corrupt"]) == ("2", "1", "1")
    assert float(row["loss_mean"]) == seed0["loss"]  # seed 1 is not in the mean
    assert "norm=scratch seed 1: **corrupt**" in (out / "report.md").read_text()
    assert path.read_bytes() == text
    return captured.out


@pytest.mark.slow
@pytest.mark.parametrize("report_only", [True, False], ids=["report-only", "sweep"])
@pytest.mark.parametrize("name", DAMAGE)
def test_a_sweep_lists_a_run_with_a_damaged_file_as_corrupt_and_goes_on(made, tmp_path, capsys, name, report_only):
    out, path, text = damaged_copy(made[0], tmp_path / "sweep", name)
    code = main(["sweep", *SWEEP, "--out", str(out), *(["--report-only"] if report_only else [])])
    assert_listed_corrupt(out, capsys, code, name, path, text)


@pytest.mark.slow
def test_a_sweep_trains_the_other_runs_beside_a_corrupt_one(made, tmp_path, capsys):
    out, path, text = damaged_copy(made[0], tmp_path / "sweep", "metrics.jsonl")
    shutil.rmtree(out / "runs" / "norm=scratch" / "seed-0")  # to train again, in a worker process
    code = main(["sweep", *SWEEP, "--out", str(out)])
    printed = assert_listed_corrupt(out, capsys, code, "metrics.jsonl", path, text)
    assert "0 done, 1 to train, 1 corrupt" in printed and "norm=scratch seed-0: finished" in printed


@pytest.mark.slow
def test_a_damaged_sweep_json_is_one_error_line_and_is_not_written_over(made, tmp_path, capsys):
    out = tmp_path / "sweep"
    shutil.copytree(made[0], out)
    truncate(out / "sweep.json")
    text = (out / "sweep.json").read_bytes()
    one_error_line(capsys, main(["sweep", *SWEEP, "--out", str(out)]), str(out / "sweep.json"), "is not valid JSON")
    assert (out / "sweep.json").read_bytes() == text
