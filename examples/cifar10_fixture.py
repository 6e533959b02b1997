"""Write a small CIFAR-10 stand-in in the real `cifar-10-batches-py` format (python pickles of dicts with b'data'
(N, 3072) uint8 and b'labels'), so the whole CIFAR-10 pipeline can run on a machine without the dataset.

    python examples/cifar10_fixture.py data/cifar10-fixture [--per-batch 100] [--test 100]

The pixels are smooth random blobs per class (so that a model can learn something), not CIFAR images.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np


def images_for(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    out = np.empty((len(labels), 3, 32, 32), dtype=np.float64)
    for i, c in enumerate(labels):
        cy, cx = 0.2 + 0.6 * (c % 5) / 4, 0.3 + 0.4 * (c // 5)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.03)
        colour = np.array([(c * 37 % 10) / 9, (c * 53 % 10) / 9, (c * 71 % 10) / 9])[:, None, None]
        out[i] = 0.6 * blob[None] * colour + 0.2 + 0.15 * rng.standard_normal((3, 32, 32))
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8).reshape(len(labels), 3072)


def write(folder: Path, per_batch: int, test: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        labels = rng.integers(0, 10, n)
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels.tolist(),
            b"data": images_for(labels, rng),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return folder


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--per-batch", type=int, default=100)
    parser.add_argument("--test", type=int, default=100)
    args = parser.parse_args()
    print(write(args.folder, args.per_batch, args.test))
