"""What several test files share: the real dataset with a smaller test set, in this process or in a child; hand-made
sweeps; the check of a user error's one line. The shared fixtures are in conftest.py."""

from bn_lenet.training.data import FashionMNIST

TEST_IMAGES = 500  # the test examples of a short run (conftest.py's small_data, child_script's children)


def quiet(*_args, **_kwargs):
    """A log, or a figure, that writes nothing."""


def small_test_set(d: FashionMNIST, n: int) -> FashionMNIST:
    """The full training set and the first n test examples (evaluation is the slow part of a short run)."""
    return FashionMNIST(d.train_images, d.train_labels, d.test_images[:n], d.test_labels[:n], d.source)


def child_script(test_images: int) -> str:
    """A `python -c` script that runs the CLI's main() on the real data with the first test_images test
    examples, so a test can signal, kill or resume a real run in its own process."""
    return f"""
import sys
from bn_lenet.training import data
from bn_lenet.cli import main
full = data.load_dataset
def small(root=None):
    d = full(root)
    n = {test_images}
    return data.FashionMNIST(d.train_images, d.train_labels, d.test_images[:n], d.test_labels[:n], d.source)
data.load_dataset = small
sys.exit(main(sys.argv[1:]))
"""


def sweep(spec, out, *extra) -> int:
    """`bn-lenet sweep SPEC --out OUT --quiet [extra]`'s exit status."""
    from bn_lenet.cli import main
    return main(["sweep", str(spec), "--out", str(out), "--quiet", *extra])


def run_of(out, point: str, seed: int):
    """A sweep's run directory of a point and seed."""
    from pathlib import Path
    return Path(out) / "runs" / point / f"seed-{seed}"


def fake_sweep(folder, spec_text: str, outcome, steps=None) -> tuple:
    """A sweep whose run directories are written by hand, as a finished sweep leaves them, so the analysis can
    be checked on known numbers: ``outcome(values, seed)`` gives a run's per-epoch rows (a list of dicts with
    at least loss and test_acc), or "diverged"; ``steps(values, seed)``, when given, its per-step files
    ({"curve.jsonl": rows, "landscape.jsonl": rows}). Returns (spec file, OUT)."""
    import json
    from pathlib import Path

    from bn_lenet.sweeps.spec import resolve_runs, spec_from_file
    from bn_lenet.training import config as config_mod

    folder = Path(folder)
    spec_file, out = folder / "spec.toml", folder / "out"
    spec_file.write_text(spec_text)
    for run in resolve_runs(spec_from_file(spec_file), out):
        rows = outcome(run["values"], run["seed"])
        run["dir"].mkdir(parents=True)
        (run["dir"] / "config.toml").write_text(config_mod.to_toml(run["cfg"]))
        status = "diverged" if rows == "diverged" else "finished"
        rows = [] if rows == "diverged" else rows
        (run["dir"] / "meta.json").write_text(json.dumps({"status": status}))
        full = [{"epoch": i, "train_acc": r.get("test_acc", 0.5), "examples_per_sec": 1000.0, "seconds": 1.0, **r}
                for i, r in enumerate(rows, 1)]
        (run["dir"] / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full))
        for name, step_rows in (steps(run["values"], run["seed"]) if steps else {}).items():
            (run["dir"] / name).write_text("".join(json.dumps(r) + "\n" for r in step_rows))
    return spec_file, out


def epochs(*test_accs, loss: float = 0.3) -> list:
    """Per-epoch rows with these test accuracies and a constant training loss."""
    return [{"loss": loss, "test_acc": a} for a in test_accs]


def one_error_line(capsys, code, *fragments):
    """The command failed as a user error should: exit 2, one `error:` line holding every fragment, no traceback."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
