"""The answers of the studies of issue 12 (bn_lenet/sweeps/answers_affine.py, answers_variants.py) on small synthetic
sweeps whose outcome is known by construction: run directories with the files a run writes (config.toml,
metrics.jsonl, meta.json, bn_params.json), loaded as the sweep report loads them. No training."""

import json
from pathlib import Path

from bn_lenet.training import config as config_mod
from bn_lenet.sweeps.answers_affine import bias_cancels, point_config
from bn_lenet.training.files import write_json, write_metrics
from bn_lenet.network.options import CHANNELS, LAYERS
from bn_lenet.sweeps.answers import ANSWERS, ONE_LINE
from bn_lenet.sweeps.report import load_sweep, write_report
from bn_lenet.sweeps.spec import point_ids, toml_literal

SEEDS = (0, 1, 2)


def curve(final: float, epochs: int = 5, first=None) -> list:
    """Test accuracy per epoch rising linearly from ``first`` (default final - 0.1) to ``final``."""
    first = final - 0.1 if first is None else first
    return [first + (final - first) * e / (epochs - 1) for e in range(epochs)]


def bn_params(layers=LAYERS, gamma=1.0, beta=0.0) -> dict:
    """Per channel gamma/beta: a constant plus a spread of +-0.1 across the channels."""
    out = {}
    for layer in layers:
        n = CHANNELS[layer]
        out[f"{layer}.bn"] = {"gamma": [gamma + 0.2 * (i / (n - 1) - 0.5) for i in range(n)],
                              "beta": [beta + 0.2 * (i / (n - 1) - 0.5) for i in range(n)]}
    return out


def make_sweep(tmp_path, name: str, points: list, lead=("test_acc", "loss")) -> dict:
    """``points``: [(values, runs)], runs: {seed: {"acc": [...], "loss": [...], "status": ..., "bn": {...}}}
    (a missing run is written as finished with a flat curve). Returns (spec, out, planned)."""
    out = tmp_path / name
    ids = point_ids([{"values": v} for v, _ in points])
    planned = []
    for pid, (values, runs) in zip(ids, points):
        for seed in SEEDS:
            run = runs.get(seed, {})
            d = out / "runs" / pid / f"seed-{seed}"
            d.mkdir(parents=True)
            overrides = [f"{k}={toml_literal(v)}" for k, v in values.items()] + [f"train.seed={seed}"]
            cfg = config_mod.resolve("configs/scratch_bn.toml", overrides)
            (d / "config.toml").write_text(config_mod.to_toml(cfg))
            acc = run.get("acc", curve(0.85))
            loss = run.get("loss", [1.0 - a for a in acc])
            write_metrics(d, [{"epoch": e + 1, "loss": l, "train_acc": a, "test_acc": a, "examples_per_sec": 1000.0,
                               "seconds": run.get("seconds", 1.0)} for e, (a, l) in enumerate(zip(acc, loss))])
            write_json(d / "meta.json", {"status": run.get("status", "finished"), "epochs_done": len(acc)})
            if run.get("bn") is not None:
                write_json(d / "bn_params.json", run["bn"])
            planned.append({"point": pid, "values": values, "seed": seed, "dir": d, "overrides": overrides})
    spec = {"name": name, "title": name, "question": "?", "report": {"lead": list(lead), "answer": name},
            "spec_file": f"configs/sweeps/{name}.toml", "config": "configs/scratch_bn.toml", "seeds": list(SEEDS)}
    return spec, out, planned


def answer(tmp_path, name, points) -> tuple:
    spec, out, planned = make_sweep(tmp_path, name, points)
    sweep = load_sweep(spec, out, planned)
    return "\n".join(ANSWERS[name](sweep)), ONE_LINE[name](sweep), sweep


def runs(finals: list, **extra) -> dict:
    """One run per seed with these final test accuracies."""
    return {s: {"acc": curve(f), **extra} for s, f in zip(SEEDS, finals)}


# --- layers ---------------------------------------------------------------------------------------------

def test_layers_names_the_part_that_carries_the_gain_and_reports_the_early_epochs(tmp_path):
    text, line, _ = answer(tmp_path, "layers", [
        ({"model.norm_layers": []}, runs([0.80, 0.79, 0.81])),
        ({"model.norm_layers": ["conv1", "conv2"]}, runs([0.875, 0.885, 0.88])),
        ({"model.norm_layers": ["fc1", "fc2"]}, runs([0.82, 0.81, 0.83])),
        ({"model.norm_layers": ["conv1"]}, runs([0.84, 0.85, 0.845])),
        ({"model.norm_layers": list(LAYERS)}, runs([0.88, 0.89, 0.87]))])
    assert text.startswith("## Answer")
    assert "conv1 + conv2 alone carries the gain" in text
    # conv only: (0.88 - 0.80) / (0.88 - 0.80) = 100%; fc only: (0.82 - 0.80) / 0.08 = 25%
    assert "conv1 + conv2: test acc 0.880 ± 0.005 (n=3), 100% of the all-four gain" in text
    assert "fc1 + fc2: test acc 0.820 ± 0.010 (n=3), 25% of the all-four gain" in text
    for epoch in (1, 2, 5):
        assert f"test acc after epoch {epoch}" in text
    assert "conv1 + conv2 alone recovers 100%" in line and "0.880" in line


def test_layers_when_test_acc_cannot_tell_the_training_loss_names_the_layers(tmp_path):
    """All four vs none overlap in test accuracy (one seed of all four swings low), but the training loss
    separates them: 0.50 -> 0.25; fc only gets to 0.27 (92% of the reduction), conv only to 0.36 (56%)."""
    def losses(final_acc, final_loss):
        return {s: {"acc": curve(a), "loss": [1.0, 0.8, 0.6, 0.5, final_loss]} for s, a in zip(SEEDS, final_acc)}
    text, line, _ = answer(tmp_path, "layers", [
        ({"model.norm_layers": []}, losses([0.79, 0.80, 0.81], 0.50)),
        ({"model.norm_layers": ["conv1", "conv2"]}, losses([0.83, 0.84, 0.85], 0.36)),
        ({"model.norm_layers": ["fc1", "fc2"]}, losses([0.69, 0.70, 0.71], 0.27)),
        ({"model.norm_layers": list(LAYERS)}, losses([0.72, 0.80, 0.88], 0.25))])
    assert "within seed noise (the seeds' ranges overlap)" in text.split("\n")[2]
    assert "of that reduction fc1 + fc2 alone recovers 92%, conv1 + conv2 alone recovers 56%" in text
    assert "The best final test accuracy is conv1 + conv2's, 0.840 ± 0.010 (n=3), above no layer beyond seed noise" in text
    assert "fc1 + fc2 ends below no BN at all, beyond seed noise" in text
    assert "fc1 + fc2 alone recovers 92%" in line and "best test acc conv1 + conv2" in line


def test_layers_says_when_no_part_matches_all_four(tmp_path):
    text, _, _ = answer(tmp_path, "layers", [
        ({"model.norm_layers": []}, runs([0.80, 0.79, 0.81])),
        ({"model.norm_layers": ["conv1"]}, runs([0.84, 0.85, 0.845])),
        ({"model.norm_layers": list(LAYERS)}, runs([0.88, 0.89, 0.87]))])
    assert "No single part carries the whole gain" in text and "conv1, recovers 56%" in text


def test_a_list_valued_key_writes_its_whole_report(tmp_path):
    """model.norm_layers' values are lists: the report skips the numeric x-axis figure for it instead of failing."""
    spec, out, planned = make_sweep(tmp_path, "layers", [
        ({"model.norm_layers": []}, runs([0.80, 0.79, 0.81])),
        ({"model.norm_layers": list(LAYERS)}, runs([0.88, 0.89, 0.87]))])
    report = write_report(spec, out, planned, {})
    assert "## Answer" in report.read_text() and not list(out.glob("*_vs_norm_layers.png"))


# --- placement ------------------------------------------------------------------------------------------

def test_placement_answers_per_activation_and_tells_diverged_from_stuck(tmp_path):
    diverged = {0: {"acc": [0.5], "loss": [float("nan")], "status": "diverged"}}
    stuck = {1: {"acc": [0.1] * 5, "loss": [2.3] * 5}}
    text, line, _ = answer(tmp_path, "placement", [
        ({"model.activation": "sigmoid", "model.placement": "before"}, runs([0.88, 0.89, 0.885])),
        ({"model.activation": "sigmoid", "model.placement": "after"}, runs([0.85, 0.86, 0.855])),
        ({"model.activation": "relu", "model.placement": "before"}, {**runs([0.88, 0.89, 0.885]), **diverged}),
        ({"model.activation": "relu", "model.placement": "after"}, {**runs([0.88, 0.89, 0.885]), **stuck})])
    assert "sigmoid: before wins by 0.030 on every seed: the BN paper's choice" in text
    assert "1 of 3 runs diverged" in text and "1 of 3 stuck at chance" in text
    assert "sigmoid: before 0.885 vs after 0.855" in line


# --- lite BN --------------------------------------------------------------------------------------------

def test_lite_bn_finds_the_half_that_does_the_work(tmp_path):
    text, line, _ = answer(tmp_path, "lite_bn", [
        ({"model.norm": "scratch", "bn.normalize": "full"}, runs([0.88, 0.89, 0.87])),
        ({"model.norm": "scratch", "bn.normalize": "mean"}, runs([0.80, 0.81, 0.79])),
        ({"model.norm": "scratch", "bn.normalize": "var"}, runs([0.875, 0.885, 0.88])),
        ({"model.norm": "none"}, runs([0.79, 0.80, 0.78]))])
    assert "Scaling only does the work" in text
    assert "centering only: final test acc 0.800 ± 0.010 (n=3); 11% of full BN's gain" in text  # (0.80 - 0.79) / (0.88 - 0.79)
    assert line == "test acc full BN 0.880, centering only 0.800, scaling only 0.880, no BN 0.790"


# --- conventions ----------------------------------------------------------------------------------------

CONVENTION_POINTS = [{"model.norm": "scratch", "bn.preset": "tutorial"},
                     {"model.norm": "scratch", "bn.preset": "pytorch"},
                     {"model.norm": "torch", "bn.preset": "pytorch"},
                     {"model.norm": "scratch", "bn.preset": "keras"},
                     {"model.norm": "scratch", "bn.preset": "tutorial", "bn.momentum": 0.99},
                     {"model.norm": "scratch", "bn.preset": "tutorial", "bn.eps": 1e-3}]


def test_conventions_isolate_a_slow_momentum_that_only_hurts_early(tmp_path):
    finals_ = [0.86, 0.88, 0.87]
    base = {s: {"acc": curve(f)} for s, f in zip(SEEDS, finals_)}
    slow_start = {s: {"acc": [a - (0.1 if e == 0 else 0) for e, a in enumerate(curve(f))]}
                  for s, f in zip(SEEDS, finals_)}
    torch_runs = {s: {"acc": [a + 1e-4 for a in curve(f)]} for s, f in zip(SEEDS, finals_)}
    text, line, _ = answer(tmp_path, "conventions", [
        (CONVENTION_POINTS[0], base), (CONVENTION_POINTS[1], base), (CONVENTION_POINTS[2], torch_runs),
        (CONVENTION_POINTS[3], slow_start), (CONVENTION_POINTS[4], slow_start), (CONVENTION_POINTS[5], base)])
    assert "- momentum 0.99 alone: changes test acc after epoch 1; epoch 1 -0.100 ± 0.000 (0/3 up)" in text
    assert "- eps 1e-3 alone: changes no test acc figure measurably" in text
    assert "| test_acc | +1.00e-04, +1.00e-04, +1.00e-04 | 1.00e-04 | 1.00e-02 | yes |" in text
    assert "Early on, momentum 0.99 alone, the keras bundle" in text and "By the end of training none" in text
    assert line.startswith("largest epoch-1 effect: momentum 0.99 alone, -0.100 test acc")


# --- bias -----------------------------------------------------------------------------------------------

def test_dropping_the_bias_removes_one_parameter_per_normalized_channel():
    """The four normalized layers have 6 + 16 + 120 + 84 = 226 output channels, one bias each."""
    from bn_lenet.sweeps.answers_affine import network
    from bn_lenet.network.model import count_parameters
    kept = count_parameters(network(config_mod.resolve("configs/scratch_bn.toml", ["model.bias=true"])))
    dropped = count_parameters(network(config_mod.resolve("configs/scratch_bn.toml", ["model.bias=false"])))
    assert kept - dropped == sum(CHANNELS.values()) == 226


def test_a_bias_before_bn_cancels_and_gets_no_gradient():
    check = bias_cancels(config_mod.resolve("configs/scratch_bn.toml", []))
    assert check["output"] < 1e-4 and check["bias_grad"] < 1e-3 * check["beta_grad"]
    assert check["beta_grad"] > 1e-4
    # after the activation the bias no longer meets BN first: the check does not claim anything
    assert bias_cancels(config_mod.resolve("configs/scratch_bn.toml", ["model.placement=after"])) is None


def bias_points(shift: float) -> list:
    """Bias kept: betas around 0; bias dropped: betas around ``shift``."""
    kept = {s: {"acc": curve(0.88), "bn": bn_params(beta=0.0)} for s in SEEDS}
    dropped = {s: {"acc": curve(0.88), "bn": bn_params(beta=shift + 0.001 * s)} for s in SEEDS}
    return [({"model.norm": "scratch", "model.bias": True}, kept),
            ({"model.norm": "scratch", "model.bias": False}, dropped),
            ({"model.norm": "torch", "model.bias": True}, kept),
            ({"model.norm": "torch", "model.bias": False}, dropped),
            ({"model.norm": "none", "model.bias": True}, runs([0.80, 0.79, 0.81]))]


def test_bias_answer_counts_parameters_and_compares_beta_with_and_without_the_bias(tmp_path):
    same, line, sweep = answer(tmp_path / "same", "bias", bias_points(0.0))
    assert "- scratch BN: dropping the bias saves 226 parameters" in same
    assert "| scratch BN | conv1.bn | 0.000 ± 0.000 (n=3) | 0.001 ± 0.001 (n=3) |" in same
    assert "| yes |" in same and "| no |" not in same
    assert "changes neither accuracy nor loss beyond seed noise" in same
    assert (sweep["out"] / "bias_beta.png").is_file()
    assert "226 fewer parameters" in line and "within seed noise" in line
    shifted, _, _ = answer(tmp_path / "shifted", "bias", bias_points(1.0))
    assert "| no |" in shifted and "| yes |" not in shifted


# --- fixed gamma / beta ---------------------------------------------------------------------------------

def test_fixed_gamma_beta_pools_only_the_trained_parameters_and_draws_them(tmp_path):
    trained = {s: {"acc": curve(0.88), "bn": bn_params(gamma=2.0, beta=0.5)} for s in SEEDS}
    fixed_both = {s: {"acc": curve(f), "bn": bn_params(gamma=1.0, beta=0.0)} for s, f in zip(SEEDS, (0.80, 0.81, 0.79))}
    gamma_only = {s: {"acc": curve(0.88), "bn": bn_params(gamma=3.0, beta=0.0)} for s in SEEDS}
    text, line, sweep = answer(tmp_path, "fixed_gamma_beta", [
        ({"bn.scale": True, "bn.center": True}, trained),
        ({"bn.scale": True, "bn.center": False}, gamma_only),
        ({"bn.scale": False, "bn.center": True}, trained),
        ({"bn.scale": False, "bn.center": False}, fixed_both)])
    # gamma pooled from the two points that train it (2.0 and 3.0): mean 2.5; beta from the two that train
    # beta, both around 0.5 (the fixed 1s and 0s of the other points are left out)
    assert "| conv1.bn | gamma | 2.500 |" in text and "| conv1.bn | beta | 0.500 |" in text
    assert "gamma = 1, beta = 0 costs accuracy beyond seed noise" in text
    assert (sweep["out"] / "gamma_beta_trained.png").is_file()
    assert line == "test acc 0.880 with gamma and beta trained vs 0.800 with both fixed (beyond seed noise)"


def test_fixed_gamma_beta_says_once_which_points_the_training_loss_separates(tmp_path):
    loss = lambda final: [final + 0.1 * (4 - e) for e in range(5)]  # noqa: E731
    text, _, _ = answer(tmp_path, "fixed_gamma_beta", [
        ({"bn.scale": True, "bn.center": True}, runs([0.80, 0.88, 0.84], loss=loss(0.26))),
        ({"bn.scale": True, "bn.center": False}, runs([0.81, 0.87, 0.85], loss=loss(0.30))),
        ({"bn.scale": False, "bn.center": True}, runs([0.82, 0.86, 0.84], loss=loss(0.26))),
        ({"bn.scale": False, "bn.center": False}, runs([0.79, 0.88, 0.83], loss=loss(0.36)))])
    assert "changes final test accuracy by no more than the seeds do" in text
    assert text.count("The final training loss does separate them") == 1
    assert ("separate them: both trained 0.260 ± 0.000 (n=3) against gamma trained, beta = 0 0.300 ± 0.000 (n=3); "
            "gamma = 1, beta = 0 0.360 ± 0.000 (n=3), each beyond seed noise") in text
    assert "gamma = 1, beta trained 0.260" not in text  # the same loss as both trained: not listed


def test_the_sweep_report_carries_a_study_answer_before_its_table(tmp_path):
    spec, out, planned = make_sweep(tmp_path, "bias", bias_points(0.0))
    text = write_report(spec, out, planned, {}).read_text()
    assert text.index("## Answer") < text.index("## Results per point")
    assert "![beta with and without the bias](bias_beta.png)" in text
    assert json.loads((out / "runs" / "norm=scratch,bias=true" / "seed-0" / "meta.json").read_text())["status"]


# --- the index ------------------------------------------------------------------------------------------

def test_the_index_lists_every_study_with_its_one_line_answer_link_and_compute_time(tmp_path, monkeypatch):
    from bn_lenet.sweeps import sweep
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(Path(__file__).resolve().parents[1] / "configs")
    root = tmp_path / "results" / "sweeps"
    spec, out, planned = make_sweep(root, "bias", bias_points(0.0))
    sweep.write(spec, out, planned, {})  # a study under results/sweeps/: its report step writes the index
    index = (root / "README.md").read_text()
    assert "| [bias](bias/report.md) | bias | scratch BN test acc 0.880 without bias vs 0.880 with" in index
    # a study without its own one-line answer: the generic best point; 3 seeds x 5 epochs x 60 s = 15 min
    spec, out, planned = make_sweep(root, "plain", [({"train.lr": 0.1}, runs([0.7, 0.8, 0.9], seconds=60.0)),
                                                    ({"train.lr": 1.0}, runs([0.5, 0.5, 0.5]))])
    spec["report"]["answer"] = "generic"
    sweep.write(spec, out, planned, {})
    index = (root / "README.md").read_text()
    assert "| [bias](bias/report.md) |" in index
    assert ("| [plain](plain/report.md) | plain | best final test_acc: lr=0.1, 0.800 ± 0.100 (n=3) | 15 min in epochs, "
            "6 of 6 runs done |") in index


def test_a_sweep_outside_results_sweeps_leaves_no_index(tmp_path, monkeypatch):
    from bn_lenet.sweeps import sweep
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(Path(__file__).resolve().parents[1] / "configs")
    spec, out, planned = make_sweep(tmp_path / "elsewhere", "bias", bias_points(0.0))
    sweep.write(spec, out, planned, {})
    assert not (tmp_path / "elsewhere" / "README.md").exists() and (out / "report.md").is_file()


def test_the_readme_list_is_replaced_between_its_markers_only(tmp_path):
    from bn_lenet.sweeps.index import BEGIN, END, update_readme
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\n- stale line\n{END}\noutro\n")
    rows = [{"question": "Bias before BN", "report": "bias/report.md", "answer": "test acc 0.880"}]
    assert update_readme(readme, Path("results/sweeps"), rows)
    assert readme.read_text() == (f"intro\n{BEGIN}\n- [Bias before BN](results/sweeps/bias/report.md): test acc 0.880.\n"
                                  f"{END}\noutro\n")
    (tmp_path / "plain.md").write_text("no markers\n")
    assert not update_readme(tmp_path / "plain.md", Path("results/sweeps"), rows)
    assert (tmp_path / "plain.md").read_text() == "no markers\n"


def test_when_test_accuracy_swings_the_steadier_training_loss_still_tells_the_points_apart(tmp_path):
    swinging = {s: {"acc": curve(f), "loss": [0.3 - 0.01 * e for e in range(5)]} for s, f in zip(SEEDS, (0.70, 0.90, 0.80))}
    flat = {s: {"acc": curve(f), "loss": [0.6 - 0.01 * e for e in range(5)]} for s, f in zip(SEEDS, (0.78, 0.80, 0.79))}
    text, _, _ = answer(tmp_path, "layers", [({"model.norm_layers": []}, flat),
                                             ({"model.norm_layers": list(LAYERS)}, swinging)])
    assert "does not beat no BN in final test accuracy beyond seed noise" in text
    assert ("Final training loss: all four minus no layer: -0.300 in loss (all four 0.260 ± 0.000 (n=3), no layer "
            "0.560 ± 0.000 (n=3)); beyond seed noise") in text


def test_provenance_names_runs_another_sweep_trained_and_this_one_adopted():
    from bn_lenet.sweeps.report import adopted_lines
    own = {"meta": {"command": "/x/bn_lenet/__main__.py sweep configs/sweeps/batch_size.toml --quiet"}}
    other = {"meta": {"command": "/x/bn-lenet sweep configs/sweeps/norm_kinds.toml --quiet"}}
    sweep = {"spec": {"spec_file": "configs/sweeps/batch_size.toml"}, "runs": [own, own, other]}
    assert adopted_lines(sweep) == ["- 1 of 3 runs were trained by `bn-lenet sweep configs/sweeps/norm_kinds.toml "
                                    "--quiet` and adopted here (the same config, checked when adopted); their time "
                                    "is in the compute above, not in the invocations listed"]
    assert adopted_lines({**sweep, "runs": [own]}) == []
