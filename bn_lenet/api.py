"""The Python entry for notebooks and scripts: ``bn_lenet.train_lenet`` trains one run as ``bn-lenet run`` does
and hands back what a notebook works with next (the per-epoch history and the trained model).

It is the same run: the same config, training loop and run directory (metrics, checkpoint, figures), so a run
started here can be inspected or resumed from the command line.
"""

import copy
import sys
from collections import namedtuple
from pathlib import Path

RunResult = namedtuple("RunResult", "history model run_dir status")
RunResult.__doc__ = """What train_lenet returns.

history: the metrics rows, one dict per finished epoch (as metrics.jsonl: epoch, loss, train_acc, test_acc, ...)
model:   the trained network (on the device it trained on), or None if no epoch finished
run_dir: the run directory (Path)
status:  "finished", "interrupted" (a kernel interrupt stops at the next batch and keeps every finished epoch)
         or "diverged"
"""


def train_lenet(config=None, overrides=(), out=None, plot=False, progress=None, data=None) -> RunResult:
    """Train the LeNet that ``config`` describes and return its history and model.

    config:    a TOML file (e.g. "configs/scratch_bn.toml"), a Config, or None for the tutorial's defaults
    overrides: "section.key=value" strings, as --set (e.g. ["train.epochs=2", "model.norm=torch"])
    out:       the run directory (default results/runs/lenet-<norm>-<time>, under the working directory)
    plot:      in a Jupyter notebook, redraw the loss/accuracy figure in place after each epoch; elsewhere
               nothing is shown (the run directory's curves.png has the figure)
    progress:  a progress bar per epoch (the notebook's widget in Jupyter); None: in a notebook or a terminal
    data:      a dataset from load_dataset(), to load Fashion-MNIST once for many runs
    """
    from .training import config as config_mod
    from .training import runs
    from .live_plot import LivePlot, in_notebook, notebook_display
    if isinstance(config, config_mod.Config):
        cfg = config_mod.validate(config_mod.apply_overrides(copy.deepcopy(config), list(overrides)))
    else:
        cfg = config_mod.resolve(config, overrides)
    if progress is None:
        progress = in_notebook() or sys.stderr.isatty()
    show = notebook_display() if plot else None  # None outside a notebook: then nothing is drawn at all
    live = LivePlot(title=f"LeNet, norm={cfg.model.norm}", show=show) if show is not None else None
    rows, trained = [], []

    def on_epoch(stats, model):
        rows.append(stats.row())
        trained[:] = [model]
        if live is not None:
            live.update(rows)

    meta = runs.train_run(cfg, out=out, name=f"lenet-{cfg.model.norm}", data=data, progress=progress,
                          on_epoch=on_epoch)
    run_dir = Path(meta["run_dir"])
    return RunResult(runs.read_metrics(run_dir), trained[0] if trained else None, run_dir, meta["status"])
