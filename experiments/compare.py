"""Scratch BN vs nn.BatchNorm vs no BN over N seeds, with test accuracy from moving and re-estimated
statistics every epoch; writes results/compare/report.md. The same as `bn-lenet compare`.

    python experiments/compare.py [--seeds 5] [--set section.key=value ...] [--out results/compare]
    python experiments/compare.py --report-only      # the report again, from the committed per-run files
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bn_lenet.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
