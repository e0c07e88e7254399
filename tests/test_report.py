"""The sweep report around the engine: the index of studies and its one-line answers, the README's list,
provenance of adopted runs, and the report's order (question, answer, setup, table)."""

from pathlib import Path

from bn_lenet.sweeps import sweep
from bn_lenet.sweeps.index import BEGIN, END, compute, update_readme
from bn_lenet.sweeps.report import adopted_lines, unrecorded_wall
from bn_lenet.sweeps.spec import resolve_runs, spec_from_file
from helpers import epochs, fake_sweep

SPEC = """
title = "Learning rate"
seeds = 3
[grid]
"train.lr" = [0.1, 1.0]
"""


def lr_outcome(values, seed):
    return epochs(0.7, 0.8 + 0.01 * seed, 0.8 + 0.01 * seed, 0.8 + 0.01 * seed, loss=0.3 if values["train.lr"] == 1.0 else 0.5)


def write_study(root: Path, name: str):
    folder = root / name
    folder.mkdir(parents=True)
    spec_file, out = fake_sweep(folder, SPEC, lr_outcome)
    spec = spec_from_file(spec_file)
    spec["name"] = name
    target = root / name / "study"
    out.rename(target)
    return spec, target, resolve_runs(spec, target)


def test_the_index_lists_every_study_with_its_one_line_answer_and_its_qualifier(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "results" / "sweeps"
    spec, out, planned = write_study(root / "tmp", "plain")
    out.rename(root / "plain")
    out = root / "plain"
    sweep.write(spec, out, resolve_runs(spec, out), {})  # a study under results/sweeps/: its report step writes the index
    index = (root / "README.md").read_text()
    # lr 1 against lr 0.1: loss 0.3 vs 0.5 on every seed (lower); test acc the same (equivalent)
    assert "| [plain](plain/report.md) | Learning rate | lr=1 vs lr=0.1: test acc (last3 mean) +0.000 equivalent" in index
    assert "training loss -0.200 lower" in index and "3 of 3" not in index


def test_a_sweep_outside_results_sweeps_leaves_no_index(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec, out, planned = write_study(tmp_path / "elsewhere", "plain")
    sweep.write(spec, out, planned, {})
    assert not (tmp_path / "elsewhere" / "README.md").exists() and (out / "report.md").is_file()
    text = (out / "report.md").read_text()
    assert text.index("## Answer") < text.index("**Setup:** Fashion-MNIST") < text.index("## Results per point")


def test_the_readme_list_is_replaced_between_its_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\n- stale line\n{END}\noutro\n")
    rows = [{"question": "Bias before BN", "report": "bias/report.md", "answer": "test acc 0.880"}]
    assert update_readme(readme, Path("results/sweeps"), rows)
    assert readme.read_text() == (f"intro\n{BEGIN}\n- [Bias before BN](results/sweeps/bias/report.md): test acc 0.880.\n"
                                  f"{END}\noutro\n")
    (tmp_path / "plain.md").write_text("no markers\n")
    assert not update_readme(tmp_path / "plain.md", Path("results/sweeps"), rows)
    assert (tmp_path / "plain.md").read_text() == "no markers\n"


def test_provenance_names_runs_another_sweep_trained_and_this_one_adopted():
    own = {"meta": {"command": "/x/bn_lenet/__main__.py sweep configs/sweeps/batch_size.toml --quiet"}}
    other = {"meta": {"command": "/x/bn-lenet sweep configs/sweeps/norm_kinds.toml --quiet"}}
    swept = {"spec": {"spec_file": "configs/sweeps/batch_size.toml"}, "runs": [own, own, other]}
    assert adopted_lines(swept) == ["- 1 of 3 runs were trained by `bn-lenet sweep configs/sweeps/norm_kinds.toml "
                                    "--quiet` and adopted here (the same config, checked when adopted); their time "
                                    "is in the compute above, not in the invocations listed"]
    assert adopted_lines({**swept, "runs": [own]}) == []


def test_a_sweep_without_recorded_invocations_bounds_its_wall_time_by_the_runs_stamps():
    metas = [{"started": "2026-12-06T07:22:49+0000", "ended": "2026-12-06T07:30:00+0000"},
             {"started": "2026-12-06T07:25:00+0000", "ended": "2026-12-06T08:05:49+0000"}]
    assert unrecorded_wall(metas) == ("the invocations that trained them were not recorded; the runs' own time "
                                      "stamps span 43.0 min (2026-12-06T07:22:49+0000 to 2026-12-06T08:05:49+0000), "
                                      "an upper bound on the wall time")
    assert unrecorded_wall([{"status": "finished"}]).endswith("their wall time is unknown")
    runs = [{"status": "finished", "meta": m, "rows": [{"seconds": 600.0}]} for m in metas]
    assert compute({"runs": runs, "provenance": {}}) == ("20 min in epochs, 2 of 2 runs done; at most 43 min wall "
                                                         "(the runs' time stamps)")
