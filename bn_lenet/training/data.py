"""Fashion-MNIST: find it, check it, hold it on the device, and slice batches from it.

Sources, in order: an explicit directory (``data.root`` / ``--data-dir`` / ``BN_LENET_DATA``; when given,
it is the only place looked at), the local cache ``./data``, Debian's package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``). ``get_dataset`` adds the two ways to obtain it: that Debian
package (as root) or torchvision's download (needs the internet).

The whole dataset is 47 MB as uint8, so it is loaded once onto the device and batches are index slices
of a seeded per-epoch permutation, converted to float there: no DataLoader, no per-sample Python.
"""

import gzip
import os
import shutil
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
LOCAL_DIR = Path("data")
FILES = {  # name -> (IDX magic, expected shape)
    "train-images-idx3-ubyte": (0x0803, (60000, 28, 28)),
    "train-labels-idx1-ubyte": (0x0801, (60000,)),
    "t10k-images-idx3-ubyte": (0x0803, (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": (0x0801, (10000,)),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
HOW_TO_GET = ("get it with `bn-lenet data --get` (uses `apt-get install -y dataset-fashion-mnist` as root on "
              "Debian, else torchvision's download, which needs the internet), or point --data-dir / "
              "BN_LENET_DATA at a folder holding the four IDX files")


@dataclass
class FashionMNIST:
    """Images as uint8 (N, 1, 28, 28) and labels as int64 (N,), on one device."""
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str

    def to(self, device) -> "FashionMNIST":
        return FashionMNIST(*(t.to(device) for t in (self.train_images, self.train_labels, self.test_images,
                                                     self.test_labels)), self.source)


def candidate_dirs(root=None) -> list:
    """Where to look, in order. An explicit root (argument or BN_LENET_DATA) is the only candidate."""
    explicit = root or os.environ.get("BN_LENET_DATA")
    if explicit:
        return [Path(explicit).expanduser()]
    return [LOCAL_DIR, DEBIAN_DIR]


def _find_file(directory: Path, name: str):
    for sub in (directory, directory / "FashionMNIST" / "raw"):
        for candidate in (sub / name, sub / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def find_files(root=None) -> dict:
    """{name: path} of the four IDX files from the first directory that has all four, else DataError."""
    looked = []
    for directory in candidate_dirs(root):
        found = {name: _find_file(directory, name) for name in FILES}
        if all(found.values()):
            return found
        missing = [n for n, p in found.items() if p is None]
        looked.append(f"  {directory.resolve()}: " + ("not a folder" if not directory.is_dir()
                                                       else f"missing {', '.join(missing)}"))
    raise DataError("Fashion-MNIST not found. Looked in:\n" + "\n".join(looked) + "\nTo fix: " + HOW_TO_GET + ".")


def read_idx(path: Path, magic: int, shape: tuple) -> torch.Tensor:
    """Read one IDX file (gzipped or not), checking magic number, dimensions and size."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except PermissionError:
        raise DataError(f"cannot read {path}: permission denied. Make it readable (chmod a+r) or point "
                        f"--data-dir at a readable copy.") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:  # BadGzipFile is an OSError: test it first
        raise DataError(f"{path} is corrupt ({e}): the gzip stream is damaged or truncated. "
                        f"Delete it and {HOW_TO_GET}.") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}. Check the file, or delete it and "
                        f"{HOW_TO_GET}.") from None
    ndim = len(shape)
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated ({len(raw)} bytes). Delete it and {HOW_TO_GET}.")
    got_magic = int.from_bytes(raw[:4], "big")
    if got_magic != magic:
        raise DataError(f"{path} is not an IDX file of the expected kind: magic number 0x{got_magic:08x}, "
                        f"expected 0x{magic:08x}. Delete it and {HOW_TO_GET}.")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if dims != shape:
        raise DataError(f"{path} has shape {dims}, expected {shape} (Fashion-MNIST). "
                        f"Delete it and {HOW_TO_GET}.")
    body = raw[4 + 4 * ndim:]
    expected = 1
    for d in shape:
        expected *= d
    if len(body) != expected:
        raise DataError(f"{path} holds {len(body)} bytes of data, expected {expected} for shape {shape}: "
                        f"it is truncated or padded. Delete it and {HOW_TO_GET}.")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).view(shape)


def load_dataset(root=None) -> FashionMNIST:
    """Find, read and validate Fashion-MNIST into CPU tensors."""
    paths = find_files(root)
    t = {name: read_idx(paths[name], *FILES[name]) for name in FILES}
    for name in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        top = int(t[name].max())
        if top > 9:
            raise DataError(f"{paths[name]} has label {top}; Fashion-MNIST labels are 0-9. "
                            f"Delete it and {HOW_TO_GET}.")
    source = str(paths["train-images-idx3-ubyte"].parent.resolve())
    return FashionMNIST(t["train-images-idx3-ubyte"].unsqueeze(1), t["train-labels-idx1-ubyte"].long(),
                        t["t10k-images-idx3-ubyte"].unsqueeze(1), t["t10k-labels-idx1-ubyte"].long(), source)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [0, 1], exactly as torchvision's ToTensor (divide by 255)."""
    return images.float().div_(255)


def epoch_order(n: int, seed: int, epoch: int, device) -> torch.Tensor:
    """The training order of one epoch: a permutation seeded by (seed, epoch) alone, so a resumed run
    sees the same batches as one that ran straight through."""
    g = torch.Generator(device="cpu").manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).to(device)


def num_batches(n: int, batch_size: int, limit: int = 0) -> int:
    """Batches per epoch: every example, the last partial batch included (as the tutorial); capped by limit."""
    full = -(-n // batch_size)
    return min(full, limit) if limit else full


# --- getting the data -------------------------------------------------------------------------------

def get_dataset(root=None, log=print) -> FashionMNIST:
    """Find the data, else obtain it: Debian's package where we can (root + apt-get), else torchvision's
    download into ``root`` or ``./data``. Says which source it used."""
    try:
        data = load_dataset(root)
        log(f"data: found Fashion-MNIST in {data.source}")
        return data
    except DataError as e:
        if "not found" not in str(e):
            raise  # corrupt files: never paper over them with a second copy
    if root is None and not os.environ.get("BN_LENET_DATA") and _install_debian_package(log):
        data = load_dataset(root)
        log(f"data: using Debian's package dataset-fashion-mnist in {data.source}")
        return data
    target = Path(root or os.environ.get("BN_LENET_DATA") or LOCAL_DIR)
    log(f"data: downloading Fashion-MNIST with torchvision into {target.resolve()} ...")
    try:
        import torchvision
        for train in (True, False):
            torchvision.datasets.FashionMNIST(str(target), train=train, download=True)
    except Exception as e:  # no internet, no write access: one message, what to do
        raise DataError(f"could not download Fashion-MNIST into {target.resolve()}: {e}\n"
                        f"To fix: connect to the internet, or as root on Debian run "
                        f"`apt-get install -y dataset-fashion-mnist`, or point --data-dir at the four IDX files.")
    data = load_dataset(target)
    log(f"data: downloaded with torchvision into {data.source}")
    return data


def _install_debian_package(log) -> bool:
    if not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get")):
        return False
    log("data: installing Debian's package dataset-fashion-mnist ...")
    for cmd in (["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"],
                ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"]):
        ok = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        if ok and cmd[1] == "install":
            return True
    log("data: apt-get could not install dataset-fashion-mnist")
    return False


def torchvision_root(root=None) -> Path:
    """A folder torchvision's ``FashionMNIST(root, download=False)`` can read: it reads only uncompressed
    files under ``<root>/FashionMNIST/raw/``. Prepares ``./data`` once (gunzip) from wherever the data is."""
    paths = find_files(root)
    raw = LOCAL_DIR / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, path in paths.items():
        target = raw / name
        if not target.is_file():
            tmp = target.with_suffix(".tmp")
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target)
    return LOCAL_DIR
