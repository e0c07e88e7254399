"""The seed study (bn_lenet/study.py), its report, `bn-lenet compare` and `bn-lenet inspect`, on a tiny study:
2 seeds x {scratch, torch, none}, 2 epochs of 2 batches on a 512-example slice of the real data."""

import json
import os
import signal
import re
import shutil

import pytest

from bn_lenet import runs, study
from bn_lenet.errors import UserError
from bn_lenet.cli import main
from bn_lenet.data import FashionMNIST
from bn_lenet.study_report import write_report

TINY = ["train.epochs=2", "train.threads=1"]
VARIANTS, SEEDS = ["scratch", "torch", "none"], [0, 1]


@pytest.fixture(scope="module")
def tiny(fashion_mnist, tmp_path_factory):
    d = fashion_mnist
    data = FashionMNIST(d.train_images[:512], d.train_labels[:512], d.test_images[:500], d.test_labels[:500], "slice")
    root = tmp_path_factory.mktemp("study")
    log = []
    assert study.run_study(VARIANTS, SEEDS, TINY, root / "runs", root / "out", data, log=log.append)
    runs.write_json(root / "out" / "study.json", {"command": "test", "git_commit": "test", "variants": VARIANTS,
                                                  "seeds": SEEDS, "wall_seconds": 0.0})
    return root, data, log


def test_every_run_is_collected_with_its_small_files_and_precise_bn_only_with_bn(tiny):
    root, _, _ = tiny
    for variant in VARIANTS:
        for seed in SEEDS:
            collected = root / "out" / "runs" / variant / f"seed{seed}"
            assert sorted(p.name for p in collected.iterdir()) == sorted(study.KEEP)
            rows = runs.read_metrics(collected)
            assert [r["epoch"] for r in rows] == [1, 2]
            assert all(("test_acc_precise" in r) == (variant != "none") for r in rows)
            assert not (collected / "checkpoint.pt").exists()  # checkpoints stay in the runs dir
    assert (root / "runs" / "compare-torch-seed1" / "checkpoint.pt").is_file()


def test_a_finished_run_is_reused_not_trained_again(tiny):
    root, data, _ = tiny
    before = (root / "runs" / "compare-scratch-seed0" / "metrics.jsonl").stat().st_mtime_ns
    log = []
    assert study.run_study(["scratch"], [0], TINY, root / "runs", root / "out", data, log=log.append)
    assert any("reusing" in line for line in log) and not any("epoch 1:" in line for line in log)
    assert (root / "runs" / "compare-scratch-seed0" / "metrics.jsonl").stat().st_mtime_ns == before


def test_a_run_with_another_config_is_refused(tiny):
    root, data, _ = tiny
    with pytest.raises(UserError, match="another config"):
        study.run_study(["scratch"], [0], ["train.epochs=3", "train.threads=1"], root / "runs", root / "out", data)


def test_same_seed_scratch_and_torch_start_alike(tiny):
    root, _, _ = tiny
    a = runs.read_metrics(root / "out" / "runs" / "scratch" / "seed1")
    b = runs.read_metrics(root / "out" / "runs" / "torch" / "seed1")
    assert a[0]["loss"] == pytest.approx(b[0]["loss"], abs=1e-4)  # same weights, same batches


def test_compare_report_only_writes_every_section_and_figure_from_the_collected_files(tiny):
    root, _, _ = tiny
    out = root / "out"
    assert main(["compare", "--report-only", "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    for heading in ("## Headline", "## Final metrics per variant", "## Learning curves", "beyond seed noise",
                    "moving vs re-estimated", "published figures", "## Learned gamma and beta", "## Provenance"):
        assert heading in text, heading
    for figure in ("curves.png", "swings.png", "bn_same_seed.png", "bn_over_seeds.png", "bn_evolution.png"):
        assert (out / figure).stat().st_size > 0 and f"]({figure})" in text
    assert "| scratch BN | 2 of 2 |" in text and not re.search(r"\bnan\b", text)
    assert "regenerated from those files by `" in text
    assert "d2l-zh v2.0.0 = Dive into Deep Learning" in text  # the published figures' source, in full


def test_a_diverged_run_is_reported_and_left_out_of_the_averages(tiny, tmp_path):
    root, _, _ = tiny
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    meta_path = out / "runs" / "torch" / "seed1" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.update(status="diverged", diverged_at_epoch=2, diverged_loss="nan")
    meta_path.write_text(json.dumps(meta))
    text = write_report(study.load_study(out, VARIANTS, SEEDS), out, {}).read_text()
    assert "nn.BatchNorm seed 1: **diverged** at epoch 2" in text
    assert "| nn.BatchNorm | 1 of 2 |" in text
    kept = runs.read_metrics(out / "runs" / "torch" / "seed0")[-1]["test_acc"]
    assert f"nn.BatchNorm: final test acc {kept:.3f} ± 0.000" in text


def test_statistics_on_known_values():
    assert study.describe([1.0, 2.0, 3.0]) == {"n": 3, "mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0}
    assert study.swing([0.5, 0.7, 0.6, 0.9], last=2) == pytest.approx(0.2)  # |0.6-0.7|, |0.9-0.6|
    t, df = study.welch_t([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert t == pytest.approx(-3 / (2 / 3) ** 0.5) and df == pytest.approx(4.0)
    assert study.permutation_p([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(2 / 20)  # the 2 extreme splits
    assert study.permutation_p([1.0, 4.0], [2.0, 3.0]) == pytest.approx(1.0)
    assert study.ranges_overlap([1, 3], [3, 5]) and not study.ranges_overlap([1, 2], [3, 4])


@pytest.mark.parametrize("argv,message", [
    (["--report-only"], "no study in"),
    (["--variants", "scratch,batch"], "unknown variant(s) batch"),
    (["--seeds", "0"], "--seeds 0"),
])
def test_compare_user_errors(tmp_path, capsys, argv, message):
    assert main(["compare", "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_inspect_one_run_shows_its_figures_and_gamma_beta_over_epochs(tiny, capsys):
    root, _, _ = tiny
    assert main(["inspect", str(root / "runs" / "compare-scratch-seed0")]) == 0
    text = capsys.readouterr().out
    assert "norm scratch, seed 0, finished; epoch 2: loss" in text and "precise BN" in text
    assert "mean over channels after each epoch" in text and "ep 2" in text
    assert sum(line.startswith(("conv1.bn   gamma", "fc2.bn     beta")) for line in text.splitlines()) == 4


def test_inspect_two_runs_side_by_side(tiny, capsys):
    root, _, _ = tiny
    a, b = root / "out" / "runs" / "scratch" / "seed0", root / "out" / "runs" / "torch" / "seed1"
    assert main(["inspect", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "[1] " in text and "[2] " in text and "norm torch, seed 1" in text
    assert "conv1.bn   gamma [1]" in text and any(line.strip().startswith("[2]") for line in text.splitlines())


def test_inspect_a_run_without_bn(tiny, capsys):
    root, _, _ = tiny
    assert main(["inspect", str(root / "out" / "runs" / "none" / "seed0")]) == 0
    assert "no BN layers" in capsys.readouterr().out


def test_an_interrupted_run_is_resumed_and_an_empty_one_restarted(tiny, tmp_path):
    _, data, _ = tiny
    cfg = study.study_config("scratch", 0, ["train.epochs=2", "train.threads=1"])
    run_dir = tmp_path / "compare-scratch-seed0"

    def sigterm_after_epoch_1(line):  # a real Ctrl-C/SIGTERM arriving once epoch 1 is saved
        if line.startswith("epoch 1:"):
            os.kill(os.getpid(), signal.SIGTERM)

    first = runs.train_run(cfg, out=run_dir, data=data, log=sigterm_after_epoch_1)
    assert first["status"] == "interrupted" and first["epochs_done"] == 1
    log = []
    meta = study.ensure_run(cfg, run_dir, data, log=log.append)
    assert meta["status"] == "finished" and any("resuming" in line for line in log)
    assert [r["epoch"] for r in runs.read_metrics(run_dir)] == [1, 2]
    # Stopped before its first epoch ended: no checkpoint, so it starts again from nothing.
    (run_dir / "checkpoint.pt").unlink()
    runs.write_json(run_dir / "meta.json", dict(runs.read_json(run_dir / "meta.json"), status="running"))
    assert study.ensure_run(cfg, run_dir, data, log=lambda _: None)["status"] == "finished"
    assert "resumed" not in runs.read_json(run_dir / "meta.json")
