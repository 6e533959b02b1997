"""Report: certified accuracy, ACR, envelope, warnings about runs that should not be compared."""

from __future__ import annotations

import numpy as np
import pytest

from smoothcore.errors import ConfigError, DataError
from smoothcore.report import Run, certified_accuracy_table, comparability_warnings
from smoothcore.run_record import Certification


def run(name, labels, preds, radius, **recorded):
    return Run(
        name,
        np.array(labels),
        np.array(preds),
        np.array(radius, dtype=float),
        "l1",
        Certification(**recorded),
        np.arange(len(labels)),
    )


def reference_folder(tmp_path, radius, predicted):
    """A result folder in the reference implementation's layout, two images labelled 0 and 1."""
    folder = tmp_path / "ref"
    folder.mkdir()
    np.save(folder / "labels.npy", np.array([0, 1]))
    np.save(folder / "radius_l1.npy", np.array(radius))
    np.save(folder / "predicted_labels.npy", np.array(predicted))
    return folder


def test_certified_accuracy_counts_right_predictions_with_enough_radius():
    r = run("a", [0, 1, 2, 3], [0, 1, 2, -1], [0.5, 0.2, 0.0, np.nan])
    assert r.certified_accuracy([0.0, 0.2, 0.5, 0.6]).tolist() == [0.75, 0.5, 0.25, 0.0]
    assert r.average_certified_radius() == pytest.approx((0.5 + 0.2) / 4)


def test_envelope_takes_the_best_run_at_each_radius():
    a = run("a", [0, 0], [0, 0], [0.1, 0.1])
    b = run("b", [0, 0], [0, 1], [0.9, 0.9])
    table = certified_accuracy_table([a, b], [0.0, 0.5])
    assert table.iloc[-1]["0"] == 100.0 and table.iloc[-1]["0.5"] == 50.0


def test_warnings_for_runs_on_other_data_images_or_checkpoints():
    base = dict(
        dataset="fashion-mnist", noise={"name": "dssn", "sigma": 0.5}, certificate="exact", finished="x"
    )
    a = run("a", [0, 1], [0, 1], [0.1, 0.1], classifier_sha256="aa", test_fingerprint="f1", **base)
    b = run("b", [0, 1], [0, 1], [0.1, 0.1], classifier_sha256="bb", test_fingerprint="f2", **base)
    c = run("c", [0], [0], [0.1], dataset="cifar10", finished="x")
    warnings = " | ".join(comparability_warnings([a, b, c]))
    assert "different datasets" in warnings
    assert "different test data" in warnings
    assert "different images" in warnings
    assert "2 different classifier checkpoints" in warnings
    assert comparability_warnings([a, a]) == []


def test_warnings_for_stale_tables_unfinished_runs_and_mixed_monte_carlo_settings():
    noise = {"name": "ssn", "sigma": 0.5}
    stale = run(
        "stale", [0], [0], [0.1], noise=noise, classifier_sha256="old", n=1000, alpha=0.001, finished="x"
    )
    stale.manifest = {
        "checkpoint_sha256": "new"
    }  # the experiment's checkpoint was retrained after this certification
    fresh = run(
        "fresh", [0], [0], [0.1], noise=noise, classifier_sha256="new", n=1000, alpha=0.001, finished="x"
    )
    fresh.manifest = {"checkpoint_sha256": "new"}
    other_n = run(
        "other-n", [0], [0], [0.1], noise=noise, classifier_sha256="new", n=100, alpha=0.001, finished="x"
    )
    partial = run(
        "partial", [0], [0], [0.1], noise=noise, classifier_sha256="new", n=1000, alpha=0.001, num_images=10
    )
    warnings = " | ".join(comparability_warnings([stale, fresh, other_n, partial]))
    assert (
        "stale was certified with an earlier checkpoint" in warnings and "fresh was certified" not in warnings
    )
    assert "different Monte-Carlo settings (n=100, alpha=0.001; n=1000, alpha=0.001)" in warnings
    assert "partial is unfinished (1 of 10 images)" in warnings
    assert comparability_warnings([fresh]) == []


def test_exact_and_monte_carlo_runs_of_one_model_are_not_flagged_as_mixed_settings():
    noise = {"name": "dssn", "sigma": 0.5}
    exact = run(
        "exact",
        [0],
        [0],
        [0.1],
        noise=noise,
        classifier_sha256="m",
        certificate="exact",
        n=441,
        alpha=None,
        finished="x",
    )
    mc = run(
        "mc",
        [0],
        [0],
        [0.1],
        noise=noise,
        classifier_sha256="m",
        certificate="standard",
        n=100000,
        alpha=0.001,
        finished="x",
    )
    assert not any("Monte-Carlo settings" in w for w in comparability_warnings([exact, mc]))


def test_runs_accept_what_certify_returns_and_check_their_arguments():
    import torch

    from smoothcore import ConfigError, DataError
    from smoothcore.certify import CertifyResult

    result = CertifyResult(
        prediction=torch.tensor([0, 1, -1]),
        radius=torch.tensor([0.5, 0.2, float("nan")], dtype=torch.float64),
        norm="l1",
        certificate="exact",
    )
    r = Run.from_result("mine", result, torch.tensor([0, 0, 2]))
    assert r.certified_accuracy([0.0, 0.4]).tolist() == pytest.approx([1 / 3, 1 / 3])
    with pytest.raises(ConfigError, match="radii must be a list"):
        certified_accuracy_table([r], radii=0.5)
    with pytest.raises(DataError, match="2 labels, 3 predictions"):
        Run("bad", [0, 1], [0, 1, 2], [0.1, 0.2, 0.3])


def test_runs_stopped_early_are_flagged_as_lower_bounds_away_from_their_radii():
    early = run("early", [0, 1], [0, 1], [0.5, 0.1], radii=[0.5, 1.0])
    full = run("full", [0, 1], [0, 1], [0.6, 0.3])
    warnings = comparability_warnings([early, full])
    assert any(
        "early stopped each image early" in w and "0.5, 1.0" in w and "lower bound" in w for w in warnings
    )
    assert not any(w.startswith("full") for w in warnings)
    exact = run("e", [0], [0], [0.5], radii=[0.5], certificate_kind="exact")
    sequential = run("s", [0], [0], [0.5], radii=[0.5], certificate_kind="monte-carlo")
    said = " ".join(comparability_warnings([exact, sequential]))
    assert "is exact (full enumeration's) at those radii" in said and "holds at level alpha" in said


def test_load_runs_takes_one_path_as_well_as_a_list(tmp_path):
    from smoothcore.report import load_runs

    folder = reference_folder(tmp_path, [0.1, 0.2], [0, 0])
    assert [r.name for r in load_runs(str(folder))] == [r.name for r in load_runs([folder])] == ["ref"]


def test_damaged_duplicated_or_missing_rows_of_a_finished_table_are_reported(run_copy, fashion_dir):
    """report reads only rows whose checksum holds (and none after a bad one): it must say what it left out, and
    a table that lists an image twice or holds another number of images than it planned is flagged."""
    import shutil

    from smoothcore.report import load_runs
    from smoothcore.runner import CertifyConfig, certify_experiment

    certify_experiment(run_copy, CertifyConfig(limit=8, data_dir=str(fashion_dir), tag="t"))
    assert comparability_warnings(load_runs(run_copy / "certify_t.csv")) == []
    lines = (run_copy / "certify_t.csv").read_text().splitlines(keepends=True)
    for name, body in (
        ("damaged", lines[:4] + [lines[4].replace(",l1,", ",l2,")] + lines[5:]),
        ("twice", lines + lines[1:3]),
        ("short", lines[:6]),
    ):
        (run_copy / f"certify_{name}.csv").write_text("".join(body))
        shutil.copy(run_copy / "certify_t.json", run_copy / f"certify_{name}.json")
    warnings = "\n".join(
        comparability_warnings(
            load_runs([run_copy / f"certify_{n}.csv" for n in ("damaged", "twice", "short")])
        )
    )
    assert (
        "row 4 of certify_damaged.csv failed its checksum" in warnings and "the 4 row(s) after it" in warnings
    )
    assert "certify_twice.csv lists 2 image(s) more than once" in warnings
    assert "short holds 5 images, but its certification planned 8" in warnings
    assert "damaged holds 3 images, but its certification planned 8" in warnings


def test_the_plotted_envelope_is_taken_per_norm_like_the_tables():
    from smoothcore.report import envelopes

    l1a = Run("a", [0, 0], [0, 0], [0.5, 1.0], "l1")
    l1b = Run("b", [0, 0], [0, 1], [2.0, 2.0], "l1")
    l2 = Run("g", [0, 0], [0, 0], [9.0, 9.0], "l2")
    curves = envelopes([l1a, l1b, l2], [0.0, 1.0, 3.0])
    assert list(curves) == ["l1"]  # a norm with one run has no envelope
    assert curves["l1"].tolist() == [1.0, 0.5, 0.0]  # an L2 radius of 9 never lifts the L1 envelope


def test_runs_stopped_early_at_the_same_radii_share_one_warning():
    runs = [run(f"r{i}", [0], [0], [0.5], radii=[0.5], certificate_kind="exact") for i in range(5)]
    said = [w for w in comparability_warnings(runs) if "stopped each image early" in w]
    assert len(said) == 1 and said[0].startswith("5 runs (r0, r1, r2, ...)")


def test_a_sweeps_folder_reports_every_experiment_folder_in_it(run_copy, tmp_path):
    from smoothcore.report import load_runs
    from smoothcore.runner import CertifyConfig, certify_experiment

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    for name in ("b_run", "a_run"):
        (sweep / name).symlink_to(run_copy, target_is_directory=True)
    certify_experiment(run_copy, CertifyConfig(limit=2, tag="t"))
    assert [r.name for r in load_runs(sweep)] == ["a_run/t", "b_run/t"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="one folder down"):
        load_runs(tmp_path / "empty")


def test_markdown_and_latex_tables_carry_the_numbers_of_the_table():
    from smoothcore.report import to_latex, to_markdown

    a = run("plain_run", [0, 0, 1], [0, 0, 1], [0.3, 0.6, 0.0])
    b = run("stab_run", [0, 0, 1], [0, 1, 1], [0.9, 0.9, 0.9])
    table = certified_accuracy_table([a, b], [0.0, 0.5])
    md = to_markdown(table).splitlines()
    assert md[0] == "| run | norm | images | 0 | 0.5 | ACR |"
    assert md[1] == "| --- | --- | ---: | ---: | ---: | ---: |"
    assert md[2] == "| plain_run | l1 | 3 | 100.0 | 33.3 | 0.300 |"
    assert md[-1] == "| envelope (best run) | l1 | 3 | 100.0 | 66.7 | 0.600 |"
    tex = to_latex(table, caption="50% & more")
    assert r"\begin{tabular}{llrrrr}" in tex and r"\caption{50\% \& more}" in tex
    assert r"plain\_run & l1 & 3 & \textbf{100.0} & 33.3 & 0.300 \\" in tex
    assert r"stab\_run & l1 & 3 & 66.7 & \textbf{66.7} & \textbf{0.600} \\" in tex


@pytest.mark.parametrize(
    "fmt,first", [("markdown", "| run | norm | images | 0 | 0.5 | ACR |"), ("latex", r"\begin{table}[t]")]
)
def test_report_prints_markdown_and_latex(tmp_path, fmt, first):
    from click.testing import CliRunner

    from smoothcore.cli import cli

    folder = reference_folder(tmp_path, [0.6, 0.2], [0, 1])
    result = CliRunner().invoke(cli, ["report", str(folder), "--radii", "0,0.5", "--format", fmt])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == first and "100.0" in result.output and "50.0" in result.output


def test_plot_labels_runs_readably_and_writes_vector_or_png_at_the_dpi(tmp_path):
    from smoothcore.figures import plot, run_label

    dssn = run(
        "sweep_dssn_sigma0.5_stab/paper", [0, 1], [0, 1], [0.3, 0.6], noise={"name": "dssn", "sigma": 0.5}
    )
    box = run("u/box", [0, 1], [0, 1], [0.2, 0.1], noise={"name": "uniform", "sigma": 1.0}, certificate="box")
    assert run_label(dssn) == "DSSN \N{GREEK SMALL LETTER SIGMA}=0.5, stability"
    assert run_label(box) == "uniform \N{GREEK SMALL LETTER SIGMA}=1, box"
    assert run_label(box, {"box": "ours"}) == "ours" and run_label(run("bare", [0], [0], [0.1])) == "bare"
    svg = plot([dssn, box], tmp_path / "f.svg", labels={"u/box": "uniform + box"}).read_text()
    assert "uniform + box" in svg and "best over runs" in svg
    from PIL import Image

    with Image.open(plot([dssn, box], tmp_path / "f.png", dpi=100)) as image:
        assert image.size == (700, 450)
    with pytest.raises(ConfigError, match="dpi"):
        plot([dssn], tmp_path / "g.png", dpi=5)


def test_report_takes_plot_labels_and_refuses_malformed_ones(tmp_path):
    from click.testing import CliRunner

    from smoothcore.cli import cli

    folder = reference_folder(tmp_path, [0.6, 0.2], [0, 1])
    ok = CliRunner().invoke(
        cli, ["report", str(folder), "--plot", str(tmp_path / "a.svg"), "--label", "ref=Mine"]
    )
    assert ok.exit_code == 0, ok.output
    assert "Mine" in (tmp_path / "a.svg").read_text()
    bad = CliRunner().invoke(
        cli, ["report", str(folder), "--plot", str(tmp_path / "b.svg"), "--label", "ref"]
    )
    assert bad.exit_code == 2 and "RUN=TEXT" in bad.output and not (tmp_path / "b.svg").exists()
