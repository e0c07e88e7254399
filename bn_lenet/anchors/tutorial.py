"""The d2l "Batch Normalization" tutorial's training loop, re-implemented faithfully: the benchmark's baseline.

Kept as the tutorial has it, because that is what is being measured: torchvision's ``FashionMNIST`` with
``ToTensor``, a ``DataLoader`` with 4 workers (shuffled training set, last partial batch kept), a
``.to(device)`` per batch, the tutorial's scratch BatchNorm (plain attributes re-bound every step, the
train/eval switch on ``torch.is_grad_enabled()``), per-batch metric syncs (``float(...)`` of loss and
accuracy), and its timer: wall time (``time.time()``) around each step only, so examples/sec counts the
training steps and leaves out data fetching and evaluation.

Left out: the tutorial's live plot (``d2l.Animator``), drawn outside the timer. Not used by the project's
own loop; do not import it from there.

    python -m bn_lenet.anchors.tutorial --norm scratch --epochs 10
"""

import argparse
import sys
import time

import torch
from torch import nn

from ..training.data import torchvision_root
from ..training.device import auto as auto_device


# --- the tutorial's scratch batch normalization, as published (its typos fixed) -------------------------

def batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum):
    # Use is_grad_enabled to determine whether we are in training mode
    if not torch.is_grad_enabled():
        X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
    else:
        assert len(X.shape) in (2, 4)
        if len(X.shape) == 2:
            mean = X.mean(dim=0)
            var = ((X - mean) ** 2).mean(dim=0)
        else:
            mean = X.mean(dim=(0, 2, 3), keepdim=True)
            var = ((X - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        X_hat = (X - mean) / torch.sqrt(var + eps)
        moving_mean = momentum * moving_mean + (1.0 - momentum) * mean
        moving_var = momentum * moving_var + (1.0 - momentum) * var
    Y = gamma * X_hat + beta
    return Y, moving_mean.data, moving_var.data


class BatchNorm(nn.Module):
    def __init__(self, num_features, num_dims):
        super().__init__()
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.moving_mean = torch.zeros(shape)
        self.moving_var = torch.ones(shape)

    def forward(self, X):
        if self.moving_mean.device != X.device:
            self.moving_mean = self.moving_mean.to(X.device)
            self.moving_var = self.moving_var.to(X.device)
        Y, self.moving_mean, self.moving_var = batch_norm(
            X, self.gamma, self.beta, self.moving_mean, self.moving_var, eps=1e-5, momentum=0.9)
        return Y


def lenet(norm: str = "scratch") -> nn.Sequential:
    """The tutorial's network: its scratch BatchNorm ("scratch"), nn.BatchNorm ("torch"), or none."""
    def bn(c, dims):
        if norm == "scratch":
            return [BatchNorm(c, num_dims=dims)]
        if norm == "torch":
            return [nn.BatchNorm2d(c) if dims == 4 else nn.BatchNorm1d(c)]
        return []
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5), *bn(6, 4), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), *bn(16, 4), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120), *bn(120, 2), nn.Sigmoid(),
        nn.Linear(120, 84), *bn(84, 2), nn.Sigmoid(),
        nn.Linear(84, 10))


# --- d2l's helpers -------------------------------------------------------------------------------------

class Timer:
    """d2l.Timer: wall-clock intervals, summed."""
    def __init__(self):
        self.times = []

    def start(self):
        self.tik = time.time()

    def stop(self):
        self.times.append(time.time() - self.tik)
        return self.times[-1]

    def sum(self):
        return sum(self.times)


class Accumulator:
    """d2l.Accumulator: sums on the host (each add is a float() of a device value: a sync)."""
    def __init__(self, n):
        self.data = [0.0] * n

    def add(self, *args):
        self.data = [a + float(b) for a, b in zip(self.data, args)]

    def __getitem__(self, idx):
        return self.data[idx]


def accuracy(y_hat, y):
    if len(y_hat.shape) > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(axis=1)
    cmp = y_hat.type(y.dtype) == y
    return float(cmp.type(y.dtype).sum())


def load_data_fashion_mnist(batch_size, root=None, workers=4):
    """d2l.load_data_fashion_mnist: torchvision's dataset with ToTensor, DataLoaders with 4 workers."""
    import warnings
    import torchvision
    from torch.utils import data
    from torchvision import transforms
    # DataLoader warns that 4 workers exceed a 2-core machine's count: that cost is the tutorial's, measured.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    trans = transforms.ToTensor()
    where = str(torchvision_root(root))
    mnist_train = torchvision.datasets.FashionMNIST(root=where, train=True, transform=trans, download=False)
    mnist_test = torchvision.datasets.FashionMNIST(root=where, train=False, transform=trans, download=False)
    return (data.DataLoader(mnist_train, batch_size, shuffle=True, num_workers=workers),
            data.DataLoader(mnist_test, batch_size, shuffle=False, num_workers=workers))


def evaluate_accuracy_gpu(net, data_iter, device=None):
    if isinstance(net, nn.Module):
        net.eval()
        if not device:
            device = next(iter(net.parameters())).device
    metric = Accumulator(2)
    with torch.no_grad():
        for X, y in data_iter:
            X, y = X.to(device), y.to(device)
            metric.add(accuracy(net(X), y), y.numel())
    return metric[0] / metric[1]


# --- the training loop ---------------------------------------------------------------------------------

def init_weights(m):
    if type(m) == nn.Linear or type(m) == nn.Conv2d:
        nn.init.xavier_uniform_(m.weight)


def train_epochs(net, train_iter, test_iter, num_epochs, lr, device, limit_batches=0):
    """d2l.train_ch6, one epoch per ``next()``: yields {epoch, loss, train_acc, test_acc, examples,
    step_seconds, seconds}. ``limit_batches`` > 0 stops each epoch early (quick benchmark runs only)."""
    net.apply(init_weights)
    net.to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    loss = nn.CrossEntropyLoss()
    for epoch in range(num_epochs):
        started = time.perf_counter()
        timer = Timer()  # per epoch here, so each epoch reports its own rate; the sum is the tutorial's
        metric = Accumulator(3)
        net.train()
        for i, (X, y) in enumerate(train_iter):
            if limit_batches and i == limit_batches:
                break
            timer.start()
            optimizer.zero_grad()
            X, y = X.to(device), y.to(device)
            y_hat = net(X)
            l = loss(y_hat, y)
            l.backward()
            optimizer.step()
            with torch.no_grad():
                metric.add(l * X.shape[0], accuracy(y_hat, y), X.shape[0])
            timer.stop()
        test_acc = evaluate_accuracy_gpu(net, test_iter)
        yield {"epoch": epoch + 1, "loss": metric[0] / metric[2], "train_acc": metric[1] / metric[2],
               "test_acc": test_acc, "examples": int(metric[2]), "step_seconds": timer.sum(),
               "seconds": time.perf_counter() - started}


def train_ch6(net, train_iter, test_iter, num_epochs, lr, device, log=print) -> list:
    """The tutorial's run, with its closing lines: loss/acc, then examples/sec over all step time."""
    log(f"training on {device}")
    rows = list(train_epochs(net, train_iter, test_iter, num_epochs, lr, device))
    last = rows[-1]
    log(f"loss {last['loss']:.3f}, train acc {last['train_acc']:.3f}, test acc {last['test_acc']:.3f}")
    rate = sum(r["examples"] for r in rows) / sum(r["step_seconds"] for r in rows)
    log(f"{rate:.1f} examples/sec on {device}")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="The d2l BN tutorial's own loop (the benchmark's baseline).")
    p.add_argument("--norm", choices=("scratch", "torch", "none"), default="scratch")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=auto_device(), help="cuda if visible, else cpu (BN_LENET_DEVICE overrides)")
    p.add_argument("--data-dir", help="folder with the four Fashion-MNIST IDX files (default: search)")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    train_iter, test_iter = load_data_fashion_mnist(args.batch_size, args.data_dir)
    net = lenet(args.norm)
    train_ch6(net, train_iter, test_iter, args.epochs, args.lr, torch.device(args.device))
    first_bn = next((m for m in net if isinstance(m, (BatchNorm, nn.BatchNorm2d))), None)
    if first_bn is not None:
        gamma = first_bn.gamma if isinstance(first_bn, BatchNorm) else first_bn.weight
        beta = first_bn.beta if isinstance(first_bn, BatchNorm) else first_bn.bias
        print(gamma.reshape((-1,)), beta.reshape((-1,)), sep="\n")
    return 0


if __name__ == "__main__":
    from ..errors import run_main
    sys.exit(run_main(main))
