"""What train.precision means on each device: "fp32" is IEEE fp32 on a GPU too (cuDNN's default would use TF32
for fp32 convolutions on Ampere and newer), "tf32" allows TF32 there on purpose, "bf16" is autocast; none of it
changes a CPU run's numbers. fit() sets it, runs record it in meta.json as "tf32"."""

import pytest
import torch

from bn_lenet.training import config, train
from bn_lenet.training.data import FashionMNIST
from bn_lenet.network.model import lenet
from bn_lenet.training.train import fit, set_fp32_math, uses_tf32

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)  # device objects: setting the flags needs no GPU


@pytest.fixture
def small(fashion_mnist):
    d = fashion_mnist
    return FashionMNIST(d.train_images[:600], d.train_labels[:600], d.test_images[:500], d.test_labels[:500],
                        d.source)


@pytest.fixture
def flags():
    """PyTorch's two process-wide TF32 flags, put back as they were after the test."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def tf32_flags():
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def test_only_tf32_on_cuda_uses_tf32():
    assert uses_tf32("tf32", CUDA) and uses_tf32("tf32", torch.device("cuda", 3))
    assert not uses_tf32("fp32", CUDA) and not uses_tf32("bf16", CUDA)
    assert not any(uses_tf32(p, CPU) for p in config.PRECISIONS)


def test_on_cuda_fp32_turns_cudnn_and_cublas_tf32_off_and_tf32_turns_them_on(flags):
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True  # PyTorch's defaults
    assert set_fp32_math("fp32", CUDA) is False and tf32_flags() == (False, False)
    assert set_fp32_math("tf32", CUDA) is True and tf32_flags() == (True, True)
    assert set_fp32_math("bf16", CUDA) is False and tf32_flags() == (False, False)  # its fp32 ops are fp32
    assert set_fp32_math("tf32", CUDA) is True and set_fp32_math("fp32", CUDA) is False  # each run its own
    assert tf32_flags() == (False, False)


def test_on_cpu_nothing_is_touched(flags):
    for before in ((False, True), (True, False)):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
        for precision in config.PRECISIONS:
            assert set_fp32_math(precision, CPU) is False
            assert tf32_flags() == before


@pytest.mark.slow
def test_fit_sets_it_from_train_precision_for_the_datas_device(small, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "set_fp32_math", lambda precision, device: calls.append((precision, device)))
    cfg = config.resolve(None, ["train.epochs=1", "train.limit_batches=1", "train.precision=tf32"])
    fit(lenet("scratch"), small, cfg)
    assert calls == [("tf32", CPU)]


@pytest.mark.slow
def test_tf32_trains_bitwise_as_fp32_on_cpu(small):
    """The CPU has no TF32: the option must not change a CPU run's numbers."""
    histories, states = [], []
    for precision in ("fp32", "tf32"):
        torch.manual_seed(1)
        model = lenet("scratch")
        histories.append([(s.loss, s.train_acc, s.test_acc) for s in fit(model, small, config.resolve(
            None, ["train.epochs=2", "train.limit_batches=2", f"train.precision={precision}"]))])
        states.append(model.state_dict())
    assert histories[0] == histories[1]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_config_accepts_tf32_and_names_the_choices():
    assert config.resolve(None, ["train.precision=tf32"]).train.precision == "tf32"
    assert config.Config().train.precision == "fp32"
    with pytest.raises(config.ConfigError, match='train.precision = \'fp16\' is out of range: it must be "fp32", '
                                                 '"tf32" or "bf16"'):
        config.resolve(None, ["train.precision=fp16"])
