"""The seed study (the compare sweep: configs/sweeps/compare.toml, analysed by the engine like every sweep),
`bn-lenet compare` and `bn-lenet inspect`, on a tiny study: 2 seeds x {scratch, torch, none}, 2 epochs of 2
batches on a 512-example slice of the real data."""

import json
import os
import signal
import re
import shutil
from pathlib import Path

import pytest

from bn_lenet.training import runs
from bn_lenet.training.files import read_json, write_json
from bn_lenet.sweeps import executor, stats
from bn_lenet.cli import main
from bn_lenet.training.data import FashionMNIST
from bn_lenet.sweeps.sweep import spec_for
from bn_lenet.sweeps.spec import resolve_runs

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "configs" / "sweeps" / "compare.toml"
TINY = ["train.epochs=2", "train.threads=1", "train.device=cpu", "eval.precise_bn_batches=2"]  # CPU: same seed, same numbers
ARGS = ["--seeds", "2", *(a for s in TINY for a in ("--set", s))]
VARIANTS, SEEDS = ["scratch", "torch", "none"], [0, 1]


def run_dir(out, variant, seed):
    return Path(out) / "runs" / f"norm={variant}" / f"seed-{seed}"


@pytest.fixture(scope="module")
def tiny(fashion_mnist, tmp_path_factory):
    """The compare sweep's runs, trained here in the sweep's layout on a 512-example slice of the real data
    (fast; the sweep engine's own runs are tested in test_sweep.py), then its report from those files."""
    d = fashion_mnist
    data = FashionMNIST(d.train_images[:512], d.train_labels[:512], d.test_images[:500], d.test_labels[:500], "slice")
    out = tmp_path_factory.mktemp("study") / "out"
    spec = spec_for(str(SPEC), seeds=2, sets=TINY)
    for run in resolve_runs(spec, out):
        runs.train_run(run["cfg"], out=run["dir"], data=data, log=lambda _: None)
    assert main(["compare", "--report-only", "--out", str(out), *ARGS]) == 0
    return out, data


@pytest.mark.slow
def test_every_run_is_a_run_directory_with_precise_bn_only_with_bn(tiny):
    out, _ = tiny
    for variant in VARIANTS:
        for seed in SEEDS:
            rows = runs.read_metrics(run_dir(out, variant, seed))
            assert [r["epoch"] for r in rows] == [1, 2]
            assert all(("test_acc_precise" in r) == (variant != "none") for r in rows)


@pytest.mark.slow
def test_a_finished_run_is_reused_not_trained_again(tiny, capsys):
    out, _ = tiny
    before = run_dir(out, "scratch", 0).joinpath("metrics.jsonl").stat().st_mtime_ns
    assert main(["compare", "--out", str(out), *ARGS]) == 0
    assert "6 done, 0 to train" in capsys.readouterr().out
    assert run_dir(out, "scratch", 0).joinpath("metrics.jsonl").stat().st_mtime_ns == before


@pytest.mark.slow
def test_a_run_with_another_config_is_refused(tiny, capsys):
    out, _ = tiny
    assert main(["compare", "--out", str(out), *ARGS, "--set", "train.lr=0.5"]) == 2
    assert "holds a run with another config" in capsys.readouterr().err


@pytest.mark.slow
def test_same_seed_scratch_and_torch_start_alike(tiny):
    root, _ = tiny
    a = runs.read_metrics(run_dir(root, "scratch", 1))
    b = runs.read_metrics(run_dir(root, "torch", 1))
    assert a[0]["loss"] == pytest.approx(b[0]["loss"], abs=1e-4)  # same weights, same batches


@pytest.mark.slow
def test_compare_report_only_writes_every_section_and_figure_from_the_run_files(tiny):
    out, _ = tiny
    kept = ("config.toml", "metrics.jsonl", "bn_history.json", "bn_params.json", "meta.json")
    shutil.copytree(out / "runs", out.parent / "small" / "runs",  # only the files git keeps
                    ignore=lambda d, names: [n for n in names if Path(d, n).is_file() and n not in kept])
    out = out.parent / "small"
    assert main(["compare", "--report-only", "--out", str(out), *ARGS]) == 0
    text = (out / "report.md").read_text()
    for heading in ("## Answer", "**Setup:** Fashion-MNIST", "**How these verdicts are made**", "## Results per point",
                    "## Per layer: bn_params.json", "published figures fall among our runs", "## Provenance"):
        assert heading in text, heading
    assert text.index("## Answer") < text.index("**Setup:**") < text.index("## Results per point")
    assert (out / "curves.png").stat().st_size > 0 and "](curves.png)" in text
    assert (out / "contrasts.csv").read_text().startswith("a,b,metric,statistic,n,paired,mean_a,mean_b,diff,ci_low,")
    assert not re.search(r"\bnan\b", text)
    assert re.search(r"\| scratch BN \| 2 \| 2 \| \d \| 0 \|", text)  # the table: runs, finished, stuck, diverged
    assert text.startswith("# Scratch BN vs nn.BatchNorm vs no BN over 2 seeds\n")
    assert "bn-lenet sweep configs/sweeps/compare.toml --seeds 2 --set train.epochs=2" in text
    assert "regenerated from those files by `" in text
    assert "d2l-zh v2.0.0 = Dive into Deep Learning" in text  # the published figures' source, in full


@pytest.mark.slow
def test_a_diverged_run_is_reported_and_left_out_of_the_averages(tiny, tmp_path):
    root, _ = tiny
    out = tmp_path / "out"
    shutil.copytree(root, out)
    meta_path = run_dir(out, "torch", 1) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.update(status="diverged", diverged_at_epoch=2, diverged_loss="nan")
    meta_path.write_text(json.dumps(meta))
    assert main(["compare", "--report-only", "--out", str(out), *ARGS]) == 0
    text = (out / "report.md").read_text()
    assert "norm=torch seed 1: **diverged** at epoch 2" in text
    assert re.search(r"\| nn.BatchNorm \| 2 \| 1 \| \d \| 1 \|", text)
    kept = runs.read_metrics(run_dir(out, "torch", 0))[-1]["test_acc"]
    assert f"| {kept:.3f} ± 0.000 ({kept:.3f}..{kept:.3f}) |" in text  # the one finished seed alone


def test_statistics_on_known_values():
    assert stats.describe([1.0, 2.0, 3.0]) == {"n": 3, "mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0}
    run = {"status": "finished", "seed": 0, "rows": [{"test_acc": a, "examples_per_sec": 10.0} for a in (0.5, 0.7, 0.6, 0.9)]}
    assert stats.value(run, "test_acc", "final") == 0.9
    assert stats.value(run, "test_acc", "last2_mean") == pytest.approx(0.75)
    assert stats.value(run, "test_acc", "last3_swing") == pytest.approx(stats.describe([0.7, 0.6, 0.9])["std"])
    assert stats.value(run, "test_acc", "run") == pytest.approx(10.0)


@pytest.mark.parametrize("argv,message", [
    (["--report-only"], "no sweep in"),
    (["--seeds", "0"], "seeds = 0"),
    (["--jobs", "0"], "--jobs 0"),
    (["--set", "model.norm=torch"], "model.norm is both fixed"),
])
def test_compare_user_errors(tmp_path, capsys, argv, message):
    assert main(["compare", "--out", str(tmp_path / "out"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_compare_is_the_sweep_of_configs_sweeps_compare_toml():
    spec = spec_for(str(SPEC))
    sweep_runs = resolve_runs(spec, Path("out"))
    assert spec["seeds"] == [0, 1, 2, 3, 4] and spec["report"]["published"]
    assert [(r["point"], r["cfg"].eval.precise_bn) for r in sweep_runs[::5]] == \
        [("norm=scratch", True), ("norm=torch", True), ("norm=none", False)]
    assert os.path.exists(ROOT / "experiments" / "compare.py")


@pytest.mark.slow
def test_inspect_one_run_shows_its_figures_and_gamma_beta_over_epochs(tiny, capsys):
    root, _ = tiny
    assert main(["inspect", str(run_dir(root, "scratch", 0))]) == 0
    text = capsys.readouterr().out
    assert "norm scratch, seed 0, finished; epoch 2: loss" in text and "precise BN" in text
    assert "mean over channels after each epoch" in text and "ep 2" in text
    assert sum(line.startswith(("conv1.bn   gamma", "fc2.bn     beta")) for line in text.splitlines()) == 4


@pytest.mark.slow
def test_inspect_two_runs_side_by_side(tiny, capsys):
    root, _ = tiny
    a, b = run_dir(root, "scratch", 0), run_dir(root, "torch", 1)
    assert main(["inspect", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "[1] " in text and "[2] " in text and "norm torch, seed 1" in text
    assert "conv1.bn   gamma [1]" in text and any(line.strip().startswith("[2]") for line in text.splitlines())


@pytest.mark.slow
def test_inspect_a_run_without_bn(tiny, capsys):
    root, _ = tiny
    assert main(["inspect", str(run_dir(root, "none", 0))]) == 0
    assert "no BN layers" in capsys.readouterr().out


@pytest.mark.slow
def test_an_interrupted_run_is_resumed_and_an_empty_one_restarted(tiny, tmp_path, monkeypatch):
    _, data = tiny
    monkeypatch.setitem(executor._DATA, None, data)  # what a worker loads once, here the slice
    spec = spec_for(str(SPEC), seeds=1, sets=TINY)
    run = resolve_runs(spec, tmp_path)[0]
    task = {"dir": str(run["dir"]), "cfg": run["cfg"], "point": run["point"], "seed": 0, "verbose": True}

    def sigterm_after_epoch_1(line):  # a real Ctrl-C/SIGTERM arriving once epoch 1 is saved
        if line.startswith("epoch 1:"):
            os.kill(os.getpid(), signal.SIGTERM)

    first = runs.train_run(run["cfg"], out=run["dir"], data=data, log=sigterm_after_epoch_1)
    assert first["status"] == "interrupted" and first["epochs_done"] == 1
    assert executor.run_state(run["dir"], run["cfg"]) == "resume"
    log = []
    assert executor.execute(task, log=log.append)["status"] == "finished"
    assert any("resuming" in line for line in log)
    assert [r["epoch"] for r in runs.read_metrics(run["dir"])] == [1, 2]
    assert executor.run_state(run["dir"], run["cfg"]) == "done"
    # Stopped before its first epoch ended: no checkpoint, so it starts again from nothing.
    (run["dir"] / "checkpoint.pt").unlink()
    write_json(run["dir"] / "meta.json", dict(read_json(run["dir"] / "meta.json"), status="running"))
    assert executor.run_state(run["dir"], run["cfg"]) == "restart"
    assert executor.execute(task, log=lambda _: None)["status"] == "finished"
    assert "resumed" not in runs.read_json(run["dir"] / "meta.json")
