"""ImageNet (ILSVRC-2012) from class folders of JPEGs, labelled by the standard class index.

A label is the position of the image's synset folder (``n01440764``, ...) among the 1000 ILSVRC-2012 synsets in
sorted order (``imagenet_synsets.txt``), which is what torchvision's ImageFolder gives on the full training set
and what every pretrained 1000-class model predicts. Labelling by name, not by the folders that happen to be
present, keeps the labels of a validation folder that lacks some classes (or holds a stray ``.ipynb_checkpoints``)
the same as training's. The transforms are the paper's: random resized crop 224 + flip for training, resize 256 +
centre crop 224 for testing, as 8-bit pixels scaled to [0, 1].
"""

from __future__ import annotations

import hashlib
import os
from functools import cache
from pathlib import Path

import torch
import torchvision.transforms as T
from torchvision.datasets import ImageFolder

from smoothcore.errors import DataError

SYNSETS_FILE = Path(__file__).with_name("imagenet_synsets.txt")
ENV = {"train": "IMAGENET_TRAIN_DIR", "test": "IMAGENET_TEST_DIR"}
SORT_HINT = (
    "ImageNet's folders hold one sub-folder per synset (n01440764/, n01443537/, ...); the validation images come "
    "in one flat folder and must be sorted into synset folders first (the devkit's ground truth, or a valprep script)"
)


@cache
def synset_index() -> dict[str, int]:
    """The 1000 ILSVRC-2012 synset ids -> class index (their sorted order)."""
    synsets = SYNSETS_FILE.read_text().split()
    if len(synsets) != 1000 or synsets != sorted(set(synsets)):
        raise DataError(f"{SYNSETS_FILE} is damaged: it must list the 1000 ILSVRC-2012 synsets, sorted")
    return {s: i for i, s in enumerate(synsets)}


def imagenet_classes(folder: Path) -> tuple[list[str], dict[str, int]]:
    """The synset folders under ``folder`` (hidden folders ignored) and their standard class indices."""
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        raise DataError(f"imagenet: cannot list {folder}: {exc.strerror or exc}") from None
    if not names:
        raise DataError(f"imagenet: {folder} holds no class folders", hint=SORT_HINT)
    index = synset_index()
    unknown = [n for n in names if n not in index]
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:3]) + (
            f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else ""
        )
        raise DataError(
            f"imagenet: {folder} holds folders that are not ILSVRC-2012 synsets: {shown}",
            hint="the imagenet dataset labels an image by its synset's index among the 1000 ILSVRC-2012 classes; "
            "for other class folders register a dataset plugin (docs/plugins.md)",
        )
    return names, {n: index[n] for n in names}


class ImageNetFolder(ImageFolder):
    """An ImageFolder over synset folders with standard labels, and a fingerprint of what it holds."""

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        return imagenet_classes(Path(directory))

    def fingerprint(self) -> str:
        """A digest of every image's path (relative to the folder) and label: another folder, a missing or added
        image or a relabelled one changes it. The images' bytes are not read (that would take minutes)."""
        h = hashlib.sha256()
        for path, label in self.samples:
            h.update(f"{os.path.relpath(path, self.root)}\t{label}\n".encode())
        return h.hexdigest()[:16]


def read_rgb(path: str):
    """The image at ``path`` in RGB (grayscale and CMYK JPEGs, which ImageNet has a few of, converted)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"imagenet: cannot read image {path}: {exc}") from None


def load_imagenet(split: str, data_dir: Path | None) -> ImageNetFolder:
    env = ENV[split]
    if data_dir is not None:
        folder, origin = Path(data_dir) / ("train" if split == "train" else "val"), "--data-dir"
    elif os.environ.get(env):
        folder, origin = Path(os.environ[env]), f"${env}"
    else:
        raise DataError(
            f"imagenet: ${env} is not set",
            hint=f"set ${env} to the folder of class sub-folders of JPEGs, or give --data-dir with train/ and val/",
        )
    if not folder.is_dir():
        raise DataError(f"imagenet: {folder} ({origin}) is not a folder")
    if split == "train":
        transform = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.PILToTensor()])
    else:
        transform = T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])
    dataset = ImageNetFolder(
        str(folder),
        transform=T.Compose([transform, T.ConvertImageDtype(torch.float32)]),
        loader=read_rgb,
        allow_empty=True,
    )
    if not dataset.samples:
        raise DataError(f"imagenet: the class folders in {folder} ({origin}) hold no images", hint=SORT_HINT)
    return dataset
