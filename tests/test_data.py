"""Finding and validating Fashion-MNIST: every kind of bad file gets one clear DataError."""

import gzip

import pytest
import torch

from bn_lenet.training import data as data_mod
from bn_lenet.errors import DataError


def test_real_dataset_has_the_expected_size_and_labels(fashion_mnist):
    d = fashion_mnist
    assert d.train_images.shape == (60000, 1, 28, 28) and d.train_images.dtype == torch.uint8
    assert d.test_images.shape == (10000, 1, 28, 28)
    assert d.train_labels.shape == (60000,) and d.test_labels.shape == (10000,)
    assert torch.equal(torch.bincount(d.train_labels), torch.full((10,), 6000))  # balanced classes


def idx_bytes(magic, dims, body):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return header + body


@pytest.fixture(scope="session")
def gz_files(tmp_path_factory, fashion_mnist):
    """The four real files, gzipped as distributed (./data may hold the uncompressed torchvision copy)."""
    folder = tmp_path_factory.mktemp("gz")
    for name, path in data_mod.find_files().items():
        target = folder / f"{name}.gz"
        if path.suffix == ".gz":
            target.symlink_to(path.resolve())
        else:
            target.write_bytes(gzip.compress(path.read_bytes(), compresslevel=1))
    return folder


@pytest.fixture
def data_dir(tmp_path, gz_files):
    """A folder with links to the four real .gz files; a test replaces one with a bad one."""
    for path in gz_files.iterdir():
        (tmp_path / path.name).symlink_to(path.resolve())
    return tmp_path


def replace(data_dir, name, content: bytes, gz=True):
    for p in data_dir.glob(name + "*"):
        p.unlink()
    target = data_dir / (name + (".gz" if gz else ""))
    target.write_bytes(gzip.compress(content) if gz else content)
    return target


def test_missing_data_lists_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as e:
        data_mod.load_dataset(tmp_path / "nowhere")
    msg = str(e.value)
    assert "not found" in msg and "nowhere" in msg and "apt-get install -y dataset-fashion-mnist" in msg


def test_explicit_root_via_environment_is_the_only_place_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("BN_LENET_DATA", str(tmp_path))
    assert data_mod.candidate_dirs() == [tmp_path]


def test_a_folder_with_one_file_missing_names_it(data_dir):
    (data_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        data_mod.load_dataset(data_dir)


def test_truncated_gzip_is_reported_as_corrupt(data_dir):
    real = (data_dir / "train-labels-idx1-ubyte.gz").read_bytes()
    (data_dir / "train-labels-idx1-ubyte.gz").unlink()
    (data_dir / "train-labels-idx1-ubyte.gz").write_bytes(real[: len(real) // 2])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz is corrupt"):
        data_mod.load_dataset(data_dir)


def test_garbage_gzip_is_reported(data_dir):
    replace(data_dir, "t10k-labels-idx1-ubyte", b"\x1f\x8bnot really gzip", gz=False)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        data_mod.load_dataset(data_dir)


def test_wrong_magic_number(data_dir):
    replace(data_dir, "t10k-labels-idx1-ubyte", idx_bytes(0x0803, [10000], bytes(10000)))
    with pytest.raises(DataError, match="magic number 0x00000803, expected 0x00000801"):
        data_mod.load_dataset(data_dir)


def test_wrong_count(data_dir):
    replace(data_dir, "t10k-images-idx3-ubyte", idx_bytes(0x0803, [100, 28, 28], bytes(100 * 784)))
    with pytest.raises(DataError, match=r"shape \(100, 28, 28\), expected \(10000, 28, 28\)"):
        data_mod.load_dataset(data_dir)


def test_truncated_body(data_dir):
    replace(data_dir, "t10k-labels-idx1-ubyte", idx_bytes(0x0801, [10000], bytes(9000)), gz=False)
    with pytest.raises(DataError, match="holds 9000 bytes of data, expected 10000"):
        data_mod.load_dataset(data_dir)


def test_label_out_of_range(data_dir):
    replace(data_dir, "t10k-labels-idx1-ubyte", idx_bytes(0x0801, [10000], bytes([3] * 9999 + [12])))
    with pytest.raises(DataError, match="label 12; Fashion-MNIST labels are 0-9"):
        data_mod.load_dataset(data_dir)


def test_uncompressed_files_in_torchvision_layout_are_found(tmp_path, fashion_mnist):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name, path in data_mod.find_files().items():
        (raw / name).write_bytes(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes())
    d = data_mod.load_dataset(tmp_path)
    assert torch.equal(d.test_labels, fashion_mnist.test_labels)


def test_every_example_is_trained_each_epoch_last_partial_batch_included():
    assert data_mod.num_batches(60000, 256) == 235  # 234 full batches + one of 96
    assert data_mod.num_batches(60000, 256, limit=10) == 10
    order = data_mod.epoch_order(60000, seed=1, epoch=3, device="cpu")
    assert torch.equal(order.sort().values, torch.arange(60000))
    assert torch.equal(order, data_mod.epoch_order(60000, seed=1, epoch=3, device="cpu"))
    assert not torch.equal(order, data_mod.epoch_order(60000, seed=1, epoch=4, device="cpu"))


def test_to_float_matches_torchvision_to_tensor_scaling():
    x = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    torch.testing.assert_close(data_mod.to_float(x), torch.tensor([[0.0, 0.2, 1.0]]))
