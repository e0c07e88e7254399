"""The Python API: the names `import bn_lenet` gives, the README's notebook example (run as written, so it never
rots), and the live plot's redraw, headless (matplotlib's Agg)."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch

import bn_lenet
from bn_lenet import live_plot
from bn_lenet.training import runs

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["train.limit_batches=3", "train.batch_size=64", "train.threads=1"]


def readme_example() -> str:
    """The code block of the README's section "Use it from Python / a notebook"."""
    section = (ROOT / "README.md").read_text().split("## Use it from Python / a notebook", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_import_bn_lenet_is_light_and_gives_the_public_names():
    code = ("import sys, bn_lenet; light = 'torch' not in sys.modules; "
            "print(light, sorted(n for n in bn_lenet.__all__ if getattr(bn_lenet, n, None) is None))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.stdout.split() == ["True", "[]"], p.stderr  # torch only once a name needs it; every name resolves
    from bn_lenet.network import batchnorm, model
    from bn_lenet.training import config, data
    assert (bn_lenet.BatchNorm, bn_lenet.batch_norm) == (batchnorm.BatchNorm, batchnorm.batch_norm)
    assert (bn_lenet.lenet, bn_lenet.bn_params, bn_lenet.resolve, bn_lenet.load_dataset) == \
        (model.lenet, model.bn_params, config.resolve, data.load_dataset)
    assert {"train_lenet", "BatchNorm", "lenet"} <= set(dir(bn_lenet))
    with pytest.raises(AttributeError):
        bn_lenet.no_such_name


@pytest.mark.slow
def test_the_readme_notebook_example_runs_as_written(tmp_path):
    code = readme_example()
    assert len([line for line in code.splitlines() if line.strip()]) < 15
    # Made quick (3 batches per epoch, one thread), nothing else changed; then what the example promises.
    assert code.count('"train.epochs=2"') == 1
    code = code.replace('"train.epochs=2"', '"train.epochs=2", ' + ", ".join(f'"{s}"' for s in QUICK))
    code += ("\nassert run.status == 'finished' and [r['epoch'] for r in run.history] == [1, 2]"
             "\nassert list(params) == ['conv1.bn', 'conv2.bn', 'fc1.bn', 'fc2.bn']"
             "\nassert len(axes[0, 0].patches) == 6 and (run.run_dir / 'curves.png').is_file()"
             "\nprint('OK', run.run_dir)\n")
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1].startswith("OK results/runs/lenet-scratch-")


def rows(n):
    return [{"epoch": e, "loss": 2.0 / e, "train_acc": 0.5 + e / 20, "test_acc": 0.4 + e / 20} for e in range(1, n + 1)]


def test_the_live_plot_redraws_the_curves_in_place_headless():
    shown = []
    plot = live_plot.LivePlot(title="t", show=shown.append)
    plot.update(rows(1))
    plot.update(rows(3))
    # Redrawn, not drawn over: the three curves of the latest rows only.
    assert [line.get_label() for line in plot.ax.lines] == ["train loss", "train acc", "test acc"]
    assert list(plot.ax.lines[0].get_xdata()) == [1, 2, 3]
    assert list(plot.ax.lines[0].get_ydata()) == [r["loss"] for r in rows(3)]
    assert len(shown) == 2 and shown[0] != shown[1]
    image = matplotlib.image.imread(io.BytesIO(shown[1]), format="png")
    assert image.shape[:2] == (350, 500)  # 5 x 3.5 inches at 100 dpi: a real picture each epoch


def test_outside_a_notebook_nothing_is_displayed():
    assert not live_plot.in_notebook() and live_plot.notebook_display() is None


@pytest.mark.slow
def test_train_lenet_redraws_after_each_epoch_and_returns_history_and_model(small_data, tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    shown = []
    monkeypatch.setattr(live_plot, "notebook_display", lambda: shown.append)  # as in a notebook
    cfg = bn_lenet.resolve(ROOT / "configs" / "torch_bn.toml", QUICK)
    try:
        run = bn_lenet.train_lenet(cfg, ["train.epochs=2"], out=tmp_path / "run", plot=True, progress=False,
                                   data=small_data)
    finally:
        torch.set_num_threads(threads)
    assert run.status == "finished" and run.run_dir == tmp_path / "run"
    assert run.history == runs.read_metrics(tmp_path / "run") and len(run.history) == 2
    assert len(shown) == 2  # one picture per epoch
    assert cfg.train.epochs == 10  # the Config handed in is not changed by the overrides
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in run.model.state_dict().items())  # the trained model
    assert list(bn_lenet.bn_params(run.model)) == ["conv1.bn", "conv2.bn", "fc1.bn", "fc2.bn"]
