"""TensorBoard logging (``log.tensorboard``): one run's curves and BN parameters, and a sweep's HParams table.

Written with PyTorch's own ``torch.utils.tensorboard``; TensorBoard is the viewer (``tensorboard --logdir
results/runs``). Optional: ``pip install 'bn-lenet[tensorboard]'``.

    <run_dir>/tb/     one run: per epoch (the global step is the epoch) a scalar per number of the epoch's
                      metrics row and the lr, histograms of every BN layer's gamma, beta, moving mean and
                      moving variance; the config as text (step 0)
    <sweep_dir>/      a sweep (write_hparams): the HParams experiment at the root, each run's hyperparameters
                      and final metrics in <run>/tb/ next to its curves

Logged once per epoch, from numbers already on the host when the epoch ends (the BN tensors come over in one
copy), so nothing waits inside an epoch. A resumed run continues the same curves: its writer purges the steps
after the checkpoint's epoch (SummaryWriter's ``purge_step``), which the killed process may have logged.
"""

import json
from pathlib import Path

import torch

from ..errors import UserError
from ..network.model import bn_layers, gamma_beta, moving_stats

INSTALL = "pip install 'bn-lenet[tensorboard]'"

# The metrics row's fields (train.EpochStats, and fields other options add) -> tags; TensorBoard groups the
# tags by their first part. A field not listed here is logged as metrics/<field>.
SCALAR_TAGS = {
    "loss": "loss/train",
    "train_acc": "accuracy/train",
    "test_acc": "accuracy/test",
    "test_acc_precise": "accuracy/test_precise_bn",
    "test_acc_batch_stats": "accuracy/test_batch_stats",
    "examples_per_sec": "speed/examples_per_sec",
    "seconds": "speed/epoch_seconds",
}
HPARAMS_SUFFIX = ".hparams"  # the event files write_hparams owns (and replaces when it runs again)


def require():
    """torch's SummaryWriter, or a UserError naming the extra to install (checked before a run starts)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise UserError(f"log.tensorboard = true needs TensorBoard, which cannot be imported ({e}); install the "
                        f"extra: {INSTALL} (or set log.tensorboard = false)") from None
    return SummaryWriter


def open_run(run_dir, cfg, start_epoch: int = 0, resumed: bool = False):
    """The run's writer into ``run_dir/tb``. A resumed run hides what the killed process logged after the
    checkpoint's epoch (TensorBoard drops events at steps >= purge_step from the run's earlier files)."""
    from . import config as config_mod
    SummaryWriter = require()
    purge_step = (start_epoch + 1 if start_epoch else 0) if resumed else None
    writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=purge_step)
    if start_epoch == 0:
        # Indented four spaces: TensorBoard renders text as Markdown, this keeps the TOML as written.
        toml = "\n".join("    " + line for line in config_mod.to_toml(cfg).splitlines())
        writer.add_text("config", toml, 0)
        writer.flush()
    return writer


def log_epoch(writer, row: dict, model, lr: float) -> None:
    """One epoch: every number of its metrics row, the lr, and histograms of every BN layer's tensors."""
    step = row["epoch"]
    for key, value in row.items():
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(SCALAR_TAGS.get(key, f"metrics/{key}"), value, step)
    writer.add_scalar("lr", lr, step)
    tensors = []
    for name, layer in bn_layers(model).items():
        for kind, t in zip(("gamma", "beta", "moving_mean", "moving_var"), (*gamma_beta(layer), *moving_stats(layer))):
            if t is not None:  # a layer without scale/shift or without moving statistics has none to show
                tensors.append((f"{kind}/{name}", t))
    if tensors:
        flat = torch.cat([t.detach().float().flatten() for _, t in tensors]).cpu()  # one copy for all of them
        for (tag, _), values in zip(tensors, flat.split([t.numel() for _, t in tensors])):
            writer.add_histogram(tag, values.numpy(), step)
    writer.flush()  # TensorBoard shows the epoch now, not at the writer's next timed flush


# --- a sweep: TensorBoard's HParams table and parallel coordinates ----------------------------------------

def _hparam_value(value):
    """HParams takes numbers and strings; a bool reads better as true/false than as 1.0/0.0."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return float(value)
    return value if isinstance(value, str) else json.dumps(value)


def write_hparams(sweep_dir, rows: list) -> None:
    """TensorBoard's HParams summary of a sweep, so ``tensorboard --logdir SWEEP_DIR`` shows its runs as a table
    and in parallel coordinates, each linked to its curves.

    ``rows``: one per run, ``{"run": run directory relative to sweep_dir, "hparams": {grid key: value},
    "metrics": {final metric: value}}``. The experiment (every grid key, with the values the grid takes, and
    every metric) goes to the sweep's root; each run's values go to ``<run>/tb/``, the run's own TensorBoard
    folder. Running it again replaces what it wrote before (a re-run report, a resumed sweep).
    """
    SummaryWriter = require()
    from torch.utils.tensorboard.summary import hparams
    sweep_dir = Path(sweep_dir)
    keys = list(dict.fromkeys(k for r in rows for k in r["hparams"]))
    metric_keys = list(dict.fromkeys(k for r in rows for k in r["metrics"]))
    values = [{k: _hparam_value(r["hparams"][k]) for k in keys if r["hparams"].get(k) is not None} for r in rows]
    domains = {}
    for k in keys:
        seen = list(dict.fromkeys(v[k] for v in values if k in v))
        if len({type(x) for x in seen}) == 1:  # one type per key: TensorBoard can offer the values as filters
            domains[k] = sorted(seen)
    metric_tags = {m: f"final/{m}" for m in metric_keys}
    for folder in [sweep_dir] + [sweep_dir / r["run"] / "tb" for r in rows]:
        for old in folder.glob(f"events.out.tfevents.*{HPARAMS_SUFFIX}"):
            old.unlink()
    # The experiment lists each key once, typed by its first value; the metric values here are unused.
    first = {}
    for v in values:
        for k, x in v.items():
            first.setdefault(k, x)
    exp, _, _ = hparams(first, {metric_tags[m]: 0.0 for m in metric_keys}, domains)
    with SummaryWriter(str(sweep_dir), filename_suffix=HPARAMS_SUFFIX) as w:
        w.file_writer.add_summary(exp)
    for row, hp in zip(rows, values):
        metrics = {metric_tags[m]: float(v) for m, v in row["metrics"].items() if v is not None}
        _, ssi, sei = hparams(hp, metrics)
        with SummaryWriter(str(sweep_dir / row["run"] / "tb"), filename_suffix=HPARAMS_SUFFIX) as w:
            w.file_writer.add_summary(ssi)
            for tag, v in metrics.items():
                w.add_scalar(tag, v, 0)
            w.file_writer.add_summary(sei)
