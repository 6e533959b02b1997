"""The README's attack table for the demo model is what the committed tables under results/demo-attack give: the
certified table of `make demo`'s run and the attack table `smoothcore attack checkpoints/demo` wrote for it."""

from __future__ import annotations

from pathlib import Path

from smoothcore.report import load_runs, robustness_rows
from tests.conftest import attacked_rows_cover_the_correct_images

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "demo-attack"
COMMAND = "smoothcore attack checkpoints/demo --limit 100 --radii "
ROWS = {
    "certified accuracy (lower bound)": "certified",
    "empirical robust accuracy (upper bound)": "empirical",
    "gap": "gap",
}


def readme_table() -> tuple[list[float], dict[str, list[float]]]:
    text = (ROOT / "README.md").read_text()
    start = text.index(COMMAND)
    radii = [float(r) for r in text[start + len(COMMAND) :].split()[0].split(",")]
    shown = {}
    for line in text[start:].splitlines()[1:]:
        if line.startswith("#") or line.startswith("!["):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] in ROWS:
            shown[ROWS[cells[0]]] = [float(c) for c in cells[1:]]
    return radii, shown


def test_the_readme_demo_attack_table_is_what_the_committed_tables_give():
    radii, shown = readme_table()
    assert set(shown) == {"certified", "empirical", "gap"}
    table = robustness_rows(load_runs([RESULTS]), radii)
    assert len(table) == 3
    for _, row in table.iterrows():
        expected = [round(float(v), 1) for v in row.iloc[3:]]
        assert shown[row["bound"]] == expected, row["bound"]


def test_the_demo_attack_table_covers_the_correct_images_of_the_first_hundred_and_every_flip_is_verified():
    rows = attacked_rows_cover_the_correct_images(
        RESULTS / "attack_dssn_sigma0.5.csv", RESULTS / "certify_dssn_sigma0.5.csv"
    )
    flipped = rows[rows["flip_norm"].notna()]
    assert (flipped["flip_norm"] > 0).all()
    assert flipped["evidence"].str.startswith("exact counts over all 441 draws predict").all()
    assert (flipped["flip_class"] != flipped["prediction"]).all()
