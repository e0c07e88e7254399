"""On a CUDA GPU: the paths a CPU cannot run. Marked ``gpu``: skipped where PyTorch sees no GPU (conftest.py),
run by the same ``make test`` where it does; ``pytest -m gpu`` runs only these.

Tolerances, and why they are not zero: a GPU sums in another order than the CPU, and cuDNN may pick other
algorithms (FFT, Winograd) and weight-gradient kernels that add with atomics, in any order from run to run; so
values agree to float32 rounding, not bit for bit. Where small differences pass through several SGD steps at the
tutorial's lr 1.0 the tolerance is wider. A broken path (an empty CUDA graph, a resume from the wrong state)
misses them by orders of magnitude. "fp32" is IEEE fp32 here: fit() turns TF32 off (train.set_fp32_math).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bn_lenet.training import config, graph_step, runs
from bn_lenet.network.batchnorm import BatchNorm
from bn_lenet.anchors.benchmark_report import device_kind
from bn_lenet.training.data import FashionMNIST
from bn_lenet.errors import UserError
from bn_lenet.network.model import lenet
from bn_lenet.training.device import resolve_device
from bn_lenet.training.train import fit, make_optimizer, set_fp32_math, train_step

from helpers import quiet  # noqa: E402

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "scratch_bn.toml"
TIMING = ("examples_per_sec", "seconds")



@pytest.fixture
def tf32_flags_restored():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def subset(d, train, test):
    return FashionMNIST(d.train_images[:train], d.train_labels[:train], d.test_images[:test], d.test_labels[:test],
                        d.source)


# --- the scratch BN and the network: CUDA against CPU -----------------------------------------------------

@pytest.mark.parametrize("dtype,tol", [
    (torch.float64, {"rtol": 1e-10, "atol": 1e-10}),  # the same arithmetic: only summation order differs
    # float32 sums over up to 36,864 values per channel: on CPU, float32 against float64 differs by up to 7e-5
    # (dgamma, of magnitude 430) and 4e-5 relative; two float32 orders differ by about twice that at most
    (torch.float32, {"rtol": 1e-4, "atol": 1e-4}),
])
@pytest.mark.parametrize("num_dims,shape", [(4, (64, 6, 24, 24)), (2, (256, 120))])
def test_scratch_bn_on_cuda_equals_the_cpu_forward_backward_and_moving_statistics(num_dims, shape, dtype, tol):
    x, upstream = torch.randn(shape, dtype=dtype) * 3 + 1, torch.randn(shape, dtype=dtype)
    got = {}
    for device in ("cpu", "cuda"):
        bn = BatchNorm(shape[1], num_dims).to(device, dtype)
        with torch.no_grad():  # non-trivial gamma and beta
            bn.gamma.copy_(torch.linspace(0.5, 1.5, shape[1]))
            bn.beta.copy_(torch.linspace(-1.0, 1.0, shape[1]))
        xd = x.to(device).requires_grad_()
        y = bn(xd)
        (y * upstream.to(device)).sum().backward()
        bn.eval()
        y_eval = bn(x.to(device))
        got[device] = {"y": y, "dx": xd.grad, "dgamma": bn.gamma.grad, "dbeta": bn.beta.grad,
                       "moving_mean": bn.moving_mean, "moving_var": bn.moving_var, "y_eval": y_eval}
    for name, want in got["cpu"].items():
        torch.testing.assert_close(got["cuda"][name].detach().cpu(), want.detach(), **tol,
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("norm", ["scratch", "torch"])
def test_a_training_step_on_cuda_equals_the_cpu_one_in_fp32(norm, tf32_flags_restored):
    set_fp32_math("fp32", torch.device("cuda"))  # as fit() does: IEEE fp32 convolutions and matmuls
    torch.manual_seed(0)
    cpu_model = lenet(norm)
    cuda_model = lenet(norm).cuda()
    cuda_model.load_state_dict(cpu_model.state_dict())
    x, y = torch.rand(256, 1, 28, 28), torch.randint(0, 10, (256,))
    results = []
    for model, device in ((cpu_model, "cpu"), (cuda_model, "cuda")):
        loss, _ = train_step(model, make_optimizer(model, 1.0), x.to(device), y.to(device))
        results.append((loss.item(), {k: v.detach().cpu() for k, v in model.state_dict().items()}))
    (cpu_loss, cpu_state), (cuda_loss, cuda_state) = results
    # cuDNN may convolve by FFT or Winograd, exact to about 1e-5 relative in fp32 (TF32 would be ~1e-3)
    assert cuda_loss == pytest.approx(cpu_loss, rel=1e-4)
    for k in cpu_state:  # weights and BN statistics after one step at lr 1.0
        torch.testing.assert_close(cuda_state[k], cpu_state[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")


def test_fit_on_cuda_sets_tf32_from_train_precision(fashion_mnist, tf32_flags_restored):
    data = subset(fashion_mnist, 512, 100).to("cuda")
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True  # PyTorch's defaults
    for precision, tf32 in (("fp32", False), ("tf32", True), ("bf16", False)):
        cfg = config.resolve(None, ["train.epochs=1", "train.limit_batches=1", f"train.precision={precision}"])
        fit(lenet("scratch").cuda(), data, cfg)
        assert torch.backends.cudnn.allow_tf32 is tf32 and torch.backends.cuda.matmul.allow_tf32 is tf32, precision


def test_a_gpu_index_that_does_not_exist_is_one_clear_error():
    with pytest.raises(UserError, match=r"PyTorch sees \d+ CUDA GPU\(s\)"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


# --- train.cuda_graph against the eager loop ----------------------------------------------------------------

def gpu(where: str) -> torch.device:
    if where == "current":
        return torch.device("cuda", torch.cuda.current_device())
    if torch.cuda.device_count() < 2:
        pytest.skip("one GPU: a capture on a GPU that is not the current one needs two")
    return torch.device("cuda", torch.cuda.device_count() - 1)


@pytest.mark.parametrize("where", ["current", "another"])
@pytest.mark.parametrize("norm,precision", [("scratch", "fp32"), ("torch", "fp32"), ("scratch", "bf16")])
def test_one_epoch_with_the_cuda_graph_equals_the_eager_loop(fashion_mnist, monkeypatch, where, norm, precision):
    device = gpu(where)
    current = torch.cuda.current_device()
    data = subset(fashion_mnist, 2600, 1000).to(device)  # 10 full batches of 256 and a partial one of 40
    captured = []
    real_capture = graph_step.capture
    monkeypatch.setattr(graph_step, "capture", lambda *a, **k: captured.append(real_capture(*a, **k)) or captured[-1])
    results = []
    for cuda_graph in (False, True):
        cfg = config.resolve(None, ["train.epochs=1", f"model.norm={norm}", f"train.precision={precision}",
                                    f"train.cuda_graph={str(cuda_graph).lower()}"])
        torch.manual_seed(1)
        model = lenet(norm).to(device)
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        [stats] = fit(model, data, cfg)
        results.append((stats, model.state_dict(), initial))
    assert len(captured) == 1 and isinstance(captured[0], torch.cuda.CUDAGraph)  # the graph run captured once
    assert torch.cuda.current_device() == current  # the capture's device context was left
    (eager, eager_state, initial), (graphed, graph_state, _) = results
    assert graphed.loss == pytest.approx(eager.loss, rel=1e-3)
    assert graphed.train_acc == pytest.approx(eager.train_acc, abs=5 / 2600)  # a few argmax ties may flip
    assert graphed.test_acc == pytest.approx(eager.test_acc, abs=5 / 1000)
    for k, v in eager_state.items():
        if v.is_floating_point():  # 11 steps at lr 1.0 from the same start; an empty graph would train 1
            torch.testing.assert_close(graph_state[k], v, rtol=1e-3, atol=1e-3, msg=lambda m: f"{k}: {m}")
            if k.endswith("weight") and "bn" not in k:
                assert (graph_state[k] - initial[k]).abs().max() > 1e-3, f"{k} was not trained"


# --- the benchmark and resume on cuda ---------------------------------------------------------------------

def test_the_benchmarks_quick_run_on_cuda_writes_its_files_with_a_gpu_profile(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "bn_lenet", "benchmark", "--quick", "--epochs", "1", "--batches",
                           "3", "--device", "cuda", "--profile", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    stem = f"{device_kind(torch.device('cuda'))}-quick"
    report = json.loads((tmp_path / f"{stem}.json").read_text())
    loops = {(v["loop"], v["norm"]): v for v in report["variants"]}
    assert set(loops) == {("tutorial", "scratch"), ("tutorial", "torch"), ("project", "scratch"),
                          ("project", "torch"), ("project", "none"), ("project+graph", "scratch"),
                          ("project+graph", "torch")}
    for v in report["variants"]:
        assert v["examples_per_sec"] > 0 and 0 <= v["test_acc"] <= 1 and v["tf32"] is False
    for norm in ("scratch", "torch"):  # the same 3 batches from the same start, replayed or launched
        assert loops[("project+graph", norm)]["loss"] == pytest.approx(loops[("project", norm)]["loss"], rel=1e-3)
    assert report["memory"]["cuda_max_allocated_mb"] > 0
    assert report["profile_time"] == "self_device_time_total"
    assert set(report["profiles"]) == {"project scratch", "project torch"}
    for ops in report["profiles"].values():
        assert ops and all(o["self_ms_per_step"] > 0 for o in ops) and sum(o["percent"] for o in ops) <= 100.01
    md = (tmp_path / f"{stem}.md").read_text()
    assert "QUICK MODE" in md and "GPU self time per training step" in md and "| project+graph | scratch |" in md


def result(run_dir):
    rows = [{k: v for k, v in r.items() if k not in TIMING} for r in runs.read_metrics(run_dir)]
    return rows, torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_an_interrupted_run_on_cuda_resumes_to_the_uninterrupted_result(fashion_mnist, tmp_path, monkeypatch,
                                                                         cuda_graph):
    """Within a tolerance, not bit for bit (see the module docstring); the CPU's bitwise check is
    tests/test_resume.py's."""
    data = subset(fashion_mnist, 60000, 500)
    cfg = config.resolve(CONFIG, ["train.epochs=3", "train.limit_batches=3", "train.batch_size=64",
                                  "train.device=cuda", f"train.cuda_graph={str(cuda_graph).lower()}"])
    assert runs.train_run(cfg, out=tmp_path / "straight", data=data, log=quiet)["status"] == "finished"

    monkeypatch.setenv("BN_LENET_TEST_SIGNAL", "SIGTERM@batch:5")  # during epoch 2
    meta = runs.train_run(cfg, out=tmp_path / "run", data=data, log=quiet, log_error=quiet)
    assert meta["status"] == "interrupted" and meta["epochs_done"] == 1
    assert meta["device"].startswith("cuda") and meta["tf32"] is False
    monkeypatch.delenv("BN_LENET_TEST_SIGNAL")
    resumed_cfg, _ = runs.resume_config(tmp_path / "run")
    meta = runs.train_run(resumed_cfg, out=tmp_path / "run", data=data, log=quiet, resume=True)
    assert meta["status"] == "finished" and [r["at_epoch"] for r in meta["resumed"]] == [1]

    (rows, weights), (want_rows, want_weights) = result(tmp_path / "run"), result(tmp_path / "straight")
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in want_rows] == [1, 2, 3]
    for r, w in zip(rows, want_rows):
        assert r["loss"] == pytest.approx(w["loss"], rel=1e-3)
        assert r["train_acc"] == pytest.approx(w["train_acc"], abs=2 / 192)  # 3 batches of 64
        assert r["test_acc"] == pytest.approx(w["test_acc"], abs=3 / 500)
    assert weights.keys() == want_weights.keys()
    for k, v in want_weights.items():
        if v.is_floating_point():
            torch.testing.assert_close(weights[k], v, rtol=1e-3, atol=1e-4, msg=lambda m: f"{k}: {m}")
        else:
            assert torch.equal(weights[k], v), k  # nn.BatchNorm's num_batches_tracked
