"""train.cuda_graph: the whole-step graph's logic, checked on CPU (no GPU has run it in this project).

On CPU nothing is captured, but the static-buffer step runs the code a capture records (gather by a fixed
index tensor, train_step, in-place accumulators), after the same warm-up and restore.
"""

import contextlib
import dataclasses

import pytest
import torch

from bn_lenet.training import config, graph_step
from bn_lenet.training.data import FashionMNIST, to_float
from bn_lenet.errors import ConfigError
from bn_lenet.network.model import lenet
from bn_lenet.training.train import fit, make_optimizer, train_step


@pytest.fixture
def small(fashion_mnist):
    """600 training images (batches of 256, 256 and a partial 88) and 1,000 test images."""
    d = fashion_mnist
    return FashionMNIST(d.train_images[:600], d.train_labels[:600], d.test_images[:1000], d.test_labels[:1000],
                        d.source)


def state_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=lambda m: f"{k}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("norm,precision", [("scratch", "fp32"), ("torch", "fp32"), ("scratch", "bf16")])
def test_static_step_trains_exactly_as_the_eager_loop(small, monkeypatch, norm, precision):
    cfg = config.resolve(None, ["train.epochs=2", f"model.norm={norm}", f"train.precision={precision}",
                                "train.cuda_graph=true"])
    torch.manual_seed(1)
    eager = lenet(norm)
    eager_history = fit(eager, small, cfg)  # on CPU train.cuda_graph is ignored: the eager loop

    made = []
    real_make = graph_step.make_static_step
    monkeypatch.setattr(graph_step, "wanted", lambda t, device: True)  # the static-buffer path, on CPU
    monkeypatch.setattr(graph_step, "make_static_step", lambda *a: made.append(1) or real_make(*a))
    torch.manual_seed(1)
    static = lenet(norm)
    static_history = fit(static, small, cfg)
    # Again, one fit() per epoch (as the benchmark runs it, and as a resumed run): a new step per call.
    torch.manual_seed(1)
    split = lenet(norm)
    first = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=1))
    split_history = [*fit(split, small, first), *fit(split, small, cfg, start_epoch=1)]

    assert made == [1, 1, 1]  # built once per fit() call
    for e, s, p in zip(eager_history, static_history, split_history, strict=True):  # each epoch counts alone
        assert (s.loss, s.train_acc, s.test_acc) == (p.loss, p.train_acc, p.test_acc) == \
            (e.loss, e.train_acc, e.test_acc)
    for model in (static, split):  # the warm-up undone, the partial batches trained
        assert_same_state(state_of(model), state_of(eager))


@pytest.mark.slow
def test_warm_up_is_undone_in_place_weights_buffers_and_optimizer_state(small):
    model = lenet("torch")  # nn.BatchNorm: moving statistics and num_batches_tracked
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)  # state: momentum buffers
    images, labels = to_float(small.train_images[:64]), small.train_labels[:64]
    train_step(model, optimizer, images, labels)  # creates the momentum buffers, as a resumed run has them
    before_model = state_of(model)
    before_momentum = {p: s["momentum_buffer"].clone() for p, s in optimizer.state.items()}
    addresses = {k: v.data_ptr() for k, v in model.state_dict().items()}
    buffer_addresses = {p: s["momentum_buffer"].data_ptr() for p, s in optimizer.state.items()}
    trained = []

    def body():
        train_step(model, optimizer, images, labels)
        trained.append(state_of(model))

    assert graph_step.capture(body, model, optimizer, torch.device("cpu")) is None  # nothing captured on CPU
    assert len(trained) == graph_step.WARMUP_STEPS
    changed = [k for k in before_model if not torch.equal(trained[-1][k], before_model[k])]
    # the warm-up did train...
    assert {"conv1.conv.weight", "conv1.bn.running_var", "conv1.bn.num_batches_tracked"} <= set(changed)
    assert_same_state(state_of(model), before_model)  # ...and was undone
    for p, s in optimizer.state.items():
        assert torch.equal(s["momentum_buffer"], before_momentum[p])
        assert s["momentum_buffer"].data_ptr() == buffer_addresses[p]
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == addresses  # a graph keeps addresses


@pytest.mark.slow
def test_optimizer_state_created_by_the_warm_up_is_refused(small):
    model = lenet("scratch")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)  # no momentum buffers yet
    images, labels = to_float(small.train_images[:64]), small.train_labels[:64]
    with pytest.raises(RuntimeError, match="created state during the CUDA graph warm-up"):
        graph_step.capture(lambda: train_step(model, optimizer, images, labels), model, optimizer,
                           torch.device("cpu"))


def test_the_projects_sgd_has_no_state_to_restore():
    model = lenet("scratch")
    optimizer = make_optimizer(model, 1.0)
    train_step(model, optimizer, torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    assert graph_step.snapshot(model, optimizer)["optimizer"] == {}


def test_cuda_graph_is_wanted_on_cuda_only_and_ignored_on_cpu(small, monkeypatch):
    on, off = config.resolve(None, ["train.cuda_graph=true"]).train, config.Config().train
    assert graph_step.wanted(on, torch.device("cuda"))
    assert not graph_step.wanted(off, torch.device("cuda"))
    assert not graph_step.wanted(on, torch.device("cpu"))

    def fail(*_args):
        raise AssertionError("the static step was built on CPU")
    monkeypatch.setattr(graph_step, "make_static_step", fail)
    cfg = config.resolve(None, ["train.epochs=1", "train.cuda_graph=true", "train.limit_batches=1"])
    [stats] = fit(lenet("scratch"), small, cfg)
    assert stats.train_acc > 0


def test_config_key_is_off_by_default_and_typed():
    assert config.Config().train.cuda_graph is False
    assert config.resolve(None, ["train.cuda_graph=true"]).train.cuda_graph is True
    with pytest.raises(ConfigError, match="train.cuda_graph must be bool, got int 1"):
        config.resolve(None, ["train.cuda_graph=1"])
    with pytest.raises(ConfigError, match="train.cuda_graph must be bool"):
        config.resolve(None, ['train.cuda_graph="yes"'])


def test_benchmark_adds_a_graph_loop_on_cuda_only():
    from bn_lenet.anchors.benchmark import loop_settings
    cpu = loop_settings(["train.lr=0.5"], compiled_too=True, bf16_too=False, device=torch.device("cpu"))
    assert list(cpu) == ["project", "project+compile"]
    cuda = loop_settings(["train.lr=0.5"], compiled_too=True, bf16_too=True, device=torch.device("cuda"))
    assert cuda["project+graph"] == ["train.lr=0.5", "train.cuda_graph=true"]
    assert cuda["project+graph+bf16"] == ["train.lr=0.5", "train.cuda_graph=true", "train.precision=bf16"]
    for overrides in cuda.values():
        config.resolve(None, overrides)  # every loop's settings are a valid config


def test_capture_runs_on_the_runs_own_gpu_whatever_the_current_one():
    # A run on cuda:1 must capture with cuda:1 current: the default capture stream is the current device's,
    # and a capture there would record none of cuda:1's kernels (every replay would train nothing).
    for index in (0, 1, 3):
        context = graph_step.capture_context(torch.device("cuda", index))
        assert isinstance(context, torch.cuda.device) and context.idx == index
    assert isinstance(graph_step.capture_context(torch.device("cpu")), contextlib.nullcontext)


@pytest.mark.slow
def test_warm_up_and_capture_run_inside_the_context_of_the_datas_device(small, monkeypatch):
    events = []

    @contextlib.contextmanager
    def recording(device):
        events.append(("enter", device))
        yield
        events.append("exit")

    real_step = graph_step.train_step
    monkeypatch.setattr(graph_step, "capture_context", recording)
    monkeypatch.setattr(graph_step, "train_step", lambda *a: events.append("step") or real_step(*a))
    model = lenet("scratch")
    model.train()
    loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
    step = graph_step.make_static_step(model, model, make_optimizer(model, 1.0), small.train_images,
                                       small.train_labels, 64, "fp32", loss_sum, correct)
    assert events == [("enter", small.train_labels.device)] + ["step"] * graph_step.WARMUP_STEPS + ["exit"]
    step(torch.arange(64, 128))
    assert events[-1] == "step"  # a (replayed) step needs no context: the graph keeps its device
