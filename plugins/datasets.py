"""Built-in datasets: Fashion-MNIST and MNIST (IDX files), CIFAR-10 (the pickled python batches), ImageNet
(class folders of JPEGs)."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from functools import partial
from pathlib import Path

import numpy as np
import torch

from smoothcore.data import DatasetSource, ImageTensorDataset, random_crop_flip
from smoothcore.errors import DataError
from smoothcore.hookspecs import hookimpl

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# -- locating data ----------------------------------------------------------------------------------------------
def locate(
    name: str,
    data_dir: Path | None,
    env: str,
    defaults: tuple[str, ...],
    required: tuple[str, ...],
    how: str,
    probe: tuple[str, ...] = (),
) -> Path:
    """The first of ``data_dir``, ``$env`` and ``defaults`` that exists; a DataError saying where we looked and
    how to get the data otherwise. A folder that exists but lacks ``required`` files names them. A default folder
    holding none of the ``probe`` files is passed over (``./data/mnist`` may hold torchvision's ``MNIST/raw``)."""
    candidates: list[tuple[str, Path]] = []
    if data_dir is not None:
        candidates.append(("--data-dir", Path(data_dir)))
    if os.environ.get(env):
        candidates.append((f"${env}", Path(os.environ[env])))
    candidates += [("default", Path(d)) for d in defaults]
    if data_dir is not None or os.environ.get(env):
        candidates = candidates[:1]  # an explicit location is never silently replaced by another
    for origin, path in candidates:
        if origin == "default" and probe and path.is_dir() and not any((path / f).is_file() for f in probe):
            continue
        if path.is_dir():
            missing = [f for f in required if not (path / f).is_file()]
            if missing:
                raise DataError(
                    f"{name}: the folder {path} ({origin}) is incomplete: missing {', '.join(missing)}",
                    hint=how,
                )
            return path
    looked = ", ".join(f"{p} ({o})" for o, p in candidates)
    raise DataError(f"{name}: no data found; looked in {looked}", hint=how)


# -- IDX (MNIST-style) files ------------------------------------------------------------------------------------
def read_idx(path: Path, expect_dims: int) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) of unsigned bytes with ``expect_dims`` dimensions."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if len(raw) < 4:
        raise DataError(f"{path} is not an IDX file (only {len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim != expect_dims:
        raise DataError(
            f"{path} is not an IDX file of unsigned bytes with {expect_dims} dimensions (header {raw[:4].hex()})"
        )
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(
            f"{path} is truncated or corrupt: header says {dims} = {expected} bytes, file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_idx_split(name: str, folder: Path, split: str, num_classes: int) -> ImageTensorDataset:
    prefix = "train" if split == "train" else "t10k"
    images_path = _idx_path(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _idx_path(folder, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{name}: {images_path.name} holds {images.shape[0]} images but {labels_path.name} {labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) >= num_classes:
        raise DataError(
            f"{name}: {labels_path} holds label {int(labels.max())}, outside 0..{num_classes - 1}"
        )
    return ImageTensorDataset(
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        source=f"{name} {split}",
    )


def _idx_path(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"missing {stem}.gz (or {stem}) in {folder}")


IDX_FILES = tuple(
    f"{s}.gz"
    for s in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
)

FASHION_HOW = (
    "install the Debian package dataset-fashion-mnist, or fetch it without root: "
    "apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb pkg && "
    "export FASHION_MNIST_DIR=$PWD/pkg/usr/share/datasets/fashion-mnist (make data does this into ./data)"
)


def _idx_loader(name: str, env: str, defaults: tuple[str, ...], how: str, split: str, data_dir: Path | None):
    folder = locate(
        name, data_dir, env, defaults, (), how, probe=("t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte")
    )
    return load_idx_split(name, folder, split, 10)


def fashion_mnist() -> DatasetSource:
    defaults = (
        "data/fashion-mnist",
        "data/fashion-mnist/FashionMNIST/raw",
        "/usr/share/datasets/fashion-mnist",
    )
    return DatasetSource(
        name="fashion-mnist",
        num_classes=10,
        image_shape=(1, 28, 28),
        mean=(0.2860,),
        std=(0.3530,),
        loader=partial(_idx_loader, "fashion-mnist", "FASHION_MNIST_DIR", defaults, FASHION_HOW),
        description="Fashion-MNIST, 28x28 grey, from the four IDX .gz files ($FASHION_MNIST_DIR, ./data/fashion-mnist, "
        "/usr/share/datasets/fashion-mnist)",
    )


def mnist() -> DatasetSource:
    how = "put the four MNIST IDX files (train-images-idx3-ubyte.gz, ...) in a folder and set $MNIST_DIR or --data-dir"
    return DatasetSource(
        name="mnist",
        num_classes=10,
        image_shape=(1, 28, 28),
        mean=(0.1307,),
        std=(0.3081,),
        loader=partial(
            _idx_loader,
            "mnist",
            "MNIST_DIR",
            ("data/mnist", "data/mnist/MNIST/raw", "/usr/share/datasets/mnist"),
            how,
        ),
        description="MNIST, 28x28 grey, from the four IDX .gz files ($MNIST_DIR, ./data/mnist)",
    )


# -- CIFAR-10 (python pickled batches) ----------------------------------------------------------------------------
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches contain (dicts, lists, bytes, numpy arrays): never arbitrary code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # arrays pickled with protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_HOW = (
    "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, extract it and point "
    "--data-dir or $CIFAR10_DIR at the cifar-10-batches-py folder"
)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except Exception as exc:
        raise DataError(f"{path} is not a readable CIFAR-10 batch: {exc}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path} is not a CIFAR-10 batch (no data/labels entries)")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise DataError(
            f"{path} is corrupt: data {data.dtype} {data.shape}, {labels.shape[0]} labels (expected uint8 (N, 3072))"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path} holds labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_loader(split: str, data_dir: Path | None) -> ImageTensorDataset:
    files = CIFAR_TRAIN if split == "train" else ("test_batch",)
    folder = locate(
        "cifar10",
        data_dir,
        "CIFAR10_DIR",
        ("data/cifar_10/cifar-10-batches-py", "data/cifar_10"),
        files,
        CIFAR_HOW,
    )
    parts = [read_cifar_batch(folder / f) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ImageTensorDataset(
        torch.from_numpy(images.copy()), torch.from_numpy(labels), source=f"cifar10 {split}"
    )


def cifar10() -> DatasetSource:
    return DatasetSource(
        name="cifar10",
        num_classes=10,
        image_shape=(3, 32, 32),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        loader=_cifar_loader,
        augment=random_crop_flip,
        description="CIFAR-10 from cifar-10-batches-py (--data-dir, $CIFAR10_DIR, ./data/cifar_10); crop 32 pad 4 + flip",
    )


# -- ImageNet (class folders of JPEGs; plugins/imagenet.py) --------------------------------------------------------
def _imagenet_loader(split: str, data_dir: Path | None):
    from smoothcore_plugins.imagenet import load_imagenet

    return load_imagenet(split, data_dir)


def imagenet() -> DatasetSource:
    return DatasetSource(
        name="imagenet",
        num_classes=1000,
        image_shape=(3, 224, 224),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        loader=_imagenet_loader,
        description="ImageNet class folders ($IMAGENET_TRAIN_DIR, $IMAGENET_TEST_DIR); random resized crop 224 + flip, "
        "test resize 256 + centre crop 224",
    )


@hookimpl
def register_datasets(register) -> None:
    for factory in (fashion_mnist, mnist, cifar10, imagenet):
        source = factory()
        register(source.name, factory, description=source.description)
