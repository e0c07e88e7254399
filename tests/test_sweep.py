"""`bn-lenet sweep` on real Fashion-MNIST: a small sweep (2 points x 2 seeds, 2 epochs of 2 batches, one
point diverging at lr 1e38) run straight, run with a worker killed mid-run, killed as a whole and run again,
and run on a real local Ray instance whose workers are killed: every way ends with the same metrics, bit
for bit (CPU, the same threads per run). Then the report's files, the rerun that trains nothing, adopting `bn-lenet run`
directories, and every bad input (one `error:` line, exit 2, nothing written).
"""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bn_lenet.training import runs
from bn_lenet.cli import main
from bn_lenet.sweeps.spec import point_ids, split_values
import helpers

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "scratch_bn.toml"
SPEC = f"""
question = "a test sweep"
config = "{CONFIG}"
seeds = 2
[set]
train.epochs = 2
train.limit_batches = 2
[[points]]
model.norm = "scratch"
[[points]]
model.norm = "scratch"
train.lr = 1e38
"""
SPEC_FILE = "tiny.toml"
POINTS = ["norm=scratch", "norm=scratch,lr=1e+38"]
RUN_DIRS = [f"{p}/seed-{s}" for p in POINTS for s in (0, 1)]
FILES = {"config.toml", "metrics.jsonl", "metrics.csv", "meta.json", "bn_params.json", "bn_history.json"}


def sweep(spec, out, *extra):
    return helpers.sweep(spec, out, "--jobs", "2", *extra)


def results(out: Path) -> dict:
    """What must not depend on how a sweep ran: each run's status and per-epoch loss and accuracies."""
    found = {}
    for d in RUN_DIRS:
        meta = runs.read_json(out / "runs" / d / "meta.json")
        found[d] = (meta["status"], [(r["epoch"], r["loss"], r["train_acc"], r["test_acc"])
                                     for r in runs.read_metrics(out / "runs" / d)])
    return found


@pytest.fixture(scope="module")
def straight(spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "out"
    assert sweep(spec, out) == 0
    return out


@pytest.mark.slow
def test_every_point_and_seed_is_an_ordinary_run_directory_and_divergence_is_a_result(straight):
    assert sorted(str(p.relative_to(straight / "runs")) for p in (straight / "runs").glob("*/*")) == sorted(RUN_DIRS)
    found = results(straight)
    for d in RUN_DIRS:
        files = {p.name for p in (straight / "runs" / d).iterdir()}
        status, rows = found[d]
        if "lr=1e+38" in d:  # diverged in its first epoch: nothing but its config and why it stopped
            assert status == "diverged" and rows == [] and {"config.toml", "meta.json"} <= files
        else:
            assert status == "finished" and [r[0] for r in rows] == [1, 2] and FILES <= files
    cfg = (straight / "runs" / "norm=scratch,lr=1e+38" / "seed-1" / "config.toml").read_text()
    assert "lr = 1e+38" in cfg and "seed = 1" in cfg and "epochs = 2" in cfg and "threads = 0" in cfg
    meta = runs.read_json(straight / "runs" / "norm=scratch" / "seed-1" / "meta.json")
    assert meta["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)  # cores // jobs, not in the config


@pytest.mark.slow
def test_summary_csv_has_one_row_per_point_with_the_spread_over_seeds(straight):
    with open(straight / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    columns = list(rows[0])
    assert columns[:7] == ["point", "model.norm", "train.lr", "seeds", "finished", "stuck", "diverged"]
    for metric in ("loss", "train_acc", "test_acc"):
        assert [f"{metric}_{s}" for s in ("mean", "std", "min", "max")] == \
            columns[columns.index(f"{metric}_mean"):columns.index(f"{metric}_mean") + 4]
    assert columns[-1] == "examples_per_sec_mean"
    assert [r["point"] for r in rows] == POINTS
    by_point = {r["point"]: r for r in rows}
    losses = [runs.read_metrics(straight / "runs" / "norm=scratch" / f"seed-{s}")[-1]["loss"] for s in (0, 1)]
    ok = by_point["norm=scratch"]
    assert float(ok["loss_mean"]) == pytest.approx(sum(losses) / 2)
    assert float(ok["loss_std"]) == pytest.approx(abs(losses[0] - losses[1]) / 2 ** 0.5)  # sample std of 2
    assert float(ok["loss_min"]) == min(losses) and float(ok["loss_max"]) == max(losses)
    assert (ok["seeds"], ok["finished"], ok["diverged"]) == ("2", "2", "0")
    wild = by_point["norm=scratch,lr=1e+38"]
    assert (wild["finished"], wild["diverged"], wild["test_acc_mean"]) == ("0", "2", "")


@pytest.mark.slow
def test_report_md_answers_with_numbers_then_table_figures_and_how_to_reproduce(straight):
    text = (straight / "report.md").read_text()
    for part in ("a test sweep", "## Answer", "lr=1e+38 (2 of 2 runs diverged) vs norm=scratch", "no finished run",
                 "**Setup:** Fashion-MNIST", "## Results per point", "## Figures", "![curves.png](curves.png)",
                 "## Reproduce", "bn-lenet sweep", "## Provenance", "torch threads per run", "versions: Python"):
        assert part in text, part
    assert (straight / "curves.png").stat().st_size > 0
    sweep_json = json.loads((straight / "sweep.json").read_text())
    assert [r["status"] for r in sweep_json["runs"]] == ["finished"] * 2 + ["diverged"] * 2
    assert sweep_json["runs"][0]["overrides"][-2:] == ['model.norm="scratch"', "train.seed=0"]


@pytest.mark.slow
def test_a_rerun_trains_nothing(straight, spec, capsys):
    before = {p: p.stat().st_mtime_ns for p in (straight / "runs").rglob("*")}
    started = time.perf_counter()
    assert sweep(spec, straight) == 0
    assert "4 done, 0 to train" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (straight / "runs").rglob("*")} == before
    assert time.perf_counter() - started < 30


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_replaced_and_its_run_resumes(spec, straight, tmp_path, monkeypatch, capsys):
    # Each worker stops itself (SIGSTOP) right after a run's first epoch is saved; the first one stopped
    # is SIGKILLed, the others continued.
    monkeypatch.setenv("BN_LENET_TEST_SIGNAL", "SIGSTOP@checkpoint:1")
    killed, done = [], threading.Event()

    def killer():
        while not done.is_set():
            for pid in workers(os.getpid()):
                if state(pid) == "T":
                    os.kill(pid, signal.SIGCONT if killed else signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        assert sweep(spec, tmp_path / "out") == 0
    finally:
        done.set()
        thread.join()
    assert capsys.readouterr().err.count("its worker died (exit code -9); starting it again") == 1
    assert results(tmp_path / "out") == results(straight)
    metas = [runs.read_json(tmp_path / "out" / "runs" / d / "meta.json") for d in RUN_DIRS[:2]]
    assert sorted("resumed" in m for m in metas) == [False, True]


@pytest.mark.slow
def test_a_sweep_killed_as_a_whole_continues_where_it_stopped(spec, straight, tmp_path):
    # Both workers stop themselves once their first run's epoch 1 is saved. Then: SIGKILL the parent and
    # one worker (its run is mid-way: epoch 1 of 2); the other worker, continued, must exit on its own.
    out = tmp_path / "out"
    env = dict(os.environ, BN_LENET_TEST_SIGNAL="SIGSTOP@checkpoint:1")
    parent = subprocess.Popen([sys.executable, "-m", "bn_lenet", "sweep", str(spec), "--out", str(out), "--jobs", "2",
                               "--quiet"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not (len(workers(parent.pid)) == 2 and all(state(p) == "T" for p in workers(parent.pid))):
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.05)
    killed, continued = workers(parent.pid)
    parent.kill()
    parent.wait()
    os.kill(killed, signal.SIGKILL)
    os.kill(continued, signal.SIGCONT)
    while alive(killed) or alive(continued):  # the orphan sees its parent gone, stops its run and exits
        assert time.monotonic() < deadline, "an orphaned worker kept running"
        time.sleep(0.1)
    stopped = [d for d in RUN_DIRS if (out / "runs" / d / "meta.json").exists()
               and runs.read_json(out / "runs" / d / "meta.json")["status"] != "finished"]
    assert stopped, "nothing left to resume"

    assert sweep(spec, out) == 0
    assert results(out) == results(straight)
    assert all("resumed" in runs.read_json(out / "runs" / d / "meta.json") for d in stopped)


@pytest.mark.slow
def test_ctrl_c_stops_every_run_at_its_next_batch_and_exits_130(spec, tmp_path):
    # Ctrl-C reaches the whole process group: here while both workers are stopped after epoch 1 of 2.
    out = tmp_path / "out"
    env = dict(os.environ, BN_LENET_TEST_SIGNAL="SIGSTOP@checkpoint:1")
    parent = subprocess.Popen([sys.executable, "-m", "bn_lenet", "sweep", str(spec), "--out", str(out), "--jobs", "2",
                               "--quiet"], cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (len(workers(parent.pid)) == 2 and all(state(p) == "T" for p in workers(parent.pid))):
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.05)
    stopped = workers(parent.pid)
    os.killpg(parent.pid, signal.SIGINT)
    for pid in stopped:
        os.kill(pid, signal.SIGCONT)
    _, err = parent.communicate(timeout=120)
    assert parent.returncode == 130 and "run the same command again to continue" in err and "Traceback" not in err, err
    metas = [runs.read_json(out / "runs" / d / "meta.json") for d in RUN_DIRS[:2]]
    assert [(m["status"], m["epochs_done"]) for m in metas] == [("interrupted", 1)] * 2
    assert not (out / "runs" / RUN_DIRS[2]).exists()  # nothing new starts after a stop
    assert (out / "report.md").is_file()  # a report of what is done so far
    [call] = runs.read_json(out / "sweep.json")["provenance"]["invocations"]
    assert call["stopped"] and call["trained"] == 0  # it brought no run to its end


def workers(pid: int) -> list:
    """The sweep's worker processes: children of ``pid`` started by multiprocessing's spawn (not its
    resource tracker)."""
    try:
        kids = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return [k for k in kids if b"spawn_main" in _cmdline(k)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def state(pid: int) -> str:
    """R, S, T (stopped), Z (zombie), ... from /proc; "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return ""


def alive(pid: int) -> bool:
    return state(pid) not in ("", "Z")


@pytest.mark.slow
def test_ray_runs_the_same_sweep_on_a_local_instance_and_retries_a_killed_worker(spec, straight, tmp_path,
                                                                                  monkeypatch):
    pytest.importorskip("ray", reason="the ray extra: pip install 'bn-lenet[ray]'")
    monkeypatch.setenv("BN_LENET_TEST_SIGNAL", "SIGKILL@checkpoint:1")  # each task's worker dies once
    assert sweep(spec, tmp_path / "out", "--executor", "ray") == 0
    assert results(tmp_path / "out") == results(straight)
    sweep_json = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert sweep_json["provenance"]["invocations"][0]["executor"] == "ray"


@pytest.mark.slow
def test_plain_run_directories_in_the_sweep_layout_are_adopted(tmp_path, capsys):
    out = tmp_path / "sweep"
    quick = ["--set", "train.epochs=1", "--set", "train.limit_batches=2"]
    assert main(["run", str(CONFIG), "--out", str(out / "runs" / "norm=none" / "seed-0"), "--quiet",
                 "--set", "model.norm=none", "--set", "train.seed=0", *quick]) == 0
    capsys.readouterr()
    assert main(["sweep", str(CONFIG), "--grid", "model.norm=none", "--seeds", "1", "--out", str(out), *quick]) == 0
    assert "1 done, 0 to train" in capsys.readouterr().out
    assert (out / "report.md").is_file()


# --- point ids and values ------------------------------------------------------------------------------------

def test_point_ids_are_readable_directory_names():
    def ids(*values):
        return point_ids([{"values": v} for v in values])
    assert ids({"model.norm": "scratch", "train.lr": 0.03}) == ["norm=scratch,lr=0.03"]
    assert ids({"train.lr": 1.0}, {"train.lr": 100.0}, {"train.lr": 1e-5}) == ["lr=1", "lr=100", "lr=1e-05"]
    assert ids({"eval.precise_bn": True, "train.epochs": 3}) == ["precise_bn=true,epochs=3"]
    assert ids({"a.layers": [1, 2]}, {"a.layers": []}) == ["layers=1+2", "layers=empty"]
    assert ids({"train.x": 1, "eval.x": 2}) == ["train.x=1,eval.x=2"]  # two keys share the leaf
    assert ids({"data.root": "/tmp/a b"}, {}) == ["root=-tmp-a-b", "base"]


def test_grid_values_are_toml_literals_and_lists_keep_their_commas():
    assert split_values("scratch,torch") == ["scratch", "torch"]
    assert split_values("0.1, 1, 1e2") == [0.1, 1, 100.0]
    assert split_values("[1,2],[3],true") == [[1, 2], [3], True]
    assert split_values('"a,b",c') == ["a,b", "c"]


# --- bad input: one error line, exit 2, nothing written -----------------------------------------------------

def bad_spec(tmp_path, text):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return str(path)


BASE = f'config = "{CONFIG}"\n'


@pytest.mark.parametrize("argv,message", [
    ([str(CONFIG), "--grid", "model.nrom=a,b"], "unknown key model.nrom"),
    ([str(CONFIG), "--grid", "train.lr=0.1,-1"], "point lr=-1: train.lr = -1.0 is out of range"),
    ([str(CONFIG), "--grid", "train.lr="], "the grid's train.lr has no values"),
    ([str(CONFIG), "--grid", "train.seed=1,2"], "train.seed is set by the sweep's seeds"),
    ([str(CONFIG), "--seeds", "0"], "seeds = 0: give at least 1"),
    ([str(CONFIG), "--jobs", "0"], "--jobs 0: give at least 1"),
    ([str(CONFIG), "--grid", "train.lr=0.1", "--set", "train.lr=1"], "train.lr is both fixed"),
    (["missing.toml"], "missing.toml not found"),
    (["SPEC:seeds = 0\n"], "seeds = 0: give at least 1"),
    (["SPEC:[grid]\n"], "the [grid] is empty"),
    (['SPEC:[grid]\n"model.norm" = []\n'], "the grid's model.norm has no values"),
    (['SPEC:[grid]\n"model.norm" = ["scratch", "batch"]\n'], "point norm=batch: model.norm = 'batch' is out of range"),
    (["SPEC:seeds = [0, 0]\n"], "seeds = [0, 0]"),
    (["SPEC:grid = [\n"], "is not valid TOML"),
    (["SPEC:qestion = 'x'\n"], "unknown key(s) qestion"),
    (["SPEC:[report]\nanswer = 'nope'\n"], "[report] has unknown key 'answer'"),
    (["SPEC:seeds = 2\n", "--grid", "train.lr=1,2"], "put the grid in it"),
    (['SPEC:[[points]]\n"train.processes" = 2\n"train.cuda_graph" = true\n'],
     "point processes=2,cuda_graph=true: train.cuda_graph = true cannot be used with train.processes = 2"),
    (["SPEC:seeds = 2\n", "--seeds", "0"], "seeds = 0: give at least 1"),
    ([str(CONFIG), "--executor", "ray", "--ray-address", "127.0.0.1:1", "--set", "train.epochs=1"],
     "--ray-address 127.0.0.1:1: cannot reach a Ray cluster there"),
])
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, capsys, argv, message):
    if argv[0].startswith("SPEC:"):
        argv = [bad_spec(tmp_path, BASE + argv[0][5:]), *argv[1:]]
    out = tmp_path / "out"
    started = time.perf_counter()
    assert main(["sweep", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()
    assert time.perf_counter() - started < 20  # an unreachable Ray address too: the connect is bounded


def test_without_ray_installed_the_error_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    assert main(["sweep", str(CONFIG), "--executor", "ray", "--out", str(tmp_path / "out")]) == 2
    assert "pip install 'bn-lenet[ray]'" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_changed_spec_is_refused_and_the_sweep_left_as_it_was(straight, spec, tmp_path, capsys):
    before = {p: p.stat().st_mtime_ns for p in straight.rglob("*")}
    changed = tmp_path / "changed.toml"
    changed.write_text(SPEC.replace("train.epochs = 2", "train.epochs = 3"))
    assert sweep(changed, straight) == 2
    assert "holds a run with another config" in capsys.readouterr().err
    fewer = tmp_path / "fewer.toml"
    fewer.write_text(SPEC.replace('[[points]]\nmodel.norm = "scratch"\ntrain.lr = 1e38\n', ""))
    assert sweep(fewer, straight) == 2
    assert "holds run(s) this spec does not ask for" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in straight.rglob("*")} == before


@pytest.mark.slow
def test_points_may_grow(straight, tmp_path, capsys):
    grown = tmp_path / "grown.toml"
    grown.write_text(SPEC + '[[points]]\nmodel.norm = "torch"\n')
    out = tmp_path / "out"
    import shutil
    shutil.copytree(straight, out)
    assert main(["sweep", str(grown), "--out", str(out), "--report-only"]) == 0
    assert "**2 of 6 runs are not done**" in (out / "report.md").read_text()
