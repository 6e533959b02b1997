"""Sweeps of the paper's grid, on a CIFAR-10 fixture in the real cifar-10-batches-py format."""

from __future__ import annotations

import json

from click.testing import CliRunner

from smoothcore.cli import cli
from smoothcore.sweep import PAPER_SIGMAS, Sweep, expand
from tests.plugins.test_datasets import write_cifar_fixture


def test_the_paper_grid_has_90_runs():
    specs = expand(Sweep())
    assert len(specs) == 3 * 15 * 2 and len(PAPER_SIGMAS) == 15
    first = specs[0]
    assert first.name == "uniform_sigma0.15_plain"
    assert (first.train.epochs, first.train.batch_size, first.train.lr) == (
        120,
        64,
        0.1,
    )  # the reference recipe


def test_sweep_trains_certifies_reports_and_skips_what_is_done(tmp_path):
    data = write_cifar_fixture(tmp_path / "cifar-10-batches-py", n_per_batch=16)
    args = [
        "sweep",
        "--dataset",
        "cifar10",
        "--data-dir",
        str(data),
        "--model",
        "cnn",
        "--noises",
        "dssn,uniform",
        "--sigmas",
        "0.25",
        "--stability",
        "both",
        "--epochs",
        "1",
        "--train-option",
        "batch_size=16",
        "--train-option",
        "eval_limit=8",
        "--certify-option",
        "limit=3",
        "--certify-option",
        "n0=8",
        "--certify-option",
        "n=40",
        "--out",
        str(tmp_path / "sweep"),
        "--radii",
        "0,0.25",
    ]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    for name in (
        "dssn_sigma0.25_plain",
        "dssn_sigma0.25_stab",
        "uniform_sigma0.25_plain",
        "uniform_sigma0.25_stab",
    ):
        assert json.loads((tmp_path / "sweep" / name / "certify_sweep.json").read_text())["finished"]
    assert "best over sigma: dssn, stab" in first.output and "uniform_sigma0.25_plain" in first.output
    stamp = (tmp_path / "sweep" / "dssn_sigma0.25_plain" / "checkpoint.pt").stat().st_mtime_ns
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert again.output.count("training complete, certification complete") == 4
    assert (tmp_path / "sweep" / "dssn_sigma0.25_plain" / "checkpoint.pt").stat().st_mtime_ns == stamp


def test_recipe_files_are_checked(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"dataset": "cifar10", "sigma": [0.5]}))
    result = CliRunner().invoke(cli, ["sweep", "--recipe", str(tmp_path / "r.json"), "--dry-run"])
    assert result.exit_code == 2 and "unknown recipe keys sigma" in result.output
