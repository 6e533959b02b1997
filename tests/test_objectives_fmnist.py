"""The training-objectives experiment on Fashion-MNIST (recipes/objectives-fmnist.toml): the committed recipe, the
committed result tables under results/objectives-fmnist, and the README's table, which must be what `smoothcore
report` gives for them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from smoothcore.fileio import read_json
from smoothcore.report import certified_accuracy_table, load_runs
from smoothcore.results import read_valid
from smoothcore.sweep import Sweep, expand
from tests.conftest import attacked_rows_cover_the_correct_images

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "objectives-fmnist.toml"
RESULTS = ROOT / "results" / "objectives-fmnist"
OBJECTIVES = ("plain", "stab", "consistency", "macer")
RUNS = [f"{group}_{o}" for group in ("dssn_sigma0.5", "dssn_sigma2", "ssn_sigma1") for o in OBJECTIVES]
RADII = [0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2]
README_SECTION = "## Training objectives beyond the paper"


def test_the_recipe_expands_to_four_objectives_on_the_same_model_epochs_and_data():
    specs = expand(Sweep.from_file(RECIPE))
    assert [s.name for s in specs] == RUNS
    for spec in specs:
        train = spec.train
        assert (train.dataset, train.model, train.epochs, train.batch_size, train.lr) == (
            "fashion-mnist",
            "cnn",
            8,
            128,
            0.1,
        )
        assert train.objective == {"stab": "stability"}.get(
            spec.name.rsplit("_", 1)[1], spec.name.rsplit("_", 1)[1]
        )
        assert (spec.certify.skip, spec.certify.limit, spec.certify.tag) == (10, 1000, "objectives")
    macer = [s for s in specs if s.train.objective == "macer"]
    assert all(s.train.objective_params == {"draws": 4} for s in macer)


@pytest.mark.parametrize("name", RUNS)
def test_each_committed_table_is_finished_and_every_row_passes_its_checksum(name):
    folder = RESULTS / name
    frame, _, discarded = read_valid(folder / "certify_objectives.csv")
    meta = read_json(folder / "certify_objectives.json")
    assert discarded == 0
    assert meta["finished"] and meta["num_images"] == len(frame) == 1000
    assert frame["index"].tolist() == list(range(0, 10_000, 10))
    assert (folder / "config.json").exists() and (folder / "train_log.csv").exists()
    assert not list(folder.glob("*.pt")), "weights are not committed"


def test_the_readme_table_is_what_report_gives_for_the_committed_tables():
    text = (ROOT / "README.md").read_text()
    section = text[text.index(README_SECTION) :]
    rows = {}
    for line in section.splitlines()[1:]:
        if line.startswith("## "):
            break
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] in RUNS:
            rows[cells[0]] = [float(c) for c in cells[1 : 2 + len(RADII)]]
    assert sorted(rows) == sorted(RUNS)
    runs = load_runs([RESULTS / name / "certify_objectives.csv" for name in RUNS])
    table = certified_accuracy_table(runs, RADII, envelope=False)
    for name, (_, row) in zip(RUNS, table.iterrows()):
        expected = [round(row[f"{r:g}"], 1) for r in RADII] + [round(row["ACR"], 3)]
        assert rows[name] == expected, name
    assert re.search(r"MACER", section)


ATTACKED = ("dssn_sigma0.5_plain", "dssn_sigma2_plain", "ssn_sigma1_plain")
ATTACK_RADII = [0.25, 0.5, 1, 2, 4, 8, 16]
ATTACK_SECTION = "### The Fashion-MNIST models of the paper's experiment"


@pytest.mark.parametrize("name", ATTACKED)
def test_each_attack_table_covers_the_correct_images_of_the_first_hundred_and_every_flip_is_verified(name):
    folder = RESULTS / name
    rows = attacked_rows_cover_the_correct_images(
        folder / "attack_objectives.csv", folder / "certify_objectives.csv"
    )
    assert rows["flip_norm"].notna().all() and (rows["flip_norm"] > 0).all()
    assert rows["evidence"].str.len().gt(0).all()


def test_the_readme_attack_table_is_what_report_gives_for_the_committed_tables():
    from smoothcore.report import robustness_rows

    text = (ROOT / "README.md").read_text()
    section = text[text.index(ATTACK_SECTION) :]
    shown = {}
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].split("/")[0] in ATTACKED:
            shown[cells[0].split("/")[0], cells[1]] = [float(c) for c in cells[3:]]
    assert len(shown) == 3 * len(ATTACKED)
    table = robustness_rows(load_runs([RESULTS / name for name in ATTACKED]), ATTACK_RADII)
    for _, row in table.iterrows():
        expected = [round(float(row[f"{r:g}"]), 1) for r in ATTACK_RADII]
        assert shown[row["run"].split("/")[0], row["bound"]] == expected, (row["run"], row["bound"])
