"""Fewer forward passes, same guarantees: early decisions for exact DSSN and sequential Monte-Carlo."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import smoothcore
from smoothcore import SmoothedClassifier
from tests.conftest import quantised
from tests.test_certify import Threshold


def completions(remaining: int, classes: int):
    for split in itertools.product(range(remaining + 1), repeat=classes):
        if sum(split) == remaining:
            yield torch.tensor(split)


def test_a_decided_image_has_the_same_verdicts_under_every_completion():
    """Brute force over every way the remaining draws can fall (3 classes, up to 6 remaining): DSSN's
    ``decided`` and ``certify_counts`` (the exact certificate's rule)."""
    dssn = smoothcore.noise("dssn", sigma=0.5, dim=4)
    dssn_certificate, dssn_decided = dssn.certify_counts, dssn.decided
    rng = np.random.default_rng(0)
    radii = [1 / 255, 2 / 255, 4 / 255]
    checked = 0
    for _ in range(800):
        counts = torch.from_numpy(rng.integers(0, 12, size=(1, 3)))
        remaining = int(rng.integers(0, 7))
        finals = [counts + c for c in completions(remaining, 3)]
        outcomes = {
            (int(p), tuple(bool(r >= t) for t in radii))
            for p, r in ((lambda pr: (pr[0][0], pr[1][0]))(dssn_certificate(f)) for f in finals)
        }
        decided = bool(dssn_decided(counts, remaining, radii)[0])
        if decided:
            assert len(outcomes) == 1
            checked += 1
            pred, radius = dssn_certificate(counts, remaining)
            final_radii = [float(dssn_certificate(f)[1][0]) for f in finals]
            assert int(pred[0]) == next(iter(outcomes))[0]
            assert float(radius[0]) == min(final_radii)  # the recorded radius holds however the draws fall
        elif remaining == 0:
            pytest.fail("nothing remaining must always be decided")
    assert checked > 100


def test_early_dssn_gives_the_verdicts_and_certified_accuracy_of_full_enumeration():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    with torch.no_grad():
        model[1].weight.mul_(4)
    noise = smoothcore.noise("dssn", sigma=0.3, dim=64, seed=1)
    x = quantised((300, 1, 8, 8), seed=3)
    labels = torch.randint(0, 4, (300,))
    smoothed = SmoothedClassifier(model, noise, 4, max_batch=512)
    full = smoothed.certify(x)
    radii = [0.1, 0.2, 0.3, 0.5]
    early = smoothed.certify(x, radii=radii)
    assert torch.equal(early.prediction, full.prediction)
    for r in radii:
        verdict_full = (full.prediction == labels) & (full.radius >= r)
        verdict_early = (early.prediction == labels) & (early.radius >= r)
        assert torch.equal(verdict_full, verdict_early), r
    assert (early.radius <= full.radius).all()
    assert early.forward_passes < full.forward_passes
    assert (
        early.forward_passes == int(early.draws.sum()) and full.forward_passes_full == 300 * noise.num_draws
    )


def test_sequential_monte_carlo_keeps_coverage_at_level_alpha():
    """Toy classifier with known p_A = 0.9: the claimed p_lower exceeds it in at most ~alpha of the images,
    although most images stop after a fraction of the draws."""
    noise = smoothcore.noise("uniform", lambd=0.5, dim=1)
    p_true = 0.9
    smoothed = SmoothedClassifier(Threshold(0.5 - 0.5 + 2 * 0.5 * p_true), noise, 2, max_batch=8192)
    x = torch.full((400, 1), 0.5)
    alpha = 0.2
    radius_true = 2 * 0.5 * (p_true - 0.5)
    result = smoothed.certify(x, n0=16, n=2000, alpha=alpha, radii=[0.1, 0.3], looks=4)
    exceed = (result.p_lower > p_true).float().mean().item()
    assert exceed <= alpha + 0.05
    assert ((result.radius > radius_true).float().mean().item()) <= alpha + 0.05
    assert result.forward_passes < 0.7 * result.forward_passes_full  # the easy verdicts stop early
    assert set(result.draws.tolist()) <= {16 + 250, 16 + 500, 16 + 1000, 16 + 2000}


def test_sequential_monte_carlo_without_early_stops_spends_alpha_over_the_looks():
    noise = smoothcore.noise("uniform", lambd=0.5, dim=1)
    smoothed = SmoothedClassifier(Threshold(10.0), noise, 2)
    result = smoothed.certify(torch.full((2, 1), 0.5), n0=4, n=400, alpha=0.01, radii=[10.0], looks=3)
    # radius 10 is never reached (the radius is at most lambda = 0.5), so stopping is decided at the first look
    assert result.draws.tolist() == [4 + 100, 4 + 100]
    assert result.p_lower[0].item() == pytest.approx(smoothcore.clopper_pearson_lower(100, 100, 0.01 / 3))
