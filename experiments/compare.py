"""Scratch BN vs nn.BatchNorm vs no BN over 5 seeds, with test accuracy from moving and re-estimated
statistics every epoch; writes results/sweeps/compare/report.md. The same as `bn-lenet compare` and
`bn-lenet sweep configs/sweeps/compare.toml` (the spec says what runs).

    python experiments/compare.py [--jobs N] [--set section.key=value ...] [--out results/sweeps/compare]
    python experiments/compare.py --report-only      # the report again, from the committed per-run files
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bn_lenet.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
