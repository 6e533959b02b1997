"""Dataset plugins on fixtures written in the real on-disk formats, and on the real Fashion-MNIST."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

from smoothcore import DataError
from smoothcore.data import fetch, get_dataset, random_crop_flip, subset_indices
from tests.conftest import write_idx


def test_fashion_mnist_is_read_from_the_real_idx_files(fashion_dir):
    source = get_dataset("fashion-mnist")
    test = source.load("test", fashion_dir)
    train = source.load("train", fashion_dir)
    assert len(test) == 10_000 and len(train) == 60_000
    x, y = fetch(test, [0, 1, 2])
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32
    assert y.tolist() == [9, 2, 1]  # the first Fashion-MNIST test labels: ankle boot, pullover, trouser
    assert torch.equal(x * 255, (x * 255).round())
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def test_idx_fixture_loads(tiny_idx_dir):
    ds = get_dataset("fashion-mnist").load("train", tiny_idx_dir)
    assert len(ds) == 64 and ds.images.shape == (64, 1, 28, 28)


def test_truncated_idx_file_is_named(tiny_idx_dir):
    path = tiny_idx_dir / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz.*truncated"):
        get_dataset("fashion-mnist").load("test", tiny_idx_dir)


def test_corrupt_gzip_is_named(tiny_idx_dir):
    path = tiny_idx_dir / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        get_dataset("fashion-mnist").load("test", tiny_idx_dir)


def test_labels_outside_the_classes_are_refused(tiny_idx_dir):
    write_idx(tiny_idx_dir / "t10k-labels-idx1-ubyte.gz", np.full(32, 12))
    with pytest.raises(DataError, match="label 12"):
        get_dataset("fashion-mnist").load("test", tiny_idx_dir)


def test_missing_file_and_missing_folder_say_where_and_how(tmp_path, tiny_idx_dir):
    (tiny_idx_dir / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        get_dataset("fashion-mnist").load("train", tiny_idx_dir)
    with pytest.raises(DataError, match="(?s)no data found.*nowhere.*apt-get download dataset-fashion-mnist"):
        get_dataset("fashion-mnist").load("test", tmp_path / "nowhere")


def write_cifar_fixture(folder, n_per_batch=20, seed=0):
    """The cifar-10-batches-py layout: python pickles (protocol 2, bytes keys) of dicts with b'data' (N, 3072)
    uint8 and b'labels'."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, n_per_batch).tolist(),
            b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(n_per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"] * 10}, protocol=2))
    return folder


def test_cifar10_batches_load_channel_major(tmp_path):
    folder = write_cifar_fixture(tmp_path / "cifar-10-batches-py")
    source = get_dataset("cifar10")
    train, test = source.load("train", folder), source.load("test", folder)
    assert len(train) == 100 and len(test) == 20
    raw = pickle.load(open(folder / "test_batch", "rb"), encoding="bytes")
    x, y = fetch(test, [3])
    assert torch.equal(
        (x[0] * 255).round().to(torch.uint8), torch.from_numpy(raw[b"data"][3].reshape(3, 32, 32))
    )
    assert int(y[0]) == raw[b"labels"][3]


def test_cifar10_found_through_environment_variable(tmp_path, monkeypatch):
    folder = write_cifar_fixture(tmp_path / "c10")
    monkeypatch.setenv("CIFAR10_DIR", str(folder))
    assert len(get_dataset("cifar10").load("test")) == 20


def test_cifar10_incomplete_folder_names_the_missing_batch(tmp_path):
    folder = write_cifar_fixture(tmp_path / "c10")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        get_dataset("cifar10").load("train", folder)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar10_batches_never_run_code(tmp_path):
    folder = write_cifar_fixture(tmp_path / "c10")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [1]}, f, protocol=2)
    with pytest.raises(DataError, match="test_batch.*refusing to load .*print"):
        get_dataset("cifar10").load("test", folder)


def test_cifar10_batches_pickled_with_protocol_5_load(tmp_path):
    """numpy pickles arrays through ``_frombuffer`` under protocol 5 (a batch re-saved by a recent Python)."""
    folder = write_cifar_fixture(tmp_path / "c10")
    original = get_dataset("cifar10").load("test", folder)
    with open(folder / "test_batch", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch, f, protocol=5)
    resaved = get_dataset("cifar10").load("test", folder)
    assert torch.equal(resaved.images, original.images) and torch.equal(resaved.labels, original.labels)


@pytest.mark.parametrize("n, limit", [(10, 3), (1000, 7), (1281167, 50000), (5, 5), (5, 9), (4, None)])
def test_training_subsets_are_spread_over_the_whole_set(n, limit):
    """--train-limit / --eval-limit on a set stored class by class (ImageNet's folders) must see every class."""
    from smoothcore.data import spread_indices

    idx = spread_indices(n, limit)
    assert len(idx) == min(n, limit or n) and len(set(idx)) == len(idx)
    assert idx == sorted(idx) and idx[0] == 0 and idx[-1] < n
    if limit and limit < n:
        assert n - idx[-1] <= -(-n // limit)  # reaches into the last stretch of the set
    labels = [i * 10 // n for i in range(n)]  # ten classes stored one after another
    assert len({labels[i] for i in idx}) == min(10, len(idx))


def test_subset_takes_every_kth_image_up_to_a_limit():
    assert subset_indices(10, 3) == [0, 3, 6, 9]
    assert subset_indices(10, 3, 2) == [0, 3]
    assert subset_indices(10, np.int64(3), np.int32(2), np.int64(1)) == [1, 4]  # numpy integers are integers
    for bad in ({"offset": 1.5}, {"offset": -1}, {"limit": 2.0}):
        with pytest.raises(Exception, match="must be a"):
            subset_indices(10, 1, **bad)
    with pytest.raises(Exception, match="skip"):
        subset_indices(10, 0)


def test_random_crop_flip_keeps_shape_and_the_grid():
    x = torch.randint(0, 256, (16, 3, 32, 32)).float() / 255
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal(out * 255, (out * 255).round())
    unshifted = random_crop_flip(x, torch.Generator().manual_seed(0), padding=0, flip=False)
    assert torch.equal(unshifted, x)


def test_labels_that_are_not_class_indices_are_a_clean_error():
    from smoothcore.data import check_labels

    class Named:
        labels = ["cat", "dog"]

    class Fractional:
        targets = [0.5, 1.0]

    for bad in (Named(), Fractional()):
        with pytest.raises(DataError, match="class indices"):
            check_labels(bad, 10, "acme test")
    check_labels(type("Fine", (), {"targets": [0, 9]})(), 10, "acme test")


def test_a_dataset_whose_images_are_not_the_declared_shape_is_refused_at_load():
    from smoothcore.data import DatasetSource, ImageTensorDataset

    images = torch.zeros(4, 1, 10, 10, dtype=torch.uint8)
    source = DatasetSource(
        "odd",
        2,
        (1, 12, 12),
        (0.5,),
        (0.5,),
        lambda split, d: ImageTensorDataset(images, torch.zeros(4).long()),
    )
    with pytest.raises(
        DataError, match=r"odd test: images have shape \(1, 10, 10\), but the dataset declares"
    ):
        source.load("test")
