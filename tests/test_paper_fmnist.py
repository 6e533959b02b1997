"""The paper's experiment on Fashion-MNIST (recipes/paper-fmnist.toml): the committed recipe, the committed result
tables under results/paper-fmnist, and the README's tables, which must be what `smoothcore report` gives for them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from smoothcore.cli import cli
from smoothcore.fileio import read_json
from smoothcore.report import certified_accuracy_table, load_runs
from smoothcore.results import read_valid
from smoothcore.sweep import Sweep, expand

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "paper-fmnist.toml"
RESULTS = ROOT / "results" / "paper-fmnist"
SIGMAS = ("0.25", "0.5", "1", "2", "3.5")
RUNS = [f"dssn_sigma{s}_{t}" for s in SIGMAS for t in ("plain", "stab")] + [
    f"{noise}_sigma{s}_plain" for noise in ("ssn", "uniform") for s in SIGMAS
]
README_SECTION = "## The paper's experiment on Fashion-MNIST"


@pytest.fixture(scope="module")
def specs():
    return expand(Sweep.from_file(RECIPE))


def test_the_recipe_expands_to_the_papers_grid_at_its_protocol(specs):
    assert [s.name for s in specs] == RUNS
    for spec in specs:
        assert spec.path == Path("checkpoints/paper-fmnist") / spec.name
        assert (spec.train.dataset, spec.train.model, spec.train.epochs) == ("fashion-mnist", "cnn", 8)
        assert spec.train.stability == spec.name.endswith("_stab")
        cert = spec.certify
        assert (cert.skip, cert.limit, cert.n0, cert.alpha, cert.tag) == (10, 1000, 64, 0.001, "paper")


def test_dry_run_lists_exactly_the_recipes_runs(tmp_path):
    result = CliRunner().invoke(
        cli, ["sweep", "--recipe", str(RECIPE), "--out", str(tmp_path / "p"), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    listed = re.findall(r"\[(\d+)/20\] (\S+): training new, certification new", result.output)
    assert [name for _, name in listed] == RUNS
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("name", RUNS)
def test_each_committed_table_is_finished_and_every_row_passes_its_checksum(name):
    folder = RESULTS / name
    frame, _, discarded = read_valid(folder / "certify_paper.csv")
    meta = read_json(folder / "certify_paper.json")
    assert discarded == 0
    assert meta["finished"] and meta["num_images"] == len(frame) == 1000
    assert frame["index"].tolist() == list(range(0, 10_000, 10))
    assert (folder / "config.json").exists() and (folder / "train_log.csv").exists()
    assert not list(folder.glob("*.pt")), "weights are not committed"


def _readme_table(title: str) -> dict[str, list[float]]:
    """Rows of the README table that follows the line ``title`` in the paper section: run -> numbers."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(README_SECTION) :]
    lines = section[section.index(title) :].splitlines()[1:]
    rows = {}
    for line in lines:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        if re.fullmatch(r"[\d.]+", cells[-1]):
            rows[cells[0]] = [float(c) for c in cells[1:]]
    return rows


def test_the_readme_per_run_table_is_what_report_gives_for_the_committed_tables():
    runs = load_runs([RESULTS / name / "certify_paper.csv" for name in RUNS])
    readme = _readme_table("Per run (certified accuracy in % at each L1 radius, ACR):")
    assert sorted(readme) == sorted(RUNS)
    radii = [0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 3.5, 4]
    table = certified_accuracy_table(runs, radii, envelope=False)
    for name, (_, row) in zip(RUNS, table.iterrows()):
        expected = [round(row[f"{r:g}"], 1) for r in radii] + [round(row["ACR"], 3)]
        assert readme[name] == expected, name


def test_the_readme_envelope_is_the_best_run_of_each_noise_and_training():
    from smoothcore.sweep import group_of

    runs = load_runs([RESULTS / name / "certify_paper.csv" for name in RUNS])
    radii = [0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 3.5, 4]
    table = certified_accuracy_table(runs, radii, envelope=False)
    table["group"] = [group_of(name) for name in RUNS]
    readme = _readme_table("Best over sigma")
    assert sorted(readme) == ["dssn, plain", "dssn, stab", "ssn, plain", "uniform, plain"]
    for group, rows in table.groupby("group"):
        expected = [round(rows[f"{r:g}"].max(), 1) for r in radii] + [round(rows["ACR"].max(), 3)]
        assert readme[group] == expected, group
