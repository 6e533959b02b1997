"""torchvision's downloaders for the datasets that have one, behind ``smoothcore fetch-data``.

Offered where a network exists, never required: every dataset plugin reads its standard on-disk layout from
``--data-dir``, an environment variable or ``./data``, however the files got there. The command downloads (with
torchvision's checksums), then reads the result back with smoothcore's own loader before saying where it is.
"""

from __future__ import annotations

from pathlib import Path

from smoothcore.errors import DataError

# dataset -> (torchvision class name, default root, folder the loader reads, relative to the root)
DOWNLOADABLE: dict[str, tuple[str, str, str]] = {
    "cifar10": ("CIFAR10", "data/cifar_10", "cifar-10-batches-py"),
    "fashion-mnist": ("FashionMNIST", "data/fashion-mnist", "FashionMNIST/raw"),
    "mnist": ("MNIST", "data/mnist", "MNIST/raw"),
}


def fetch(dataset: str, root: str | Path | None = None) -> Path:
    """Download ``dataset`` (both splits) into ``root`` with torchvision; returns the folder to give as
    ``--data-dir``. Raises DataError when the download fails (no network, checksum mismatch, full disk)."""
    import torchvision.datasets as tvd

    from smoothcore.data import get_dataset

    if dataset not in DOWNLOADABLE:
        raise DataError(
            f"no downloader for {dataset!r}; available: {', '.join(DOWNLOADABLE)}",
            hint="ImageNet must be obtained from image-net.org; point $IMAGENET_TRAIN_DIR/$IMAGENET_TEST_DIR at it",
        )
    class_name, default_root, inner = DOWNLOADABLE[dataset]
    root = Path(root or default_root)
    made = not root.exists()
    try:
        for train in (True, False):
            getattr(tvd, class_name)(str(root), train=train, download=True)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError; bad checksums: RuntimeError
        if made:
            _remove_empty_folders(root)  # a failed first download leaves no empty folders behind
        raise DataError(
            f"could not download {dataset} into {root}: {exc}",
            hint="this needs a network; otherwise copy the files in their standard layout and use --data-dir",
        ) from None
    folder = root / inner
    get_dataset(dataset).load("test", folder)  # what smoothcore will read, checked now
    return folder


def _remove_empty_folders(root: Path) -> None:
    import os

    for folder, _, _ in sorted(os.walk(root), key=lambda w: -len(w[0])):  # deepest first
        try:
            os.rmdir(folder)
        except OSError:  # not empty: a partial download stays for the next try
            pass
