"""Every bad input gets one clear message (what is wrong, what to do), a non-zero exit and no traceback.

Most cases call main() in-process (fast); a few run `python -m bn_lenet` as a real process. None of them
trains: each fails before the first batch.
"""

import contextlib
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from bn_lenet.training import data as data_mod
from bn_lenet.cli import main
from bn_lenet.errors import ConfigError
from test_data import idx_bytes, replace as put  # pytest puts tests/ on sys.path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "scratch_bn.toml")
NOBODY = 65534


def run_cli(argv, capsys):
    """main(argv) in-process: (exit code, stderr)."""
    code = main(argv)
    return code, capsys.readouterr().err


def assert_one_clear_error(code, err, *fragments):
    assert code != 0
    assert "Traceback" not in err
    assert err.startswith("error: ") and err.count("error:") == 1
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"


@contextlib.contextmanager
def as_unprivileged_user():
    """Root reads files whatever their mode: drop to nobody (effective uid) so permissions count."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def world_tmp():
    """A folder anyone may enter (pytest's own are 0700), for the cases run as nobody."""
    path = Path(tempfile.mkdtemp(prefix="bn-lenet-test-"))
    path.chmod(0o755)
    yield path
    for p in path.rglob("*"):
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
    shutil.rmtree(path)


# --- data -----------------------------------------------------------------------------------------------

@pytest.fixture
def data_dir(world_tmp):
    """The four real files (links); a case replaces the training images, which are read first."""
    folder = world_tmp / "data"
    folder.mkdir()
    for path in data_mod.find_files().values():
        (folder / path.name).symlink_to(path.resolve())
    return folder


IMAGES, LABELS = "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
DATA_CASES = {  # id: (how to break the folder, what the user must read)
    "missing file": (lambda d: (d / f"{LABELS}.gz").unlink(), ["not found", f"missing {LABELS}", "--data-dir"]),
    "truncated gzip": (lambda d: put(d, IMAGES, gzip.compress(os.urandom(5000))[:-100], gz=False),
                       ["is corrupt", "damaged or truncated", "Delete it and get it with `bn-lenet data --get`"]),
    "not gzip at all": (lambda d: put(d, IMAGES, b"\x1f\x8b\x09garbage", gz=False), ["is corrupt", "Delete it"]),
    "wrong IDX magic": (lambda d: put(d, IMAGES, idx_bytes(0x0801, [60000, 28, 28], b"")),
                        ["magic number 0x00000801, expected 0x00000803", "Delete it"]),
    "wrong count": (lambda d: put(d, IMAGES, idx_bytes(0x0803, [6000, 28, 28], bytes(6000 * 784))),
                    ["shape (6000, 28, 28), expected (60000, 28, 28)", "Delete it"]),
    "wrong image shape": (lambda d: put(d, IMAGES, idx_bytes(0x0803, [60000, 32, 32], b"")),
                          ["shape (60000, 32, 32), expected (60000, 28, 28)"]),
    "truncated body": (lambda d: put(d, IMAGES, idx_bytes(0x0803, [60000, 28, 28], bytes(1000)), gz=False),
                       ["holds 1000 bytes of data, expected 47040000", "truncated or padded"]),
    "header cut short": (lambda d: put(d, IMAGES, b"\x00\x00\x08", gz=False), ["is truncated (3 bytes)"]),
    "label out of range": (lambda d: put(d, LABELS, idx_bytes(0x0801, [10000], bytes([3] * 9999 + [10]))),
                           ["has label 10; Fashion-MNIST labels are 0-9", "Delete it"]),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_data_files(case, data_dir, capsys):
    breaks, fragments = DATA_CASES[case]
    breaks(data_dir)
    assert_one_clear_error(*run_cli(["data", "--data-dir", str(data_dir)], capsys), *fragments)


def test_no_data_folder_lists_where_it_looked_and_how_to_get_it(tmp_path, capsys):
    code, err = run_cli(["data", "--data-dir", str(tmp_path / "nowhere")], capsys)
    assert_one_clear_error(code, err, "Fashion-MNIST not found", "nowhere: not a folder",
                           "apt-get install -y dataset-fashion-mnist")


def test_unreadable_data_file(data_dir, capsys):
    """chmod 000; as root (which reads anything) the check runs as user nobody."""
    put(data_dir, IMAGES, b"anything").chmod(0)
    with as_unprivileged_user():
        code, err = run_cli(["data", "--data-dir", str(data_dir)], capsys)
    assert_one_clear_error(code, err, "permission denied", "chmod a+r")


def test_bad_data_stops_a_run_before_it_creates_its_directory(data_dir, tmp_path, capsys):
    DATA_CASES["wrong IDX magic"][0](data_dir)
    out = tmp_path / "run"
    code, err = run_cli(["run", CONFIG, "--data-dir", str(data_dir), "--out", str(out)], capsys)
    assert_one_clear_error(code, err, "magic number")
    assert not out.exists()


# --- config and command line ------------------------------------------------------------------------------

CONFIG_FILES = {  # id: (file content or None for a missing file, what the user must read)
    "missing": (None, ["not found", "configs/"]),
    "not TOML": ("[train\nlr = 1\n", ["is not valid TOML", "line 1"]),
    "binary": (b"\x89PNG\r\n\x1a\n\xff\xfe", ["is not a text file"]),
    "unknown section": ("[optim]\nlr = 1.0\n", ["unknown section [optim]", "known sections: model, train"]),
    "unknown key": ("[train]\nlearning_rate = 1.0\n", ["unknown key train.learning_rate", "known keys in [train]: lr"]),
    "wrong type": ('[train]\nepochs = "ten"\n', ["train.epochs must be int, got str 'ten'"]),
    "out of range": ("[train]\nbatch_size = 1\n", ["train.batch_size = 1 is out of range", ">= 2"]),
    "NaN lr": ("[train]\nlr = nan\n", ["train.lr = nan is out of range", "a finite number > 0"]),
    "a folder": ("<dir>", ["cannot read config file", "Is a directory", "give a readable TOML file"]),
}


@pytest.mark.parametrize("case", CONFIG_FILES)
def test_bad_config_files(case, tmp_path, capsys):
    content, fragments = CONFIG_FILES[case]
    path = tmp_path / "c.toml"
    if content == "<dir>":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    out = tmp_path / "run"
    assert_one_clear_error(*run_cli(["run", str(path), "--out", str(out)], capsys), *fragments)
    assert not out.exists()


def test_unreadable_config_file(world_tmp, capsys):
    """chmod 000; as root (which reads anything) the check runs as user nobody."""
    path = world_tmp / "c.toml"
    path.write_text("[train]\nlr = 1.0\n")
    path.chmod(0)
    with as_unprivileged_user():
        code, err = run_cli(["run", str(path), "--out", str(world_tmp / "run")], capsys)
    assert_one_clear_error(code, err, "cannot read config file", "Permission denied", "give a readable TOML file")


@pytest.mark.parametrize("overrides,fragments", [
    (["train.lr"], ["bad --set 'train.lr': write it as section.key=value"]),
    (["lr=0.1"], ["bad --set 'lr=0.1'"]),
    (["train.lr=fast"], ["train.lr must be float, got str 'fast'"]),
    (["train.lr=-1"], ["train.lr = -1.0 is out of range"]),
    (["train.epochs=1.5"], ["train.epochs must be int, got float 1.5"]),
    (["train.lrr=1"], ["unknown key train.lrr", "known keys in [train]"]),
    (["optim.lr=1"], ["unknown section [optim]"]),
    (["model.norm=batch"], ["model.norm = 'batch' is out of range: it must be one of scratch, torch, none, layer, "
                            "group"]),
    (["train.device=tpu"], ["train.device = 'tpu' is out of range"]),
    (["train.precision=fp16"], ["train.precision = 'fp16' is out of range", '"fp32", "tf32" or "bf16"']),
    (["train.compile=true", "train.cuda_graph=true"],
     ["train.compile = true together with train.cuda_graph = true has not been verified on a GPU",
      "set one of them to false"]),
])
def test_bad_set_expressions(overrides, fragments, tmp_path, capsys):
    argv = ["run", CONFIG, "--out", str(tmp_path / "run")] + [a for o in overrides for a in ("--set", o)]
    assert_one_clear_error(*run_cli(argv, capsys), *fragments)


@pytest.mark.parametrize("argv,fragment", [
    (["train"], "invalid choice: 'train'"),
    (["run", CONFIG, "--epochs", "3"], "unrecognized arguments: --epochs 3"),
    ([], "the following arguments are required: COMMAND"),
])
def test_unknown_commands_and_options_get_argparse_usage(argv, fragment, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and fragment in err and "usage: bn-lenet" in err and "Traceback" not in err


def test_run_needs_a_config_or_a_run_to_resume(capsys):
    assert_one_clear_error(*run_cli(["run"], capsys), "give either a CONFIG to start a run or --resume RUN_DIR")


# --- run directories and devices -------------------------------------------------------------------------

def test_out_at_an_existing_run_points_to_resume_and_changes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("[train]\nlr = 1.0\n")
    code, err = run_cli(["run", CONFIG, "--out", str(run)], capsys)
    assert_one_clear_error(code, err, "already exists and is not empty; it is never overwritten",
                           f"continue it with `bn-lenet run --resume {run}`")
    assert [p.name for p in run.iterdir()] == ["config.toml"]


def test_out_at_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("mine")
    assert_one_clear_error(*run_cli(["run", CONFIG, "--out", str(tmp_path / "f")], capsys),
                           "is a file; give a directory path for the run")
    assert (tmp_path / "f").read_text() == "mine"


def test_out_below_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("mine")
    # On the CPU: the data goes to the device before the directory is made, and this checks the error, not a GPU.
    argv = ["run", CONFIG, "--device", "cpu", "--out", str(tmp_path / "f" / "run")]
    assert_one_clear_error(*run_cli(argv, capsys),
                           "cannot write the run directory", "choose another --out")


def test_out_in_a_read_only_folder(world_tmp, capsys):
    """chmod 555; as root (which writes anywhere) the check runs as user nobody."""
    locked = world_tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    config = world_tmp / "c.toml"  # nobody may not be able to enter the checkout (a clone in a 0700 folder)
    config.write_text(Path(CONFIG).read_text())
    with as_unprivileged_user():
        code, err = run_cli(["run", str(config), "--device", "cpu", "--out", str(locked / "run")], capsys)
    assert_one_clear_error(code, err, "cannot write the run directory", "Permission denied", "choose another --out")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: --device cuda is valid here")
def test_device_cuda_without_a_gpu(tmp_path, capsys):
    out = tmp_path / "run"
    assert_one_clear_error(*run_cli(["run", CONFIG, "--device", "cuda", "--out", str(out)], capsys),
                           "no CUDA GPU is visible", "use --set train.device=auto or cpu")
    assert not out.exists()


def test_inspect_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert_one_clear_error(*run_cli(["inspect", str(tmp_path)], capsys),
                           "is not a run directory with BN parameters", "give a folder written by `bn-lenet run`")


def test_inspect_a_damaged_run(tmp_path, capsys):
    (tmp_path / "bn_params.json").write_text('{"conv1.bn": {"gamma": [1.0,')
    assert_one_clear_error(*run_cli(["inspect", str(tmp_path)], capsys), "bn_params.json is not valid JSON",
                           "this run directory is damaged")


def test_resume_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert_one_clear_error(*run_cli(["run", "--resume", str(tmp_path)], capsys),
                           "is not a run directory (no config.toml)")


def test_resume_takes_no_new_settings(tmp_path, capsys):
    assert_one_clear_error(*run_cli(["run", "--resume", str(tmp_path), "--set", "train.lr=2"], capsys),
                           "--resume continues a run with its saved config")


# --- as a real process: exit code and stderr as the user sees them ----------------------------------------

def bn_lenet(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "bn_lenet", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, **kwargs)


@pytest.mark.parametrize("args,code,fragment", [
    (["fit", "configs/scratch_bn.toml"], 2, "invalid choice: 'fit'"),
    (["run", "configs/scratch_bn.toml", "--lr", "1"], 2, "unrecognized arguments: --lr 1"),
    (["run", "configs/scratch_bn.toml", "--set", "train.epochs=0"], 2,
     "error: train.epochs = 0 is out of range: it must be >= 1"),
])
@pytest.mark.slow
def test_as_a_process_one_message_and_no_traceback(args, code, fragment):
    proc = bn_lenet(*args)
    assert proc.returncode == code
    assert fragment in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_debug_anywhere_on_the_line_lets_the_error_through_with_its_traceback():
    with pytest.raises(ConfigError, match="train.epochs = 0 is out of range"):
        main(["run", CONFIG, "--set", "train.epochs=0", "--debug"])
