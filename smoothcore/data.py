"""Datasets: what a dataset plugin provides, in-memory image tensors, batching and on-device augmentation."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from smoothcore.checks import is_int
from smoothcore.errors import ConfigError, DataError, SmoothcoreError

SPLITS = ("train", "test")


class ImageTensorDataset(Dataset):
    """Images held in memory as uint8 ``(N, C, H, W)`` with int64 labels; items are ``(float image in [0, 1],
    label)``. Batching reads the tensors directly (no per-item Python work)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, source: str = "") -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(
                f"{source or 'dataset'}: images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise DataError(
                f"{source or 'dataset'}: {images.shape[0]} images but labels of shape {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels.long()
        self.source = source

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i].float() / 255.0, int(self.labels[i])

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(str(tuple(self.images.shape)).encode())
        h.update(self.images.numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()[:16]


@dataclass
class DatasetSource:
    """A dataset as a plugin registers it.

    ``loader(split, data_dir)`` returns a Dataset of ``(image float [0, 1] (C, H, W), label)``; ``augment(batch,
    generator)`` is the training augmentation on a batch on its device (None: none).
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    loader: Callable[[str, Path | None], Dataset]
    augment: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None
    description: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    def load(self, split: str, data_dir: str | Path | None = None) -> Dataset:
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        dataset = self.loader(split, Path(data_dir) if data_dir is not None else None)
        check_labels(dataset, self.num_classes, f"{self.name} {split}")
        check_first_image(dataset, self.image_shape, f"{self.name} {split}")
        return dataset


def check_first_image(dataset: Dataset, image_shape: tuple[int, ...], what: str) -> None:
    """The first image has the shape the dataset declares (a loader or a folder of other-sized images that
    disagrees would otherwise fail deep inside a noise or a model)."""
    try:
        if len(dataset) == 0:
            return
    except TypeError:  # an iterable dataset without a length: nothing to index
        return
    item = dataset[0]
    image = item[0] if isinstance(item, (tuple, list)) else item
    if isinstance(image, torch.Tensor) and tuple(image.shape) != tuple(image_shape):
        raise DataError(
            f"{what}: images have shape {tuple(image.shape)}, but the dataset declares {tuple(image_shape)}",
            hint="a dataset plugin's image_shape must be what its loader returns (resize or crop in the loader)",
        )


def check_labels(dataset: Dataset, num_classes: int, what: str) -> None:
    """Labels a model with ``num_classes`` outputs cannot predict are refused up front (they would end training in
    an index error and count as silent misclassifications in certification). Datasets that expose their labels
    (``labels`` or ``targets``) are checked."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = getattr(dataset, "targets", None)
    if labels is None:
        return
    try:
        labels = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):
        raise DataError(
            f"{what}: the dataset's labels are not class indices ({type(labels).__name__})"
        ) from None
    if labels.numel() == 0:
        return
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.dim() != 1:
        raise DataError(
            f"{what}: labels must be a 1-D sequence of integer class indices, got {labels.dtype} "
            f"{tuple(labels.shape)}"
        )
    bad = (labels < 0) | (labels >= num_classes)
    if bool(bad.any()):
        examples = sorted(set(labels[bad].tolist()))[:5]
        raise DataError(
            f"{what}: {int(bad.sum())} labels outside the {num_classes} classes 0..{num_classes - 1} "
            f"(for example {examples})",
            hint="a folder dataset has more class folders than the model has classes?",
        )


def get_dataset(name: str) -> DatasetSource:
    from smoothcore.plugins import registry

    entry = registry("dataset").get(name)
    source = entry.factory()
    if not isinstance(source, DatasetSource):
        from smoothcore.errors import PluginError

        raise PluginError(
            f"plugin {entry.plugin!r} built dataset {name!r} as {type(source).__name__}, not a DatasetSource"
        )
    return source


def subset_indices(n: int, skip: int = 1, limit: int | None = None, offset: int = 0) -> list[int]:
    """Every ``skip``-th index from ``offset`` (the reference's ``--dataset-skip``), at most ``limit`` of them."""
    if not is_int(skip) or skip < 1:
        raise ConfigError(f"skip must be a positive integer, got {skip!r}")
    if limit is not None and (not is_int(limit) or limit < 1):
        raise ConfigError(f"limit must be a positive integer, got {limit!r}")
    if not is_int(offset) or offset < 0:
        raise ConfigError(f"offset must be a non-negative integer, got {offset!r}")
    idx = list(range(int(offset), n, int(skip)))
    return idx[: int(limit)] if limit is not None else idx


def spread_indices(n: int, limit: int | None = None) -> list[int]:
    """At most ``limit`` of the indices ``0 .. n - 1``, evenly spread over them (all of them without a limit).

    Training and evaluation subsets are taken this way, not as the first ``limit`` images: a dataset stored
    class by class (ImageNet's folders) would otherwise give a subset of the first classes only."""
    if limit is not None and (not is_int(limit) or limit < 1):
        raise ConfigError(f"limit must be a positive integer, got {limit!r}")
    if limit is None or limit >= n:
        return list(range(n))
    return [i * n // limit for i in range(limit)]


def fetch(dataset: Dataset, indices: list[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(len(indices), C, H, W)`` float in [0, 1] and labels for ``indices``."""
    if isinstance(dataset, ImageTensorDataset):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return dataset.images[idx].float() / 255.0, dataset.labels[idx]
    items = [dataset[int(i)] for i in indices]
    return torch.stack([im for im, _ in items]), torch.tensor(
        [int(lbl) for _, lbl in items], dtype=torch.long
    )


def batches(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    indices: list[int] | None = None,
    workers: int = 0,
    device: torch.device | str = "cpu",
    start_batch: int = 0,
    shard: tuple[int, int] | None = None,
) -> Iterator:
    """Batches of ``(images, labels)`` on ``device``. In-memory datasets are sliced directly; others go through a
    DataLoader with ``workers`` processes and pinned memory. ``start_batch`` skips that many batches of this order
    (resuming mid-epoch). With ``shard=(rank, world)`` each batch holds only this rank's rows ``rank::world`` of the
    global batch (a distributed sampler that keeps the single-process data order) and items are
    ``(images, labels, global batch size)``."""
    order = torch.as_tensor(indices if indices is not None else range(len(dataset)), dtype=torch.long)
    if shuffle:
        order = order[torch.randperm(len(order), generator=generator)]
    device = torch.device(device)
    rank, world = shard or (0, 1)
    steps = [order[b : b + batch_size] for b in range(start_batch * batch_size, len(order), batch_size)]
    mine = [step[rank::world] for step in steps]
    if isinstance(dataset, ImageTensorDataset):
        loaded = ((dataset.images[idx], dataset.labels[idx]) for idx in mine)
    else:
        # the loader seeds its workers from its own generator, drawn from the order generator: creating it leaves
        # torch's global generator (dropout, resumed exactly) untouched
        seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator is not None else 0
        loader = DataLoader(
            dataset,
            batch_sampler=[idx.tolist() for idx in mine],
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
            generator=torch.Generator().manual_seed(seed),
        )
        loaded = iter(loader)
    for step, (images, labels) in zip(steps, _unwrapped(loaded)):
        if images.dtype == torch.uint8:
            if device.type == "cuda":
                images = images.pin_memory()
            images = images.to(device, non_blocking=True).float() / 255.0
        else:
            images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        yield (images, labels, len(step)) if shard is not None else (images, labels)


def _unwrapped(loaded: Iterator) -> Iterator:
    """Items of a DataLoader; an error of ours raised in a worker process comes back as itself, without the
    worker's traceback that the DataLoader folds into its message."""
    while True:
        try:
            item = next(loaded)
        except StopIteration:
            return
        except SmoothcoreError as exc:
            raise worker_error(exc) from None
        yield item


def worker_error(exc: SmoothcoreError) -> SmoothcoreError:
    text = exc.message
    if "Original Traceback" not in text:
        return exc
    name = f"{type(exc).__name__}: "
    at = text.rfind(name)
    body = text[at + len(name) :].strip() if at >= 0 else text.strip().splitlines()[-1]
    message, _, hint = body.partition("\nHint: ")
    return type(exc)(message.strip(), hint=hint.strip() or None)


def random_crop_flip(
    batch: torch.Tensor, generator: torch.Generator | None, *, padding: int = 4, flip: bool = True
) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip of a batch ``(N, C, H, W)``, on its device.

    Zero padding and flips keep images on the 1/255 grid."""
    n, _, h, w = batch.shape
    dev = batch.device
    padded = torch.nn.functional.pad(batch, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    rows = dy[:, None] + torch.arange(h, device=dev)[None, :]  # (n, h)
    cols = dx[:, None] + torch.arange(w, device=dev)[None, :]  # (n, w)
    if flip:
        flipped = torch.rand(n, generator=generator, device=dev) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    out = padded[
        torch.arange(n, device=dev)[:, None, None, None],
        torch.arange(batch.shape[1], device=dev)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    return out
