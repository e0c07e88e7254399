"""The fast path trains the same model as a plain loop; the benchmark runs and writes its report."""

import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bn_lenet.network import batchnorm
from bn_lenet.training import config
from bn_lenet.training.data import FashionMNIST, epoch_order, num_batches, to_float
from bn_lenet.network.model import lenet
from bn_lenet.training.process import keep_freed_memory
from bn_lenet.training.train import fit, train_step

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small(fashion_mnist):
    """600 training images (batches of 256, 256 and a partial 88) and 1,000 test images."""
    d = fashion_mnist
    return FashionMNIST(d.train_images[:600], d.train_labels[:600], d.test_images[:1000], d.test_labels[:1000],
                        d.source)


def plain_batch_norm(X, gamma, beta, moving_mean, moving_var, eps=1e-5, momentum=0.9, training=True,
                     unbiased=False):
    """The textbook formula, differentiated by autograd: the reference for the hand-written backward."""
    dims = (0,) if X.ndim == 2 else (0, 2, 3)
    shape = (1, -1) if X.ndim == 2 else (1, -1, 1, 1)
    if not training:
        mean, var = moving_mean, moving_var
        return (X - mean.view(shape)) / torch.sqrt(var.view(shape) + eps) * gamma.view(shape) + beta.view(shape)
    var, mean = torch.var_mean(X, dim=dims, correction=0)
    with torch.no_grad():
        moving_mean.mul_(momentum).add_((1 - momentum) * mean)
        moving_var.mul_(momentum).add_((1 - momentum) * var)
    return (X - mean.view(shape)) / torch.sqrt(var.view(shape) + eps) * gamma.view(shape) + beta.view(shape)


def plain_epoch(model, data, cfg):
    """One epoch the plain way: same batches as fit, the formula BN, a for-loop SGD, metrics per batch."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, foreach=False)
    n, bs = data.train_labels.shape[0], cfg.train.batch_size
    order = epoch_order(n, cfg.train.seed, 1, "cpu")
    loss_sum, correct = 0.0, 0
    model.train()
    for b in range(num_batches(n, bs, cfg.train.limit_batches)):
        idx = order[b * bs:(b + 1) * bs]
        logits = model(to_float(data.train_images[idx]))
        loss = F.cross_entropy(logits, data.train_labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_sum += loss.item() * idx.shape[0]
        correct += (logits.argmax(1) == data.train_labels[idx]).sum().item()
    model.eval()
    with torch.no_grad():
        test_acc = (model(to_float(data.test_images)).argmax(1) == data.test_labels).float().mean().item()
    return loss_sum / n, correct / n, test_acc


@pytest.mark.slow
@pytest.mark.parametrize("norm,compile", [("scratch", False), ("torch", False), ("scratch", True)])
def test_fast_path_and_plain_loop_agree_on_epoch_1(small, monkeypatch, norm, compile):
    cfg = config.resolve(None, ["train.epochs=1", f"model.norm={norm}", f"train.compile={str(compile).lower()}"])
    if compile:  # dynamo and AOTAutograd trace our BN as fit compiles it; aot_eager skips inductor's C++ build
        real_compile = torch.compile
        monkeypatch.setattr(torch, "compile", lambda m: real_compile(m, backend="aot_eager"))
    torch.manual_seed(1)
    fast = lenet(norm)
    [stats] = fit(fast, small, cfg)
    monkeypatch.setattr(batchnorm, "batch_norm", plain_batch_norm)
    torch.manual_seed(1)
    plain = lenet(norm)
    plain.conv1.pool, plain.conv2.pool = nn.AvgPool2d(2, 2), nn.AvgPool2d(2, 2)  # PyTorch's pool, not ours
    loss, train_acc, test_acc = plain_epoch(plain, small, cfg)
    assert stats.loss == pytest.approx(loss, rel=1e-4)
    assert stats.train_acc == pytest.approx(train_acc, abs=2 / 600)  # at most 2 argmax ties flip
    assert stats.test_acc == pytest.approx(test_acc, abs=3 / 1000)
    for a, b in zip(fast.parameters(), plain.parameters()):  # the last partial batch was trained on too
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("num_dims,shape", [(4, (16, 6, 5, 5)), (2, (32, 12))])
def test_hand_written_backward_matches_autograd_of_the_formula_in_double(num_dims, shape):
    x = (torch.randn(shape, dtype=torch.double) * 3 + 2).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    gamma = (torch.rand(shape[1], dtype=torch.double) + 0.5).requires_grad_()
    beta = torch.randn(shape[1], dtype=torch.double).requires_grad_()
    g2, b2 = gamma.detach().clone().requires_grad_(), beta.detach().clone().requires_grad_()
    mm, mv = torch.zeros(shape[1], dtype=torch.double), torch.ones(shape[1], dtype=torch.double)
    y = batchnorm.batch_norm(x, gamma, beta, mm.clone(), mv.clone())
    y2 = plain_batch_norm(x2, g2, b2, mm.clone(), mv.clone())
    up = torch.randn_like(y)
    (y * up).sum().backward()
    (y2 * up).sum().backward()
    torch.testing.assert_close(y, y2)
    for a, b in ((x.grad, x2.grad), (gamma.grad, g2.grad), (beta.grad, b2.grad)):
        torch.testing.assert_close(a, b)


def test_scratch_bn_keeps_fp32_statistics_under_bf16_autocast():
    bn = batchnorm.BatchNorm(6, 4)
    x = (torch.randn(32, 6, 8, 8) * 2 + 3).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = bn(x)
    assert y.dtype == torch.bfloat16 and bn.moving_mean.dtype == bn.moving_var.dtype == torch.float32
    var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), correction=0)  # the bf16 values, statistics in fp32
    torch.testing.assert_close(bn.moving_mean, 0.1 * mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.moving_var, 0.9 + 0.1 * var, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_cpu_training_step_no_longer_page_faults_for_its_memory():
    assert keep_freed_memory()  # glibc: the CI image is Debian
    model, x, y = lenet("scratch"), torch.rand(256, 1, 28, 28), torch.randint(0, 10, (256,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):  # the heap grows to a step's working set
        train_step(model, opt, x, y)
    faults = []
    for _ in range(7):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        train_step(model, opt, x, y)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    # The median step: with glibc's defaults it usually takes 1,000-5,000 here (its own adaptive thresholds
    # sometimes settle too); with the setting, the odd step that still faults (a spike from another thread's
    # arena) is not the median.
    assert statistics.median(faults) < 50, faults


@pytest.mark.slow
def test_benchmark_quick_mode_writes_a_table_and_both_files(tmp_path):
    # Run from tmp_path: the tutorial's torchvision reader prepares ./data there, not in the checkout.
    # One OpenMP thread: two on a busy 2-core runner crawl. On the CPU: its files and loops are checked (the
    # GPU's are in tests/test_gpu.py).
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "bn_lenet", "benchmark", "--quick", "--epochs", "1", "--batches",
                           "3", "--device", "cpu", "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "project/tutorial scratch" in proc.stdout and "scratch/torch project" in proc.stdout
    report = json.loads((tmp_path / "cpu-quick.json").read_text())
    assert report["quick"] and report["limit_batches"] == 3 and "reproduction" not in report
    loops = {(v["loop"], v["norm"]) for v in report["variants"]}
    assert loops == {("tutorial", "scratch"), ("tutorial", "torch"), ("project", "scratch"), ("project", "torch"),
                     ("project", "none")}
    for v in report["variants"]:
        assert v["examples_per_sec"] > 0 and v["end_to_end_seconds"] > v["setup_seconds"] > 0
        assert 0 <= v["test_acc"] <= 1
        assert v["epochs"] == 1 and v["tf32"] is False
    assert report["memory"]["benchmark_process_peak_rss_mb"] > 100  # torch alone takes more
    md = (tmp_path / "cpu-quick.md").read_text()
    assert "QUICK MODE" in md and "| tutorial | scratch |" in md and report["environment"]["cpu"] in md


def test_ratios_pair_the_rounds_both_runs_measured_so_a_slow_spell_later_does_not_count():
    from bn_lenet.anchors.benchmark import ratios

    def v(loop, norm, rates):
        return {"loop": loop, "norm": norm, "examples_per_sec_per_epoch": rates}
    # The tutorial ran 3 epochs while the machine was fast; the project went on for 10, then it slowed down.
    variants = [v("tutorial", "scratch", [9.0, 10.0, 10.0]), v("project", "scratch", [25.0, 30.0, 30.0] + [15.0] * 7),
                v("project", "torch", [25.0, 20.0, 60.0] + [30.0] * 7)]
    r = ratios(variants)
    assert r["project/tutorial scratch"] == 3.0  # not 15 / 10 from the medians of different rounds
    assert r["scratch/torch project"] == 0.5     # median of 1.5, 0.5, 0.5, ... over epochs 2..10


def test_the_profile_ranks_ops_by_gpu_time_on_cuda_and_by_cpu_time_on_cpu():
    from types import SimpleNamespace as Event
    from torch.autograd import DeviceType
    from bn_lenet.anchors.benchmark import profile_time, top_ops
    assert profile_time(torch.device("cuda", 1)) == "self_device_time_total"
    assert profile_time(torch.device("cpu")) == "self_cpu_time_total"
    cpu, gpu = DeviceType.CPU, DeviceType.CUDA
    # Microseconds over 10 steps. On CUDA an op's CPU time is its launch: aten::mul launches slowly and runs fast.
    events = [Event(key="aten::convolution_backward", device_type=cpu, self_cpu_time_total=100,
                    self_device_time_total=3000),
              Event(key="aten::mul", device_type=cpu, self_cpu_time_total=900, self_device_time_total=1000),
              Event(key="aten::empty", device_type=cpu, self_cpu_time_total=50, self_device_time_total=0),
              # the profiler lists the kernel too, as a device event: its time is already its op's
              Event(key="cudnn_wgrad_kernel", device_type=gpu, self_cpu_time_total=0, self_device_time_total=3000)]
    on_gpu = top_ops(events, profile_time(torch.device("cuda")), steps=10, top=5)
    assert [o["op"] for o in on_gpu] == ["aten::convolution_backward", "aten::mul"]
    assert on_gpu[0]["self_ms_per_step"] == pytest.approx(0.3) and on_gpu[0]["percent"] == pytest.approx(75)
    on_cpu = top_ops(events, profile_time(torch.device("cpu")), steps=10, top=2)
    assert [o["op"] for o in on_cpu] == ["aten::mul", "aten::convolution_backward"]
    assert on_cpu[0]["percent"] == pytest.approx(100 * 900 / 1050)
    # This torch's profiler events have both times under these names (no GPU time on a CPU).
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.ones(64, 64) @ torch.ones(64, 64)
    real = list(prof.key_averages())
    assert top_ops(real, "self_cpu_time_total", 1, 3) and top_ops(real, "self_device_time_total", 1, 3) == []


@pytest.mark.slow
def test_the_malloc_setting_is_made_where_a_process_starts_not_by_the_library(monkeypatch, tmp_path, fashion_mnist):
    from bn_lenet import api, cli
    from bn_lenet.training import process
    calls = []
    monkeypatch.setattr(process, "keep_freed_memory", lambda device="cpu": calls.append(device))
    quick = ["train.epochs=1", "train.limit_batches=2", "train.batch_size=64", "train.device=cpu"]
    api.train_lenet("configs/scratch_bn.toml", quick, out=tmp_path / "api", data=fashion_mnist, progress=False)
    assert calls == []  # a notebook's process is left as it was
    sets = [a for q in quick for a in ("--set", q)]
    assert cli.main(["run", "configs/scratch_bn.toml", *sets, "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    assert calls == ["cpu"]  # `bn-lenet run` trains in its own process: it sets it
