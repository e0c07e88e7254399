"""The tutorial's published figures that our reports place our own runs next to: quoted, never measured here.

The tutorial is the "Batch Normalization" section of Dive into Deep Learning (d2l), PyTorch version. Each
release of the book prints the output of that section's training cell (final loss, train and test accuracy,
examples/sec) from its own build on a Tesla V100 GPU, so the figures differ from release to release. The
reports (experiments/reproduce.py, bn_lenet/sweeps/published_section.py) quote them from here, with SOURCES in full.
"""

from collections import namedtuple

Published = namedtuple("Published", "variant source loss train_acc test_acc examples_per_sec")

# Short name (as the reports' tables show it) -> the source in full, as a reader can find it.
SOURCES = {
    "d2l-zh v2.0.0": "Dive into Deep Learning, Chinese edition (动手学深度学习), 2nd edition, release v2.0.0, "
                     "PyTorch version, section 7.5 批量规范化 (Batch Normalization): the output of its training "
                     "cells (github.com/d2l-ai/d2l-zh, tag v2.0.0)",
    "d2l-en 0.17.5": "Dive into Deep Learning, English edition, release 0.17.5, PyTorch version, section 7.5 "
                     "Batch Normalization: the output of its training cells (github.com/d2l-ai/d2l-en, "
                     "tag v0.17.5)",
}

# The final epoch of the tutorial's two runs: "scratch" (its own BatchNorm) and "torch" (nn.BatchNorm2d/1d),
# lr 1.0, 10 epochs, batch 256, each on a Tesla V100.
RUNS = [
    Published("scratch", "d2l-zh v2.0.0", 0.273, 0.899, 0.807, 32293.9),
    Published("torch", "d2l-zh v2.0.0", 0.267, 0.902, 0.708, 50597.3),
    Published("scratch", "d2l-en 0.17.5", 0.269, 0.900, 0.838, 34608.7),
    Published("torch", "d2l-en 0.17.5", 0.278, 0.897, 0.836, 63564.3),
]

# Final test accuracy across about a dozen published builds of the same section (d2l-en and d2l-zh releases),
# while their train accuracy stayed 0.895-0.906: at lr 1.0 the final test accuracy is very noisy.
TEST_ACC_RANGE = {"scratch": (0.59, 0.88), "torch": (0.70, 0.89)}
TEST_ACC_RANGE_SOURCE = "about a dozen published builds of the same section (d2l-en and d2l-zh releases)"


def citation() -> str:
    """One paragraph for a report: where the published figures come from."""
    return ("Published figures are quoted, not measured here (bn_lenet/published.py): "
            + "; ".join(f"{short} = {full}" for short, full in SOURCES.items())
            + f". Test accuracy ranges are over {TEST_ACC_RANGE_SOURCE}.")
