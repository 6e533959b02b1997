"""Shared fixtures. Data fixtures are written by the tests themselves in the real on-disk formats; the real
Fashion-MNIST (fetched by `make test` / `make data`) is used for the end-to-end tests."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

import smoothcore.plugins

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT.parent / "shared" / "golden" / "levine-feizi-2021"
FASHION_CANDIDATES = [ROOT / "data" / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist")]

os.environ.setdefault(
    "SMOOTHCORE_LOAD_PLUGINS", ""
)  # third-party plugins installed on the machine stay out of the suite
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Property tests draw the same examples on every run (derandomized: seeded from each test's own code) and have no
# deadline, so a busy machine cannot fail them and the suite's time does not vary from run to run.
# SMOOTHCORE_HYPOTHESIS_PROFILE=explore draws fresh random examples instead (a deeper, local search).
FIXED_PROFILE = "fixed"
settings.register_profile(
    FIXED_PROFILE,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "explore",
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("SMOOTHCORE_HYPOTHESIS_PROFILE", FIXED_PROFILE))


@pytest.fixture(autouse=True)
def _fresh_plugins():
    smoothcore.plugins.reset()
    yield
    smoothcore.plugins.reset()


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    for d in FASHION_CANDIDATES:
        if (d / "t10k-labels-idx1-ubyte.gz").is_file():
            return d
    pytest.fail(
        "Fashion-MNIST is missing: run `make data` (make test does it) to fetch the Debian package into ./data"
    )


@pytest.fixture(scope="session")
def golden() -> Path:
    if not GOLDEN.is_dir():
        pytest.fail(f"the golden data is missing: expected {GOLDEN}")
    return GOLDEN


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes, gzip-compressed, exactly as the MNIST/Fashion-MNIST files are."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_idx_dir(tmp_path) -> Path:
    """A Fashion-MNIST-format folder with 64 training and 32 test images (random pixels, labels 0..9)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "tiny-fmnist"
    folder.mkdir()
    for prefix, n in (("train", 64), ("t10k", 32)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return folder


def quantised(shape, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g).float() / 255.0


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, fashion_dir) -> Path:
    """A small CNN trained for one epoch on 3,000 real Fashion-MNIST images under DSSN noise (sigma 0.25)."""
    from smoothcore.train import TrainConfig, train_classifier

    smoothcore.plugins.reset()
    out = tmp_path_factory.mktemp("trained") / "fmnist-dssn"
    cfg = TrainConfig(
        dataset="fashion-mnist",
        data_dir=str(fashion_dir),
        model="cnn",
        noise="dssn",
        sigma=0.25,
        epochs=1,
        batch_size=64,
        lr=0.05,
        train_limit=3000,
        eval_limit=200,
        seed=0,
    )
    train_classifier(cfg, out)
    return out


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A private copy of the trained experiment folder (tests write results into it)."""
    import shutil

    dest = tmp_path / trained_run.name
    shutil.copytree(trained_run, dest)
    return dest


def find_uv() -> str:
    """The uv that `make` uses: on PATH, else the project's .tools/ (where `make env` bootstraps it), else
    ~/.local/bin."""
    import shutil

    found = shutil.which("uv") or next(
        (
            str(p)
            for p in (ROOT / ".tools" / "bin" / "uv", Path.home() / ".local" / "bin" / "uv")
            if p.exists()
        ),
        None,
    )
    if found is None:
        pytest.fail("uv is missing: `make env` installs it into .tools/")
    return found


def attacked_rows_cover_the_correct_images(attack_csv: Path, certify_csv: Path, limit: int = 100):
    """The rows of a committed attack table: asserted to be exactly the correctly classified images among the
    certified table's first ``limit``."""
    import pandas as pd

    from smoothcore.results import read_valid

    attacked = pd.read_csv(attack_csv)
    certified, _, _ = read_valid(certify_csv)
    first = certified.head(limit)
    correct = first[(first["prediction"] == first["label"]) & (first["prediction"] >= 0)]
    rows = attacked[attacked["attacked"]] if "attacked" in attacked else attacked
    assert sorted(rows["index"]) == sorted(correct["index"])
    return rows
