"""The published certificates of Levine & Feizi (2021), reproduced from their stored statistics."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import smoothcore
from smoothcore.report import certified_accuracy_table, load_runs

DSSN_RUNS = {
    "cifar_split_derandomized_0.25": 0.25,
    "cifar_split_derandomized_1.0": 1.0,
    "cifar_split_derandomized_3.5": 3.5,
}
MC_RUNS = {
    "cifar_split_0.5": ("ssn", 0.5),
    "cifar_split_2.0": ("ssn", 2.0),
    "cifar_uniform_0.5": ("uniform", 0.5),
    "cifar_uniform_2.0": ("uniform", 2.0),
}
CIFAR_DIM = 3 * 32 * 32


@pytest.mark.parametrize("run,sigma", DSSN_RUNS.items())
def test_dssn_radii_and_predictions_are_reproduced_exactly_from_counts(golden, run, sigma):
    folder = golden / run
    noise = smoothcore.noise("dssn", sigma=sigma, dim=CIFAR_DIM, seed=0)
    counts = np.rint(np.load(folder / "preds.npy") * noise.num_draws).astype(np.int64)
    assert (counts.sum(axis=1) == noise.num_draws).all()
    prediction, radius = smoothcore.certify_counts(noise, torch.from_numpy(counts))
    assert np.array_equal(prediction.numpy(), np.load(folder / "predicted_labels.npy").astype(np.int64))
    published = np.load(folder / "radius_l1.npy").astype(np.float32)
    margin = radius.numpy() * 255.0  # the certificate is floor(...) / 255: an integer number of grey levels
    assert np.array_equal(margin, np.rint(margin))
    # bit for bit in the reference's float32 arithmetic (it multiplies by float32(1/255))
    assert np.array_equal(margin.astype(np.float32) * np.float32(1 / 255), published)


@pytest.mark.parametrize("sigma,levels", [(0.15, 132), (0.25, 220), (1.0, 883), (3.5, 3091)])
def test_dssn_draw_counts_match_the_paper(sigma, levels):
    assert smoothcore.noise("dssn", sigma=sigma, dim=4).num_draws == levels


@pytest.fixture(scope="module")
def cp_table():
    n = 100_000
    return smoothcore.clopper_pearson_lower(np.arange(n + 1), n, 0.001)


@pytest.mark.parametrize("run", MC_RUNS)
def test_monte_carlo_bounds_are_clopper_pearson_of_an_integer_count(golden, run, cp_table):
    """Each published p_lower is our two-sided Clopper-Pearson bound (n = 100,000, alpha = 0.001) of some
    count k, to float32 precision: the reference stored float32 values, about 5% of them one or two ulps off our
    rounding (consecutive k are about 167 ulps apart, so k is unique)."""
    published = np.load(golden / run / "prob_lb.npy").astype(np.float32)
    table32 = cp_table.astype(np.float32)
    k = np.clip(np.searchsorted(table32, published), 1, len(table32) - 1)
    nearest = np.where(np.abs(table32[k - 1] - published) < np.abs(table32[k] - published), k - 1, k)
    ulps = np.abs(table32[nearest] - published) / np.spacing(published)
    assert ulps.max() <= 2.0
    assert (ulps == 0).mean() > 0.94


@pytest.mark.parametrize("run", MC_RUNS)
def test_monte_carlo_radii_are_the_noise_formula_at_p_lower(golden, run):
    name, sigma = MC_RUNS[run]
    noise = smoothcore.noise(name, sigma=sigma, dim=CIFAR_DIM)
    assert noise.lambd == pytest.approx(sigma * math.sqrt(3))
    p = np.load(golden / run / "prob_lb.npy")
    published = np.load(golden / run / "radius_l1.npy")
    assert np.allclose(noise.radius(p), published, rtol=0, atol=3e-7)
    # bit for bit in the reference's float32 arithmetic
    p32 = p.astype(np.float32)
    assert np.array_equal(np.float32(2 * noise.lambd) * (p32 - np.float32(0.5)), published.astype(np.float32))


@pytest.mark.parametrize("run", MC_RUNS)
def test_monte_carlo_predictions_and_radii_come_from_our_standard_certificate(golden, run, cp_table):
    """Per image: the selection counts (64 draws) and the estimation count k recovered from prob_lb, through the
    standard certificate plugin, give the published radius where it is positive and abstain exactly where it is
    not, for all 10,000 images; the prediction is the published selection's top class. (The counts are built
    around that class, so the prediction check guards the plumbing, not the choice of class.)"""
    from smoothcore.certificates import Statistics, get_certificate

    name, sigma = MC_RUNS[run]
    noise = smoothcore.noise(name, sigma=sigma, dim=CIFAR_DIM)
    folder = golden / run
    selection = torch.from_numpy(np.rint(np.load(folder / "preds.npy") * 64).astype(np.int64))
    assert (selection.sum(dim=1) == 64).all()
    published_p = np.load(folder / "prob_lb.npy").astype(np.float32)
    table32 = cp_table.astype(np.float32)
    above = np.clip(np.searchsorted(table32, published_p), 1, len(table32) - 1)
    k = np.where(
        np.abs(table32[above - 1] - published_p) < np.abs(table32[above] - published_p), above - 1, above
    )
    top = selection.argmax(dim=1)
    rows = torch.arange(len(top))
    counts = torch.zeros(len(top), 10, dtype=torch.long)
    counts[rows, top] = torch.from_numpy(k)
    counts[rows, (top + 1) % 10] = 100_000 - torch.from_numpy(k)
    out = get_certificate("standard").certify(
        noise, Statistics(counts=counts, num_draws=100_000, selection=selection, alpha=0.001)
    )
    published_r = np.load(folder / "radius_l1.npy")
    certified = published_r > 0
    assert np.array_equal(out.prediction.numpy() >= 0, certified)
    published_top = np.argmax(
        np.load(folder / "preds.npy"), axis=1
    )  # the selection's top class, ties to the lowest
    assert np.array_equal(out.prediction.numpy()[certified], published_top[certified])
    assert np.allclose(out.radius.numpy()[certified], published_r[certified], rtol=0, atol=3e-6)


def published_table(golden) -> dict[str, list[float]]:
    text = (golden.parent / "README.md").read_text()
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^\| (cifar_\S+) \|(.*)\|$", line)
        if m:
            rows[m.group(1)] = [float(v) for v in m.group(2).split("|")]
    assert len(rows) == 7
    return rows


def test_report_gives_the_published_certified_accuracy_table(golden):
    expected = published_table(golden)
    runs = load_runs(sorted(golden.iterdir()))
    table = certified_accuracy_table(runs, [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4], envelope=False).set_index(
        "run"
    )
    for run, values in expected.items():
        got = table.loc[run, ["0", "0.5", "1", "1.5", "2", "2.5", "3", "3.5", "4"]].to_numpy(dtype=float)
        assert np.allclose(np.round(got, 2), values, atol=1e-9), run


def test_report_envelope_is_the_best_run_at_each_radius(golden):
    runs = load_runs(sorted(golden.iterdir()))
    table = certified_accuracy_table(runs, [0.5, 4.0])
    envelope = table.iloc[-1]
    assert envelope["0.5"] == pytest.approx(71.58)  # DSSN sigma 1.0
    assert envelope["4"] == pytest.approx(33.64)  # DSSN sigma 3.5, the paper's headline at radius 4
