"""log.tensorboard: what a real run writes, read back with TensorBoard's own readers (EventAccumulator, the event
file loader, the event multiplexer its HParams plugin reads from), never with our code.

Runs are short: 2 or 3 epochs of 3 batches of 64, evaluated on the first 500 test images. The resumed run is
killed for real (SIGKILL from the test hook in bn_lenet/training/files.py) after it logged an epoch it had not saved.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("tensorboard")  # the test extra installs it
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader  # noqa: E402
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer  # noqa: E402
from tensorboard.plugins.hparams import metadata as hp_metadata  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402

from bn_lenet.training import config, runs, tb_log  # noqa: E402
from helpers import TEST_IMAGES, child_script  # noqa: E402

pytestmark = pytest.mark.usefixtures("quick_runs")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "scratch_bn.toml"
QUICK = ["train.limit_batches=3", "train.batch_size=64", "train.threads=1", "log.tensorboard=true"]
# The tutorial's LeNet: a BN layer after each conv and each hidden linear layer, with this many channels.
BN_CHANNELS = {"conv1.bn": 6, "conv2.bn": 16, "fc1.bn": 120, "fc2.bn": 84}
BN_TENSORS = ("gamma", "beta", "moving_mean", "moving_var")

CHILD = child_script(TEST_IMAGES)


def read(tb_dir) -> EventAccumulator:
    ea = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})  # keep all
    ea.Reload()
    return ea


def steps(ea, tag, kind="Scalars"):
    return [e.step for e in getattr(ea, kind)(tag)]


@pytest.mark.parametrize("norm", ["scratch", "torch"])
def test_a_run_logs_each_metric_once_per_epoch_and_every_bn_layers_tensors(norm, small_data, tmp_path):
    out = tmp_path / "run"
    cfg = config.resolve(CONFIG, QUICK + ["train.epochs=2", f"model.norm={norm}", "eval.precise_bn=true",
                                          "eval.precise_bn_batches=2"])
    assert runs.train_run(cfg, out=out, data=small_data, log=lambda *_: None)["status"] == "finished"
    ea, rows = read(out / "tb"), runs.read_metrics(out)

    expected = {"loss/train": "loss", "accuracy/train": "train_acc", "accuracy/test": "test_acc",
                "accuracy/test_precise_bn": "test_acc_precise", "speed/examples_per_sec": "examples_per_sec",
                "speed/epoch_seconds": "seconds"}
    assert set(ea.Tags()["scalars"]) == set(expected) | {"lr"}
    for tag, field in expected.items():
        assert steps(ea, tag) == [1, 2], tag
        assert [e.value for e in ea.Scalars(tag)] == pytest.approx([r[field] for r in rows], rel=1e-6), tag
    assert [e.value for e in ea.Scalars("lr")] == [1.0, 1.0]

    last = runs.read_json(out / "bn_params.json")
    assert sorted(ea.Tags()["histograms"]) == sorted(f"{t}/{layer}" for t in BN_TENSORS for layer in BN_CHANNELS)
    for layer, channels in BN_CHANNELS.items():
        for t in BN_TENSORS:
            assert steps(ea, f"{t}/{layer}", "Histograms") == [1, 2]
            h = ea.Histograms(f"{t}/{layer}")[-1].histogram_value
            assert h.num == channels
            if t in ("gamma", "beta"):  # the histogram is of the values bn_params.json holds
                assert (h.min, h.max) == pytest.approx((min(last[layer][t]), max(last[layer][t])))
    text = ea.Tensors("config/text_summary")
    assert [e.step for e in text] == [0]
    assert text[0].tensor_proto.string_val[0].decode().split("\n") == [
        "    " + line for line in config.to_toml(cfg).splitlines()]  # the run's config.toml, as a code block


def test_a_run_without_bn_logs_scalars_and_no_histograms(small_data, tmp_path):
    cfg = config.resolve(CONFIG, QUICK + ["train.epochs=1", "model.norm=none"])
    runs.train_run(cfg, out=tmp_path / "run", data=small_data, log=lambda *_: None)
    ea = read(tmp_path / "run" / "tb")
    assert steps(ea, "accuracy/test") == [1] and ea.Tags()["histograms"] == []


def test_log_tensorboard_false_writes_no_event_files(small_data, tmp_path):
    cfg = config.resolve(CONFIG, QUICK[:-1] + ["train.epochs=1"])
    runs.train_run(cfg, out=tmp_path / "run", data=small_data, log=lambda *_: None)
    assert not (tmp_path / "run" / "tb").exists()


def child(args, test_signal=None):
    env = {k: v for k, v in os.environ.items() if k != "BN_LENET_TEST_SIGNAL"}
    if test_signal:
        env["BN_LENET_TEST_SIGNAL"] = test_signal
    return subprocess.run([sys.executable, "-c", CHILD, "run", *args, "--quiet"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_resumed_run_continues_the_same_curves_without_duplicate_steps(tmp_path):
    run = tmp_path / "run"
    new = [str(CONFIG), "--out", str(run)] + [a for s in QUICK + ["train.epochs=3"] for a in ("--set", s)]
    # Killed after epoch 2 went to TensorBoard and before its checkpoint: the resumed run trains epoch 2 again.
    killed = child(new, "SIGKILL@tensorboard:2")
    assert killed.returncode == -9, killed.stderr
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert steps(read(run / "tb"), "loss/train") == [1, 2]

    resumed = child(["--resume", str(run)])
    assert resumed.returncode == 0, resumed.stderr
    ea, rows = read(run / "tb"), runs.read_metrics(run)
    for tag in ea.Tags()["scalars"]:
        assert steps(ea, tag) == [1, 2, 3], tag
    for tag in ea.Tags()["histograms"]:
        assert steps(ea, tag, "Histograms") == [1, 2, 3], tag
    # Epoch 2's examples/sec is the resumed run's (the killed run's was timed separately), as in metrics.jsonl.
    assert [e.value for e in ea.Scalars("speed/examples_per_sec")] == pytest.approx(
        [r["examples_per_sec"] for r in rows], rel=1e-6)
    assert [e.step for e in ea.Tensors("config/text_summary")] == [0]

    # The files themselves do hold epoch 2 twice: TensorBoard hides the killed run's copy (purge_step).
    files = sorted((run / "tb").glob("events.out.tfevents.*"))
    assert len(files) == 2
    written = [ev.step for f in files for ev in EventFileLoader(str(f)).Load()
               if ev.HasField("summary") and any(v.tag == "loss/train" for v in ev.summary.value)]
    assert written == [1, 2, 2, 3]


@pytest.mark.slow
def test_log_tensorboard_without_tensorboard_installed_is_refused_before_training(tmp_path):
    # The child sees no tensorboard package (as after `pip install bn-lenet` without the extra).
    no_tb = "import sys; sys.modules['tensorboard'] = None\n" + CHILD
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-c", no_tb, "run", str(CONFIG), "--set", "log.tensorboard=true",
                        "--out", str(out), "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: log.tensorboard = true needs TensorBoard")
    assert "pip install 'bn-lenet[tensorboard]'" in p.stderr and "Traceback" not in p.stderr
    assert not out.exists()  # refused before the run directory was made


# --- a sweep's HParams summary -----------------------------------------------------------------------------

def fake_sweep(sweep_dir: Path) -> list:
    """Run folders laid out as the sweep engine writes them (OUT/runs/<point>/seed-<s>/), each with a tb/."""
    rows = []
    for lr in (0.1, 1.0):
        for norm in ("scratch", "torch"):
            for seed in (0, 1):
                run = f"runs/lr-{lr}_norm-{norm}/seed-{seed}"
                (sweep_dir / run / "tb").mkdir(parents=True)
                rows.append({"run": run, "hparams": {"train.lr": lr, "model.norm": norm, "train.seed": seed},
                             "metrics": {"test_acc": 0.8 + lr / 10 + seed / 100, "loss": 0.5 - seed / 10}})
    return rows


def test_a_sweeps_hparams_summary_lists_its_grid_keys_and_each_runs_values(tmp_path):
    rows = fake_sweep(tmp_path)
    tb_log.write_hparams(tmp_path, rows)
    tb_log.write_hparams(tmp_path, rows)  # written again (a re-run report): replaced, not added to

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(tmp_path))
    mux.Reload()
    content = mux.PluginRunToTagToContent(hp_metadata.PLUGIN_NAME)
    experiments = [hp_metadata.parse_experiment_plugin_data(tags[hp_metadata.EXPERIMENT_TAG])
                   for tags in content.values() if hp_metadata.EXPERIMENT_TAG in tags]
    assert len(experiments) == 1
    exp = experiments[0]
    assert [h.name for h in exp.hparam_infos] == ["train.lr", "model.norm", "train.seed"]
    domains = {h.name: [getattr(v, v.WhichOneof("kind")) for v in h.domain_discrete.values] for h in exp.hparam_infos}
    assert domains == {"train.lr": [0.1, 1.0], "model.norm": ["scratch", "torch"], "train.seed": [0, 1]}
    assert [m.name.tag for m in exp.metric_infos] == ["final/test_acc", "final/loss"]

    sessions = {run: hp_metadata.parse_session_start_info_plugin_data(tags[hp_metadata.SESSION_START_INFO_TAG])
                for run, tags in content.items() if hp_metadata.SESSION_START_INFO_TAG in tags}
    assert sorted(sessions) == sorted(f"{r['run']}/tb" for r in rows)  # TensorBoard's run names: readable paths
    for row in rows:
        run = f"{row['run']}/tb"
        hp = sessions[run].hparams
        assert (hp["train.lr"].number_value, hp["model.norm"].string_value, hp["train.seed"].number_value) == \
            (row["hparams"]["train.lr"], row["hparams"]["model.norm"], row["hparams"]["train.seed"])
        acc = mux.GetAccumulator(run)
        for metric, value in row["metrics"].items():
            events = acc.Tensors(f"final/{metric}")  # as the HParams plugin reads a metric
            assert len(events) == 1 and tensor_util.make_ndarray(events[0].tensor_proto) == pytest.approx(value)
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1


def test_hparams_reads_bools_as_true_false_and_a_mixed_key_without_a_domain(tmp_path):
    rows = [{"run": "a", "hparams": {"eval.precise_bn": True, "bn.momentum": 0.9}, "metrics": {"test_acc": 0.8}},
            {"run": "b", "hparams": {"eval.precise_bn": False, "bn.momentum": "default"}, "metrics": {"test_acc": 0.7}}]
    tb_log.write_hparams(tmp_path, rows)
    ea = read(tmp_path)
    exp = hp_metadata.parse_experiment_plugin_data(ea.SummaryMetadata(hp_metadata.EXPERIMENT_TAG).plugin_data.content)
    infos = {h.name: h for h in exp.hparam_infos}
    assert [v.string_value for v in infos["eval.precise_bn"].domain_discrete.values] == ["false", "true"]
    assert not infos["bn.momentum"].HasField("domain_discrete")
    ssi = hp_metadata.parse_session_start_info_plugin_data(
        read(tmp_path / "b" / "tb").SummaryMetadata(hp_metadata.SESSION_START_INFO_TAG).plugin_data.content)
    assert ssi.hparams["eval.precise_bn"].string_value == "false"
    assert ssi.hparams["bn.momentum"].string_value == "default"


def test_config_has_log_tensorboard_off_by_default():
    assert config.resolve().log.tensorboard is False
    assert "\ntensorboard = false\n" in config.to_toml(config.resolve()).split("[log]")[1]
    assert json.loads(json.dumps(config.to_dict(config.resolve())))["log"]["tensorboard"] is False


def test_a_checkpoint_from_before_the_log_section_still_resumes(tmp_path):
    cfg = config.resolve(CONFIG)
    old = {k: v for k, v in config.to_dict(cfg).items() if k != "log"}  # as written before [log] existed
    torch.save({"config": old, "epoch": 1}, tmp_path / "checkpoint.pt")
    assert runs.checkpoint_of(tmp_path, cfg)["epoch"] == 1
    torch.save({"config": dict(old, train=dict(old["train"], lr=0.5)), "epoch": 1}, tmp_path / "checkpoint.pt")
    with pytest.raises(runs.UserError, match="differs from the config saved"):
        runs.checkpoint_of(tmp_path, cfg)


@pytest.mark.slow
def test_a_sweep_with_log_tensorboard_shows_each_run_and_its_hparams_in_tensorboard(tmp_path):
    """A real sweep (2 points x 1 seed, 1 epoch of 2 batches): each run logs its curves under its readable
    run directory, and the sweep's HParams summary lists the swept key and the seed."""
    from bn_lenet.cli import main
    spec = tmp_path / "tiny.toml"
    spec.write_text('config = "configs/scratch_bn.toml"\nseeds = 1\n[set]\n"train.epochs" = 1\n'
                    '"train.limit_batches" = 2\n"train.device" = "cpu"\n"log.tensorboard" = true\n'
                    '[grid]\n"model.norm" = ["scratch", "torch"]\n')
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "1", "--quiet"]) == 0
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(out))
    mux.Reload()
    content = mux.PluginRunToTagToContent(hp_metadata.PLUGIN_NAME)
    [exp] = [hp_metadata.parse_experiment_plugin_data(tags[hp_metadata.EXPERIMENT_TAG])
             for tags in content.values() if hp_metadata.EXPERIMENT_TAG in tags]
    assert [h.name for h in exp.hparam_infos] == ["model.norm", "train.seed"]
    runs = sorted(run for run, tags in content.items() if hp_metadata.SESSION_START_INFO_TAG in tags)
    assert runs == ["runs/norm=scratch/seed-0/tb", "runs/norm=torch/seed-0/tb"]
    for run in runs:
        assert steps(read(out / Path(run)), "accuracy/test") == [1]  # the run's own curve, one epoch
