"""Benchmark the tutorial's loop against the project's, in one process (see bn_lenet/anchors/benchmark.py).

    python experiments/benchmark.py [--quick] [--set train.compile=true ...]   (same as `bn-lenet benchmark`)
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bn_lenet.anchors import benchmark  # noqa: E402
from bn_lenet.errors import run_main  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=benchmark.__doc__.splitlines()[0])
    benchmark.add_arguments(p)
    argv = sys.argv[1:] if argv is None else argv
    return benchmark.run_from_args(p.parse_args(argv), "python experiments/benchmark.py " + " ".join(argv))


if __name__ == "__main__":
    sys.exit(run_main(main))
