"""`smoothcore fetch-data`: torchvision's downloaders wired to smoothcore's loaders (no network here: torchvision's
dataset classes are replaced by fakes that write what the real ones leave on disk)."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets as tvd
from click.testing import CliRunner

from smoothcore.cli import cli
from smoothcore.data import get_dataset
from tests.conftest import write_idx
from tests.plugins.test_datasets import write_cifar_fixture


class FakeCIFAR10:
    """Leaves root/cifar-10-batches-py, as torchvision.datasets.CIFAR10(root, download=True) does."""

    calls: list[tuple[str, bool]] = []

    def __init__(self, root, train=True, download=False):
        assert download
        FakeCIFAR10.calls.append((root, train))
        if not (Path(root) / "cifar-10-batches-py").is_dir():
            write_cifar_fixture(Path(root) / "cifar-10-batches-py", n_per_batch=3)


class FakeMNIST:
    """Leaves root/MNIST/raw with the four IDX files (gzipped and extracted), as torchvision.datasets.MNIST does."""

    def __init__(self, root, train=True, download=False):
        raw = Path(root) / "MNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for prefix, n in (("train", 12), ("t10k", 6)):
            write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
            write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))


class Offline:
    """Makes its folders first, as torchvision does, then finds no network."""

    def __init__(self, root, train=True, download=False):
        (Path(root) / "cifar-10-batches-py").mkdir(parents=True, exist_ok=True)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_fetch_cifar10_downloads_both_splits_and_checks_them_with_our_loader(tmp_path, monkeypatch):
    monkeypatch.setattr(tvd, "CIFAR10", FakeCIFAR10)
    FakeCIFAR10.calls.clear()
    result = CliRunner().invoke(cli, ["fetch-data", "cifar10", "--data-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert [train for _, train in FakeCIFAR10.calls] == [True, False]
    folder = tmp_path / "c" / "cifar-10-batches-py"
    assert str(folder) in result.output.replace("\n", "")
    assert len(get_dataset("cifar10").load("test", folder)) == 3


def test_fetched_mnist_is_found_in_the_default_place(tmp_path, monkeypatch):
    monkeypatch.setattr(tvd, "MNIST", FakeMNIST)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MNIST_DIR", raising=False)
    assert CliRunner().invoke(cli, ["fetch-data", "mnist"]).exit_code == 0
    assert (tmp_path / "data" / "mnist" / "MNIST" / "raw").is_dir()
    assert len(get_dataset("mnist").load("test")) == 6  # ./data/mnist holds only MNIST/raw: it is looked into


def test_fetch_without_a_network_is_a_clean_error(tmp_path, monkeypatch):
    monkeypatch.setattr(tvd, "CIFAR10", Offline)
    result = CliRunner().invoke(cli, ["fetch-data", "cifar10", "--root", str(tmp_path / "c")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "could not download cifar10" in result.output and "name resolution" in result.output
    assert not (tmp_path / "c").exists()  # no empty folders left behind
    (tmp_path / "mine").mkdir()  # a folder the user had stays, whatever happened inside it
    CliRunner().invoke(cli, ["fetch-data", "cifar10", "--root", str(tmp_path / "mine")])
    assert (tmp_path / "mine").is_dir()


def test_datasets_without_a_downloader_say_where_to_get_them():
    from smoothcore.errors import DataError
    from smoothcore_plugins.downloads import fetch

    with pytest.raises(DataError, match="no downloader for 'imagenet'"):
        fetch("imagenet")
