"""smoothcore-pareto's tests: the plugin kit of smoothcore, plus what is particular to this noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import smoothcore
import torch
from scipy import stats
from smoothcore.testing import NoisePluginSuite

import smoothcore_pareto


class TestParetoNoise(NoisePluginSuite):
    """The whole kit: registration, shapes, dtypes, devices, seeds, validation, radius, audit on toy
    models."""

    noise_name = "pareto"
    sigma = 0.5
    plugin = smoothcore_pareto  # registered for the tests when the entry point is not loaded


class TestParetoWithAHeavierTail(NoisePluginSuite):
    noise_name = "pareto"
    sigma = 0.5
    params = {"tail": 2.5}
    plugin = smoothcore_pareto


@pytest.fixture(autouse=True)
def _registered():
    suite = TestParetoNoise()
    suite.setup_method()
    yield
    suite.teardown_method()


def pareto(**kwargs) -> smoothcore_pareto.ParetoNoise:
    return smoothcore.noise("pareto", **{"sigma": 0.5, "dim": 4, **kwargs})


def test_the_magnitudes_are_lomax_with_the_documented_scale():
    """|Z| has survival function (1 + z / s)^-a with s = sigma sqrt((a - 1)(a - 2) / 2) (s = sigma at a =
    3)."""
    noise = pareto(sigma=0.5)
    assert noise.scale == pytest.approx(0.5)
    z = noise.sample(torch.zeros(50_000, 4), torch.Generator().manual_seed(0)).flatten().double().numpy()
    result = stats.kstest(np.abs(z), lambda t: 1.0 - (1.0 + t / noise.scale) ** -noise.tail)
    assert result.pvalue > 1e-3
    assert abs(np.mean(z > 0) - 0.5) < 0.01, "the sign is symmetric"


def test_the_density_is_log_lipschitz_in_l1_with_the_constant_behind_the_radius():
    noise = pareto(sigma=0.7, tail=4.0)

    def log_density(z: np.ndarray) -> np.ndarray:
        a, s = noise.tail, noise.scale
        return np.sum(np.log(a / (2 * s)) - (a + 1) * np.log1p(np.abs(z) / s), axis=-1)

    rng = np.random.default_rng(0)
    z = rng.standard_cauchy((20_000, 4)) * noise.scale
    z2 = z + rng.normal(0, noise.scale, z.shape) * rng.random((20_000, 1))
    ratio = np.abs(log_density(z) - log_density(z2)) / np.abs(z - z2).sum(axis=1)
    assert ratio.max() <= noise.lipschitz() * (1 + 1e-9)
    assert ratio.max() > 0.9 * noise.lipschitz(), "the constant is the best one (attained near z = 0)"


def test_the_radius_never_exceeds_the_exact_one_dimensional_robust_radius():
    """For the classifier [z_1 < t] the smoothed prediction flips exactly when x_1 moves by F^-1(p): every
    sound L1 radius must stay below it."""
    for tail in (2.2, 3.0, 6.0):
        noise = pareto(tail=tail)
        p = np.linspace(0.5, 0.9999, 500)
        exact = noise.scale * ((2 * (1 - p)) ** (-1 / tail) - 1)
        assert np.all(noise.radius(p) <= exact + 1e-12)


def test_sigma_is_the_scale_and_the_tail_must_give_a_finite_variance():
    with pytest.raises(smoothcore.ConfigError, match="not lambda"):
        smoothcore.noise("pareto", lambd=0.5, dim=4)
    with pytest.raises(smoothcore.ConfigError, match="tail must be a finite number > 2"):
        pareto(tail=2.0)
    assert pareto(sigma=1.0, tail=4.0).scale == pytest.approx(math.sqrt(3.0))
    assert pareto().params() == {"name": "pareto", "sigma": 0.5, "tail": 3.0, "scale": 0.5, "seed": 0}
