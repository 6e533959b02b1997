"""Sweeps of the paper's grid, on a CIFAR-10 fixture in the real cifar-10-batches-py format."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from smoothcore import ConfigError
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
    # certifying more images extends the finished tables; other options are refused, not shown as done
    args = [a if a != "limit=3" else "limit=5" for a in args]
    more = CliRunner().invoke(cli, args)
    assert more.exit_code == 0, more.output
    assert more.output.count("training complete, certification partial") == 4
    assert len(pd.read_csv(tmp_path / "sweep" / "uniform_sigma0.25_stab" / "certify_sweep.csv")) == 5
    for changed, says in (("batch_size=8", "batch_size: was 16, now 8"), ("n=80", "n: was 40, now 80")):
        option = "--train-option" if "batch" in changed else "--certify-option"
        refused = CliRunner().invoke(cli, [*args, option, changed])
        assert refused.exit_code == 2 and says in refused.output, refused.output
        assert "Traceback" not in refused.output


def test_recipe_files_are_checked(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"dataset": "cifar10", "sigma": [0.5]}))
    result = CliRunner().invoke(cli, ["sweep", "--recipe", str(tmp_path / "r.json"), "--dry-run"])
    assert result.exit_code == 2 and "unknown recipe keys sigma" in result.output


def _dry_run(tmp_path, recipe: dict | None = None, *args: str):
    cmd = ["sweep", "--dry-run", "--out", str(tmp_path / "sweep"), *args]
    if recipe is not None:
        (tmp_path / "r.json").write_text(json.dumps(recipe))
        cmd += ["--recipe", str(tmp_path / "r.json")]
    return CliRunner().invoke(cli, cmd)


def test_recipe_values_are_checked_before_anything_runs(tmp_path):
    # a string where a list belongs would otherwise be split into characters ("dssn" -> d, s, s, n)
    bad = [
        ({"noises": "dssn"}, "noises must be a non-empty list of noise names, got 'dssn'"),
        ({"noises": ["dssn"], "sigmas": "0.5"}, "sigmas must be a non-empty list of positive numbers"),
        ({"noises": ["dssn"], "sigmas": [0.5, -1]}, "sigmas must be a non-empty list of positive numbers"),
        ({"noises": ["nosuch"]}, "unknown noise 'nosuch' in the sweep; available: dssn"),
        ({"noises": ["dssn"], "stability": "yes"}, "stability must be true/false"),
        ({"noises": ["dssn"], "train": ["epochs", 1]}, "train must be a mapping"),
        ({"noises": ["dssn"], "train": {"epochs": 0}}, "epochs must be a positive integer, got 0"),
        ({"noises": ["dssn"], "certify": {"n": 0}}, "n must be a positive integer, got 0"),
        ({"noises": ["dssn"], "certify": {"alpha": "abc"}}, "alpha must be in (0, 1), got 'abc'"),
    ]
    for recipe, message in bad:
        result = _dry_run(tmp_path, recipe)
        assert result.exit_code != 0 and message in result.output, (recipe, result.output)
        assert "Traceback" not in result.output and not (tmp_path / "sweep").exists()


def test_stability_takes_the_cli_words_in_a_recipe_too(tmp_path):
    for value, runs in (
        ("plain", ["plain"]),
        (["stab"], ["stab"]),
        ("both", ["plain", "stab"]),
        ([False], ["plain"]),
    ):
        result = _dry_run(tmp_path, {"noises": ["dssn"], "sigmas": [0.5], "stability": value})
        assert result.exit_code == 0, result.output
        assert f"sweep of {len(runs)} runs" in result.output
        for kind in ("plain", "stab"):
            assert (f"dssn_sigma0.5_{kind}" in result.output) == (kind in runs), (value, result.output)


def test_cli_options_are_checked_by_the_dry_run(tmp_path):
    result = _dry_run(tmp_path, None, "--noises", "nosuch")
    assert result.exit_code != 0 and "unknown noise 'nosuch'" in result.output
    result = _dry_run(tmp_path, None, "--noises", "dssn", "--epochs", "0")
    assert result.exit_code != 0 and "epochs must be a positive integer, got 0" in result.output
    result = _dry_run(
        tmp_path, None, "--noises", "dssn", "--sigmas", "0.5", "--certify-option", "radii=0.5,1"
    )
    assert result.exit_code == 0 and "sweep of 2 runs" in result.output
    specs = expand(Sweep(noises=["dssn"], sigmas=[0.5], stability=["plain"], certify={"radii": "0.5,1"}))
    assert specs[0].certify.radii == [0.5, 1.0]


def test_recipes_take_the_commands_option_names_at_the_top_level(tmp_path):
    """`epochs`, `batch-size`, `n`, `max-batch` as on the command lines; an option of both commands goes to both."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        'dataset = "fashion-mnist"\nmodel = "cnn"\nnoises = ["dssn"]\nsigmas = [0.5]\nstability = "plain"\n'
        'epochs = 3\nbatch-size = 32\nn = 5000\nmax-batch = 256\ndevice = "cpu"\n[train]\nweight-decay = 0.001\n'
    )
    spec = expand(Sweep.from_file(recipe))[0]
    assert (spec.train.epochs, spec.train.batch_size, spec.train.weight_decay, spec.train.device) == (
        3,
        32,
        0.001,
        "cpu",
    )
    assert (spec.certify.n, spec.certify.max_batch, spec.certify.device) == (5000, 256, "cpu")
    recipe.write_text('noises = ["dssn"]\nepoch = 3\n')
    with pytest.raises(ConfigError, match="unknown recipe keys epoch"):
        Sweep.from_file(recipe)
