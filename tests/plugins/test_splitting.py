"""SSN and DSSN exactly as SPEC.md."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import smoothcore
from smoothcore import ConfigError, DataError
from tests.conftest import quantised


def reference_dssn_draw(x: np.ndarray, seed: int, sigma: float, k: int) -> np.ndarray:
    """SPEC.md's DSSN draw k, written independently in numpy float32 (x: (batch, d))."""
    lambd = sigma * math.sqrt(3)
    levels = int(math.floor(2 * lambd * 255))
    t = np.random.RandomState(seed).randint(levels, size=x.shape[1])
    s = (((t + k) % levels).astype(np.float32) + np.float32(0.5)) / np.float32(255.0)
    x = x.astype(np.float32)
    if lambd >= 0.5:
        return ((x > s).astype(np.float32) + np.minimum(s, np.float32(1))) / np.float32(2)
    u = np.ceil(np.float32(255.0) * (x - s) / np.float32(levels)) * np.float32(levels) / np.float32(255.0) + s
    return (
        np.minimum(u, np.float32(1)) + np.maximum(u - np.float32(levels / 255.0), np.float32(0))
    ) / np.float32(2)


@pytest.mark.parametrize("sigma", [0.05, 0.12, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("seed", [0, 7])
def test_dssn_draws_are_bit_identical_to_the_reference_rule(sigma, seed):
    x = quantised((3, 2, 5, 4), seed=seed)
    noise = smoothcore.noise("dssn", sigma=sigma, dim=40, seed=seed)
    draws = noise.draws(x, 0, noise.num_draws)
    assert draws.shape == (3, noise.num_draws, 2, 5, 4)
    for k in (0, 1, noise.num_draws // 2, noise.num_draws - 1):
        expected = reference_dssn_draw(x.reshape(3, -1).numpy(), seed, sigma, k)
        assert np.array_equal(draws[:, k].reshape(3, -1).numpy(), expected)


def test_dssn_draws_do_not_depend_on_how_the_range_is_split():
    x = quantised((2, 1, 6, 6))
    noise = smoothcore.noise("dssn", sigma=0.3, dim=36)
    whole = noise.draws(x, 0, noise.num_draws)
    parts = torch.cat(
        [noise.draws(x, a, min(a + 17, noise.num_draws)) for a in range(0, noise.num_draws, 17)], dim=1
    )
    assert torch.equal(whole, parts)


def test_dssn_template_is_numpy_randomstate_randint():
    noise = smoothcore.noise("dssn", sigma=1.0, dim=3072, seed=3)
    expected = np.random.RandomState(3).randint(883, size=3072)
    assert np.array_equal(noise.template.numpy(), expected)


@pytest.mark.parametrize("sigma", [0.1, 0.7])
def test_dssn_enumerates_each_offset_exactly_once_per_pixel(sigma):
    noise = smoothcore.noise("dssn", sigma=sigma, dim=50, seed=1)
    offsets = noise.offsets(torch.arange(noise.num_draws), torch.device("cpu"))  # (levels, dim)
    grid = np.rint(offsets.numpy() * 255 - 0.5).astype(int)
    for pixel in range(50):
        assert sorted(grid[:, pixel].tolist()) == list(range(noise.num_draws))


def test_dssn_training_draws_are_uniform_over_the_enumerated_draws():
    x = quantised((1, 1, 8, 8), seed=2)
    noise = smoothcore.noise("dssn", sigma=0.1, dim=64)  # 88 draws
    draws = noise.draws(x, 0, noise.num_draws)[0].reshape(noise.num_draws, -1)
    assert torch.unique(draws, dim=0).shape[0] == noise.num_draws  # so each sample identifies its draw
    g = torch.Generator().manual_seed(0)
    samples = noise.sample(x.expand(8800, 1, 8, 8), g).reshape(8800, -1)
    # each training draw is exactly one of the enumerated draws ...
    match = (samples[:, None, :] == draws[None, :, :]).all(dim=2)
    assert bool(match.any(dim=1).all())
    # ... and every draw is equally likely (chi-square test, 87 degrees of freedom, p > 0.001)
    from scipy.stats import chisquare

    observed = torch.bincount(match.float().argmax(dim=1), minlength=noise.num_draws).numpy()
    assert chisquare(observed).pvalue > 1e-3


@pytest.mark.parametrize("sigma", [0.1, 0.4, 0.9])
def test_dssn_draws_are_cell_midpoints_of_clipped_cells(sigma):
    """Every draw maps x to the midpoint of the clipped cell (u - w, u] that holds x."""
    x = quantised((2, 1, 8, 8), seed=5)
    noise = smoothcore.noise("dssn", sigma=sigma, dim=64)
    w = noise.levels / 255.0
    draws = noise.draws(x, 0, noise.num_draws).double()
    k = torch.arange(noise.num_draws)
    s = noise.offsets(k, torch.device("cpu")).double()  # (K, d)
    xf = x.reshape(2, 1, -1).double()
    u = s + w * torch.ceil((xf - s) / w)
    mid = (u.clamp(max=1) + (u - w).clamp(min=0)) / 2
    assert torch.allclose(draws.reshape(2, noise.num_draws, -1), mid, atol=1e-6)


def test_dssn_a_perturbation_changes_at_most_255_l1_draws():
    """The lemma behind the certificate: moving pixel i by delta_i (on the grid) changes its cell in exactly
    255 |delta_i| of the draws, so at most 255 ||delta||_1 draws change."""
    rng = np.random.default_rng(0)
    noise = smoothcore.noise("dssn", sigma=0.2, dim=30, seed=4)
    for trial in range(20):
        x = quantised((1, 30), seed=trial)
        steps = rng.integers(-6, 7, size=30) * (rng.random(30) < 0.2)
        x2 = ((x * 255).round() + torch.from_numpy(steps).float()).clamp(0, 255) / 255
        l1_levels = int(((x2 - x).abs() * 255).round().sum())
        changed = (noise.draws(x, 0, noise.num_draws) != noise.draws(x2, 0, noise.num_draws)).any(dim=2).sum()
        assert int(changed) <= l1_levels


def test_dssn_refuses_inputs_off_the_grid():
    noise = smoothcore.noise("dssn", sigma=0.5, dim=4)
    with pytest.raises(DataError, match="1/255"):
        noise.check_input(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    noise.check_input(torch.tensor([[0, 1, 128, 255]]) / 255.0)


@pytest.mark.parametrize("sigma", [0.12, 0.5])  # narrow cells (lambda < 1/2) and wide ones
def test_dssn_certifies_inputs_within_the_grid_tolerance_exactly_as_their_rounded_image(sigma):
    """Values within 1e-3/255 of the 1/255 grid (float rounding) are accepted, and their draws, counts and
    certificate are those of the rounded image; farther off, the refusal states the tolerance."""
    noise = smoothcore.noise("dssn", sigma=sigma, dim=16, seed=3)
    rounded = quantised((4, 1, 4, 4), seed=8).double()
    jitter = (torch.rand(rounded.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 0.9e-3 / 255
    near = (rounded + jitter).clamp(0, 1)
    noise.check_input(near)
    assert torch.equal(noise.draws(near, 0, noise.num_draws), noise.draws(rounded, 0, noise.num_draws))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3).double())
    smoothed = smoothcore.SmoothedClassifier(model, noise, 3)
    a, b = smoothed.certify(near), smoothed.certify(rounded)
    assert torch.equal(a.counts, b.counts) and torch.allclose(
        a.radius, b.radius, rtol=0, atol=0, equal_nan=True
    )
    with pytest.raises(
        DataError, match=r"within 0.001/255 of the grid are accepted and certified as the rounded"
    ):
        noise.check_input((rounded + 2e-3 / 255).clamp(max=1))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sigma": 0.0},
        {"sigma": -1.0},
        {"sigma": float("nan")},
        {"sigma": 1e9},
        {"sigma": 0.5, "lambd": 0.8},
        {},
        {"sigma": 0.0005},
    ],
)
def test_dssn_rejects_bad_scales_with_the_parameter_named(kwargs):
    with pytest.raises(ConfigError, match="sigma|lambda"):
        smoothcore.noise("dssn", dim=4, **kwargs)


def test_lambda_can_be_given_instead_of_sigma():
    a = smoothcore.noise("dssn", sigma=0.5, dim=4)
    b = smoothcore.noise("dssn", lambd=0.5 * math.sqrt(3), dim=4)
    assert a.num_draws == b.num_draws == 441


def test_a_sigma_given_for_a_grid_value_of_lambda_keeps_every_draw():
    """floor(2 lambda 255) with lambda = sigma sqrt(3) one rounding error below k / 510 would lose a draw."""
    for k in range(1, 1021):
        sigma = k / 510 / math.sqrt(3)
        assert smoothcore.noise("dssn", sigma=sigma, dim=4).num_draws == k


# -- SSN ------------------------------------------------------------------------------------------------------------
def test_ssn_with_wide_cells_matches_the_closed_form():
    """For lambda >= 1/2: x~ = ([x > s] + min(s, 1)) / 2, so P(x~ > 1/2... ) follow from s ~ U[0, w)."""
    noise = smoothcore.noise("ssn", sigma=1.0, dim=1)
    w = 2 * noise.lambd
    x = torch.full((200_000, 1), 0.3)
    out = noise.sample(x, torch.Generator().manual_seed(0)).squeeze(1).double()
    # E[min(s, 1)] = (1/2 + (w - 1)) / w and P(x > s) = x / w
    expected_mean = (0.3 / w + (0.5 + w - 1) / w) / 2
    assert out.mean().item() == pytest.approx(expected_mean, abs=3e-3)
    assert ((out >= 0) & (out <= 1)).all()


@pytest.mark.parametrize("sigma", [0.1, 0.2])
def test_ssn_moves_a_pixel_to_another_cell_with_probability_delta_over_w(sigma):
    noise = smoothcore.noise("ssn", sigma=sigma, dim=1)
    w = 2 * noise.lambd
    n = 200_000
    x = torch.full((n, 1), 0.40)
    delta = 0.05
    g1 = torch.Generator().manual_seed(1)
    g2 = torch.Generator().manual_seed(1)
    a = noise.sample(x, g1)
    b = noise.sample(x + delta, g2)  # same offsets s: compare the cells
    assert (a != b).float().mean().item() == pytest.approx(delta / w, abs=4e-3)


def test_ssn_output_is_the_midpoint_of_the_clipped_cell_holding_x():
    noise = smoothcore.noise("ssn", sigma=0.1, dim=1)
    w = 2 * noise.lambd
    x = torch.rand(10_000, 1)
    out = noise.sample(x, torch.Generator().manual_seed(3))
    assert ((out - x).abs() <= w / 2 + 1e-6).all()
    assert ((out >= 0) & (out <= 1)).all()


@pytest.mark.parametrize("sigma", [0.05, 0.1, 0.2, 0.3, 1.0])
def test_ssn_draws_are_specs_cell_formula_on_the_same_offsets(sigma):
    """SPEC: s ~ U[0, w), u = s + w ceil((x - s) / w), x~ = (min(u, 1) + max(u - w, 0)) / 2, with w = 2 lambda;
    evaluated here in float64 on the offsets the noise drew (the same generator state)."""
    noise = smoothcore.noise("ssn", sigma=sigma, dim=16)
    x = torch.randint(0, 256, (500, 16), generator=torch.Generator().manual_seed(1)).float() / 255
    x[:, 0], x[:, 1] = 0.0, 1.0
    out = noise.sample(x, torch.Generator().manual_seed(2))
    w = 2.0 * noise.lambd
    s = torch.rand(x.shape, generator=torch.Generator().manual_seed(2)).double() * w
    u = s + w * torch.ceil((x.double() - s) / w)
    expected = (u.clamp(max=1.0) + (u - w).clamp(min=0.0)) / 2
    assert torch.allclose(out.double(), expected, atol=1e-6)


def test_dssn_estimated_by_sampling_uses_the_width_of_its_own_cells():
    """DSSN's Monte-Carlo radius (certificate 'standard') is w (p - 1/2) with w = levels / 255, never more than
    SSN's 2 lambda (p - 1/2): its cells are levels / 255 wide."""
    dssn = smoothcore.noise("dssn", sigma=0.3, dim=4)
    ssn = smoothcore.noise("ssn", sigma=0.3, dim=4)
    for p in (0.5, 0.75, 0.99):
        assert dssn.radius(p) == pytest.approx(dssn.levels / 255 * (p - 0.5), abs=1e-12)
        assert dssn.radius(p) <= ssn.radius(p)
    assert dssn.levels / 255 < 2 * dssn.lambd  # floor(2 lambda 255) / 255 falls short of 2 lambda here
