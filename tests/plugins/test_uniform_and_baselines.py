import math

import numpy as np
import pytest
import torch
from scipy.stats import kstest, laplace, norm

import smoothcore
from smoothcore import ConfigError


def draws_of(name: str, sigma: float, n: int = 100_000) -> np.ndarray:
    noise = smoothcore.noise(name, sigma=sigma, dim=1)
    x = torch.full((n, 1), 0.5)
    return (noise.sample(x, torch.Generator().manual_seed(0)) - 0.5).squeeze(1).double().numpy()


def test_uniform_noise_is_uniform_on_minus_lambda_lambda():
    e = draws_of("uniform", 0.4)
    lam = 0.4 * math.sqrt(3)
    assert e.min() >= -lam and e.max() <= lam
    assert kstest(e, "uniform", args=(-lam, 2 * lam)).pvalue > 1e-3
    assert e.std() == pytest.approx(0.4, rel=0.01)


def test_gaussian_noise_has_standard_deviation_sigma():
    e = draws_of("gaussian", 0.25)
    assert kstest(e, norm(scale=0.25).cdf).pvalue > 1e-3


def test_laplace_noise_has_scale_sigma_over_root_two():
    e = draws_of("laplace", 0.5)
    assert kstest(e, laplace(scale=0.5 / math.sqrt(2)).cdf).pvalue > 1e-3
    assert e.std() == pytest.approx(0.5, rel=0.02)


def test_radius_formulas_follow_the_spec():
    lam = 0.5 * math.sqrt(3)
    assert smoothcore.noise("uniform", sigma=0.5, dim=10).radius(0.9) == pytest.approx(2 * lam * 0.4)
    assert smoothcore.noise("ssn", sigma=0.5, dim=10).radius(0.9) == pytest.approx(2 * lam * 0.4)
    linf = smoothcore.noise("uniform", sigma=0.5, dim=10).radius_linf(0.9)
    assert linf == pytest.approx(2 * lam * (1 - (1.5 - 0.9) ** (1 / 10)))
    assert smoothcore.noise("gaussian", sigma=0.5, dim=10).radius(0.9) == pytest.approx(0.5 * norm.ppf(0.9))
    b = 0.5 / math.sqrt(2)
    assert smoothcore.noise("laplace", sigma=0.5, dim=10).radius(0.9) == pytest.approx(-b * math.log(2 * 0.1))


@pytest.mark.parametrize("name", ["uniform", "ssn", "dssn", "gaussian", "laplace"])
def test_radius_is_monotone_in_p_lower_and_zero_at_one_half(name):
    noise = smoothcore.noise(name, sigma=0.5, dim=10)
    p = np.linspace(0.5, 0.999, 50)
    r = noise.radius(p)
    assert r[0] == pytest.approx(0.0, abs=1e-12)
    assert np.all(np.diff(r) > 0)
    t = noise.radius(torch.tensor(p))
    assert isinstance(t, torch.Tensor) and np.allclose(t.numpy(), r)


@pytest.mark.parametrize("name", ["uniform", "ssn", "dssn", "gaussian", "laplace"])
def test_sampling_keeps_shape_dtype_device_and_is_seeded(name):
    noise = smoothcore.noise(name, sigma=0.3, dim=2 * 3 * 3)
    x = torch.randint(0, 256, (4, 2, 3, 3)).float() / 255
    a = noise.sample(x, torch.Generator().manual_seed(5))
    b = noise.sample(x, torch.Generator().manual_seed(5))
    assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
def test_sigma_only_noises_refuse_lambda(name):
    with pytest.raises(ConfigError, match="lambda"):
        smoothcore.noise(name, lambd=0.5, dim=4)


def test_unknown_noise_lists_the_available_ones():
    with pytest.raises(smoothcore.UnknownNameError, match="available: dssn, gaussian, laplace, ssn, uniform"):
        smoothcore.noise("gausian", sigma=0.5, dim=4)


@pytest.mark.parametrize("dim", [0, -3, 2.5, "784", None, True])
def test_dim_must_be_a_positive_integer(dim):
    with pytest.raises(ConfigError, match="dim"):
        smoothcore.noise("uniform", sigma=0.5, dim=dim)
