"""The box-constrained and two-sided L1 certificates (plugins/box.py; derivations in docs/certificates.md)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import smoothcore
from smoothcore import ConfigError, clopper_pearson_lower, clopper_pearson_upper
from smoothcore.certificates import Statistics, certificates_for, get_certificate
from smoothcore_plugins.box import agreement, box_radius, box_rooms, union_radius
from tests.conftest import quantised

ALPHA = 0.001


def stats_for(counts, *, x=None, selection=None, alpha: float = ALPHA) -> Statistics:
    counts = torch.as_tensor(np.asarray(counts), dtype=torch.long)
    if x is None:
        x = torch.full((len(counts), 4), 0.5)
    selection = counts if selection is None else torch.as_tensor(np.asarray(selection), dtype=torch.long)
    return Statistics(counts=counts, num_draws=int(counts[0].sum()), selection=selection, alpha=alpha, x=x)


def box_overlap(x: np.ndarray, x2: np.ndarray, lambd: float) -> np.ndarray:
    """Volume fraction shared by the boxes ``x + [-lambda, lambda]^d`` and ``x2 + [-lambda, lambda]^d``, computed
    by intersecting intervals (independently of the formula under test): 1 - TV of the two uniform noises."""
    low = np.maximum(x - lambd, x2 - lambd)
    high = np.minimum(x + lambd, x2 + lambd)
    return np.prod(np.clip(high - low, 0.0, None) / (2.0 * lambd), axis=-1)


def radius_of(x: np.ndarray, margin: float, lambd: float) -> float:
    """The box radius of one image ``x`` (flat, float64) for a margin ``p_A_lower - p_B_upper``."""
    return box_radius(
        box_rooms(torch.from_numpy(x)[None]), torch.tensor([margin], dtype=torch.float64), lambd
    ).item()


def worst_case(x: np.ndarray, radius: float, lambd: float) -> np.ndarray:
    """The greedy perturbation of L1 norm ``radius``: the pixels with most room move first, toward the far end."""
    rooms = np.maximum(x, 1.0 - x)
    direction = np.where(x < 0.5, 1.0, -1.0)
    delta = np.zeros_like(x)
    left = radius
    for i in np.argsort(-np.minimum(rooms, 2 * lambd), kind="stable"):
        step = min(left, rooms[i])
        delta[i] = direction[i] * step
        left -= step
    return delta


# -- which noises ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, applies",
    [("uniform", True), ("ssn", True), ("dssn", False), ("gaussian", False), ("laplace", False)],
)
def test_box_and_two_sided_apply_to_uniform_and_ssn_only(name, applies):
    noise = smoothcore.noise(name, sigma=0.5, dim=16)
    assert get_certificate("box").applies_to(noise) is applies
    assert get_certificate("two-sided").applies_to(noise) is applies
    assert ("box" in certificates_for(noise)) is applies


def test_both_are_registered_as_monte_carlo_certificates_by_the_box_plugin():
    from smoothcore.plugins import registry

    for name in ("box", "two-sided"):
        entry = registry("certificate").get(name)
        assert entry.plugin == "smoothcore_plugins.box" and entry.description
        assert get_certificate(name).name == name and get_certificate(name).kind == "monte-carlo"


def test_certifying_dssn_with_box_is_refused():
    noise = smoothcore.noise("dssn", sigma=0.5, dim=4)
    smoothed = smoothcore.SmoothedClassifier(nn.Flatten(), noise, num_classes=4)
    with pytest.raises(ConfigError, match="does not apply"):
        smoothed.certify(quantised((1, 4)), certificate="box")


# -- the statistics --------------------------------------------------------------------------------------------


def test_two_sided_radius_is_lambda_times_p_a_lower_minus_p_b_upper():
    noise = smoothcore.noise("uniform", sigma=0.5, dim=4)
    counts = [[700, 40, 200, 60], [50, 620, 100, 230]]
    out = get_certificate("two-sided").certify(noise, stats_for(counts))
    n = 1000
    p_a = clopper_pearson_lower(np.array([700, 620]), n, ALPHA)
    p_b = clopper_pearson_upper(np.array([200, 230]), n, ALPHA)
    assert out.prediction.tolist() == [0, 1]
    assert np.allclose(out.p_lower.numpy(), p_a, rtol=0, atol=1e-15)
    assert np.allclose(out.extra["p_b_upper"].numpy(), p_b, rtol=0, atol=1e-15)
    assert np.allclose(out.radius.numpy(), noise.lambd * (p_a - p_b), rtol=0, atol=1e-15)
    assert out.norm == "l1"


def test_with_only_two_classes_drawn_two_sided_equals_the_standard_radius():
    # Clopper-Pearson intervals are symmetric: the upper bound at n - k_A is 1 - p_A_lower.
    noise = smoothcore.noise("ssn", sigma=0.8, dim=4)
    counts = [[9300, 0, 700], [6100, 3900, 0]]
    two = get_certificate("two-sided").certify(noise, stats_for(counts))
    std = get_certificate("standard").certify(noise, stats_for(counts))
    assert torch.allclose(two.radius, std.radius, rtol=1e-12, atol=1e-12)


def test_the_runner_up_is_the_largest_other_count_even_when_the_selection_disagrees():
    noise = smoothcore.noise("uniform", sigma=0.5, dim=4)
    counts = [[300, 500, 200]]
    out = get_certificate("two-sided").certify(noise, stats_for(counts, selection=[[40, 20, 4]]))
    assert out.prediction.tolist() == [-1] and math.isnan(out.radius.item())
    assert out.extra["p_b_upper"].item() == pytest.approx(clopper_pearson_upper(500, 1000, ALPHA), abs=1e-15)


@pytest.mark.parametrize("cert", ["two-sided", "box"])
def test_never_below_the_standard_radius_and_never_abstains_where_it_certifies(cert):
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.full(5, 0.3), size=400)
    counts = np.stack([rng.multinomial(2000, q) for q in p])
    x = torch.rand(len(counts), 8, generator=torch.Generator().manual_seed(1))
    noise = smoothcore.noise("uniform", sigma=0.7, dim=8)
    ours = get_certificate(cert).certify(noise, stats_for(counts, x=x))
    std = get_certificate("standard").certify(noise, stats_for(counts, x=x))
    certified = std.prediction >= 0
    assert torch.equal(ours.prediction[certified], std.prediction[certified])
    assert bool((ours.radius[certified] >= std.radius[certified] - 1e-12).all())
    assert bool(
        (ours.radius[certified] > std.radius[certified] + 1e-3).any()
    )  # a third class makes it strictly better


def test_a_clear_plurality_below_one_half_is_certified_where_the_standard_certificate_abstains():
    noise = smoothcore.noise("uniform", sigma=1.0, dim=4)
    counts = [[4500, 2000, 1800, 1700]]
    std = get_certificate("standard").certify(noise, stats_for(counts))
    box = get_certificate("box").certify(noise, stats_for(counts))
    assert std.prediction.item() == -1
    assert box.prediction.item() == 0 and box.radius.item() > 0.3


def test_abstains_when_p_a_lower_is_below_p_b_upper():
    noise = smoothcore.noise("uniform", sigma=1.0, dim=4)
    out = get_certificate("box").certify(noise, stats_for([[4100, 3900, 2000]]))
    assert out.prediction.item() == -1 and math.isnan(out.radius.item())


def test_failure_probability_of_the_bounds_and_of_the_certificate_is_at_most_alpha():
    """Simulated counts from a known distribution: the fraction of images where p_A_lower > p_A or
    p_B_upper < p_B (the runner-up chosen from the same counts) stays below alpha, and so does the fraction
    of wrong certificates (wrong class, or a radius above the one the true probabilities give)."""
    alpha, n, trials = 0.2, 200, 20000
    p = np.array([0.5, 0.3, 0.2])
    rng = np.random.default_rng(0)
    counts = rng.multinomial(n, p, size=trials)
    selection = rng.multinomial(64, p, size=trials)
    x = torch.full((trials, 4), 0.5)
    noise = smoothcore.noise("uniform", lambd=1.0, dim=4)
    out = get_certificate("box").certify(noise, stats_for(counts, x=x, selection=selection, alpha=alpha))
    top = out.prediction.numpy()
    p_a_true = np.where(top >= 0, p[np.clip(top, 0, None)], 0.0)
    p_b_true = np.where(top == 0, 0.3, 0.5)
    bounds_fail = (out.p_lower.numpy() > p_a_true) | (out.extra["p_b_upper"].numpy() < p_b_true)
    true_radius = box_radius(box_rooms(x[:1]), torch.tensor([0.2]), 1.0).item()
    wrong = (top >= 0) & ((top != 0) | (out.radius.numpy() > true_radius + 1e-12))
    slack = 4 * math.sqrt(alpha * (1 - alpha) / trials)
    assert bounds_fail.mean() <= alpha + slack
    assert wrong.mean() <= bounds_fail.mean()
    assert bounds_fail.mean() > alpha / 4  # the test has power: the bounds are not vacuous


# -- the box radius --------------------------------------------------------------------------------------------


def test_box_radius_matches_the_closed_form_on_a_two_pixel_example():
    # rooms 0.7, 0.6; w = 2; theta = 1 - 0.9 / 2 = 0.55: pixel 1 fully (agreement 0.65), then 2 (1 - 0.55 / 0.65).
    r = radius_of(np.array([0.3, 0.6]), 0.9, 1.0)
    assert r == pytest.approx(0.7 + 2.0 * (1.0 - 0.55 / 0.65), abs=1e-14)
    assert union_radius(torch.tensor([0.9]), 1.0).item() == pytest.approx(0.9)


def test_box_radius_is_never_below_the_union_bound_and_equals_it_exactly_when_one_pixel_has_room_for_it():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2000, 6, generator=g, dtype=torch.float64) ** 3 * 0.5 + 0.25  # rooms in [1/2, 3/4]
    margin = torch.rand(2000, generator=g, dtype=torch.float64)
    lambd = 1.2
    box = box_radius(box_rooms(x), margin, lambd)
    union = union_radius(margin, lambd)
    room = box_rooms(x).max(dim=1).values
    binds = room < union
    assert bool((box >= union - 1e-12).all())
    assert torch.allclose(box[~binds], union[~binds], rtol=1e-12, atol=1e-12)
    assert bool((box[binds] > union[binds]).all())
    assert 100 < int(binds.sum()) < 1900


def test_below_lambda_one_half_the_box_never_helps_even_with_saturated_pixels():
    # every room is at least 1/2 > lambda * margin; pixels at 0 or 1 can move by more than the width w
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 3, (500, 12), generator=g).double() / 2.0
    margin = torch.rand(500, generator=g, dtype=torch.float64)
    for lambd in (0.1, 0.3, 0.5):
        assert torch.allclose(
            box_radius(box_rooms(x), margin, lambd), union_radius(margin, lambd), rtol=0, atol=1e-15
        )


@pytest.mark.parametrize(
    "lambd, margin, expect_equal", [(0.9, 0.5, True), (1.0, 0.5, True), (1.0, 0.6, False)]
)
def test_all_pixels_at_one_half_equal_the_union_bound_iff_lambda_margin_is_at_most_one_half(
    lambd, margin, expect_equal
):
    rooms = box_rooms(torch.full((1, 64), 0.5))
    box = box_radius(rooms, torch.tensor([margin]), lambd).item()
    assert (box == pytest.approx(lambd * margin, abs=1e-12)) is expect_equal
    assert box >= lambd * margin - 1e-12


def test_zero_margin_certifies_nothing_and_the_radius_grows_with_the_margin():
    rooms = box_rooms(torch.rand(1, 10, generator=torch.Generator().manual_seed(3))).expand(50, 10)
    margin = torch.linspace(0.0, 1.0, 50, dtype=torch.float64)
    r = box_radius(rooms, margin, 1.5)
    assert r[0].item() == 0.0
    assert bool((r.diff() > 0).all())


def test_when_every_feasible_perturbation_is_certified_the_radius_is_the_largest_feasible_norm():
    x = np.zeros(6)  # six saturated pixels: rooms 1, largest feasible norm 6
    lambd, margin = 5.0, 1.0  # w = 10: the far corner keeps agreement 0.9^6 = 0.53 > 1 - 1/2
    corner = np.ones(6)
    assert box_overlap(x, corner, lambd) > 1 - margin / 2
    assert lambd * margin < 6.0
    assert radius_of(x, margin, lambd) == pytest.approx(6.0, abs=1e-14)


def test_on_a_tiny_image_fully_certified_below_the_two_sided_radius_the_box_radius_is_the_two_sided_one():
    """Never below the two-sided radius: with three pixels the largest feasible norm (2.2) is far below
    lambda * margin = 18, which certifies every perturbation of smaller norm, in the box or not."""
    x = np.array([0.2, 0.5, 0.9])
    lambd, margin = 20.0, 0.9  # w = 40: even the farthest corner keeps agreement far above 1 - 0.45
    corner = np.where(x < 0.5, 1.0, 0.0)
    assert box_overlap(x, corner, lambd) > 1 - margin / 2 and np.abs(corner - x).sum() < lambd * margin
    assert radius_of(x, margin, lambd) == pytest.approx(lambd * margin, abs=1e-12)


CASES = [  # (x, lambda, margin)
    (np.array([0.3, 0.6]), 1.0, 0.9),  # the box binds: one pixel full, part of the other
    (np.array([0.2, 0.7, 0.45]), 1.5, 0.96),  # two pixels full, part of the third
    (np.array([0.5, 0.55, 0.5]), 1.0, 0.9),  # ties among the rooms
    (np.array([0.35, 0.5]), 0.5, 0.8),  # does not bind: one pixel has room for the union-bound radius
    (np.array([0.0, 0.8]), 0.4, 1.0),  # does not bind; rooms capped at w = 0.8
]


@pytest.mark.parametrize("x, lambd, margin", CASES)
def test_box_radius_is_the_smallest_norm_of_a_box_feasible_perturbation_that_breaks_the_condition(
    x, lambd, margin
):
    """Brute force over a grid of perturbations inside [0, 1]^d, with the exact probability of agreement of two
    uniform noises (the overlap of two boxes): no grid point of norm below the radius breaks
    ``agreement > 1 - margin / 2``, and one within a grid step of the radius does."""
    d = len(x)
    steps = 801 if d == 2 else 121
    axes = [np.linspace(-xi, 1.0 - xi, steps) for xi in x]  # includes the box's end points
    delta = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, d)
    norm = np.abs(delta).sum(axis=1)
    broken = box_overlap(x, x + delta, lambd) <= 1.0 - margin / 2
    r = radius_of(x, margin, lambd)
    assert not broken[norm < r - 1e-9].any()
    assert broken.any()
    assert norm[broken].min() <= r + d / (steps - 1) + 1e-12
    binds = lambd * margin > np.maximum(x, 1 - x).max()
    assert (r > lambd * margin + 1e-3) if binds else (r == pytest.approx(lambd * margin, abs=1e-12))


@pytest.mark.parametrize("seed", range(3))
def test_the_greedy_perturbation_at_the_radius_reaches_the_threshold_and_no_shorter_one_does(seed):
    rng = np.random.default_rng(seed)
    d, lambd = 8, 1.2 + seed
    x = rng.uniform(0.2, 0.8, d)
    margin = 0.95
    theta = 1.0 - margin / 2
    r = radius_of(x, margin, lambd)
    assert r > lambd * margin  # the box binds
    star = worst_case(x, r, lambd)
    assert np.all((x + star >= 0) & (x + star <= 1)) and np.abs(star).sum() == pytest.approx(r, abs=1e-12)
    assert agreement(torch.tensor(star), lambd).item() == pytest.approx(theta, abs=1e-12)
    # 20,000 random box-feasible perturbations (sparse and dense supports) scaled to norms below r
    rooms = np.maximum(x, 1 - x)
    trials = 20000
    support = rng.random((trials, d)) < rng.uniform(0.1, 1.0, (trials, 1))
    mag = rng.random((trials, d)) ** rng.uniform(0.1, 3.0, (trials, 1)) * rooms * support
    sign = np.where(x < 0.5, 1.0, -1.0) * np.where(rng.random((trials, d)) < 0.8, 1.0, -1.0)
    delta = sign * mag
    delta = np.clip(x + delta, 0, 1) - x
    norm = np.abs(delta).sum(axis=1, keepdims=True)
    scale = np.minimum(1.0, rng.uniform(0.5, 1.0, (trials, 1)) * (r - 1e-9) / np.maximum(norm, 1e-300))
    delta = delta * scale
    assert bool((agreement(torch.tensor(delta), lambd) > theta).all())


def test_box_radius_handles_large_batches_and_images_in_chunks():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 3 * 64 * 64, generator=g)
    margin = torch.rand(40, generator=g, dtype=torch.float64)
    whole = box_radius(box_rooms(x), margin, 2.0)
    single = torch.cat([box_radius(box_rooms(x[i : i + 1]), margin[i : i + 1], 2.0) for i in range(40)])
    assert torch.equal(whole, single)


# -- the coupling, on the noises' own samples ------------------------------------------------------------------


@pytest.mark.parametrize("lambd", [0.3, 0.9])
def test_ssn_draws_with_shared_offsets_differ_with_probability_one_minus_the_agreement(lambd):
    noise = smoothcore.noise("ssn", lambd=lambd, dim=3)
    x = torch.tensor([0.2, 0.5, 0.9])
    delta = torch.tensor([0.25, -0.1, 0.05])
    n = 40000
    a = noise.sample(x.expand(n, 3).clone(), torch.Generator().manual_seed(7))
    b = noise.sample((x + delta).expand(n, 3).clone(), torch.Generator().manual_seed(7))
    differ = (a != b).any(dim=1).double().mean().item()
    expected = 1.0 - agreement(delta, lambd).item()
    assert differ == pytest.approx(expected, abs=4 * math.sqrt(expected * (1 - expected) / n))


def test_uniform_agreement_is_the_overlap_of_the_two_noise_boxes():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(500, 5, generator=g, dtype=torch.float64)
    x2 = torch.rand(500, 5, generator=g, dtype=torch.float64)
    for lambd in (0.2, 0.7, 2.0):
        expected = box_overlap(x.numpy(), x2.numpy(), lambd)
        assert np.allclose(agreement(x2 - x, lambd).numpy(), expected, atol=1e-14)


# -- end to end ------------------------------------------------------------------------------------------------


class MeanThreshold(nn.Module):
    """Class 0 when the mean pixel value is above 0.3, else class 1 (a third class never wins)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(dim=1, keepdim=True) - 0.3
        return torch.cat([m, -m, torch.full_like(m, -10.0)], dim=1) * 50.0


@pytest.mark.parametrize("name", ["uniform", "ssn"])
def test_smoothed_classifier_certifies_with_the_box_certificate_end_to_end(name):
    noise = smoothcore.noise(name, lambd=1.5, dim=16)
    smoothed = smoothcore.SmoothedClassifier(MeanThreshold(), noise, num_classes=3)
    x = torch.full((2, 1, 4, 4), 0.5)
    x[1] = 0.6  # a brighter image: a more confident prediction
    kw = {"n0": 64, "n": 4000, "alpha": ALPHA, "indices": [3, 4]}
    box = smoothed.certify(x, certificate="box", **kw)
    two = smoothed.certify(x, certificate="two-sided", **kw)
    std = smoothed.certify(x, **kw)
    assert box.certificate == "box" and box.norm == "l1"
    assert box.prediction.tolist() == [0, 0] == two.prediction.tolist()
    assert torch.equal(box.p_lower, two.p_lower) and torch.equal(box.p_lower, std.p_lower)
    expected = box_radius(box_rooms(x), box.p_lower - box.extra["p_b_upper"], 1.5)
    assert torch.allclose(box.radius, expected, rtol=0, atol=0)
    assert bool((box.radius > two.radius).all()) and bool((two.radius >= std.radius - 1e-12).all())
    assert "p_b_upper" in box.to_frame().columns


def test_box_certificate_needs_the_clean_images():
    noise = smoothcore.noise("uniform", sigma=1.0, dim=4)
    stats = stats_for([[900, 100, 0, 0]])
    stats.x = None
    with pytest.raises(ConfigError, match="clean images"):
        get_certificate("box").certify(noise, stats)


# -- DSSN: why there is no box-aware certificate (docs/certificates.md, section 5) ------------------------------


def changed_draws(noise, x: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    a = noise.draws(x, 0, noise.levels)[0].flatten(1)
    b = noise.draws(x2, 0, noise.levels)[0].flatten(1)
    return (a != b).any(dim=1)


@pytest.mark.parametrize("sigma", [0.25, 1.0])
def test_dssn_moving_one_pixel_changes_a_cyclic_block_of_draws_at_its_anchor(sigma):
    d = 6
    noise = smoothcore.noise("dssn", sigma=sigma, dim=d, seed=5)
    levels, t = noise.levels, noise.template.numpy()
    x = quantised((1, d), seed=2)
    a = (x[0] * 255).round().long().numpy()
    for i, j in itertools.product(range(d), (1, 17, 128, 255)):
        for up in (True, False):
            if (up and a[i] + j > 255) or (not up and a[i] - j < 0):
                continue
            x2 = x.clone()
            x2[0, i] = (a[i] + (j if up else -j)) / 255.0
            got = set(np.nonzero(changed_draws(noise, x, x2).numpy())[0].tolist())
            offsets = range(min(j, levels)) if up else range(-1, -min(j, levels) - 1, -1)
            assert got == {(a[i] - t[i] + r) % levels for r in offsets}


def test_dssn_union_bound_is_attained_by_a_box_feasible_perturbation_on_a_realistic_image():
    """On a 28x28 image, upward moves of pixels at distinct anchors (each block cut at the next anchor) change
    exactly 255 ||delta||_1 draws for the largest budget any DSSN margin can need, floor(L / 2) + 1, and the
    changed draws' noisy images are new points: a base classifier can relabel all of them, so no box-aware
    certificate can beat floor(margin / 2) / 255 here."""
    d = 784
    noise = smoothcore.noise("dssn", sigma=1.0, dim=d, seed=0)
    levels, t = noise.levels, noise.template.numpy()
    x = quantised((1, d), seed=4)
    a = (x[0] * 255).round().long().numpy()
    anchor, room = (a - t) % levels, 255 - a
    best = {}
    for i in np.argsort(-room, kind="stable"):
        best.setdefault(int(anchor[i]), int(i))
    starts = sorted(best)
    budget = levels // 2 + 1
    steps = np.zeros(d, dtype=np.int64)
    left = budget
    for p, nxt in zip(starts, starts[1:] + [starts[0] + levels]):
        i = best[p]
        steps[i] = min(room[i], nxt - p, left)
        left -= steps[i]
    assert left == 0
    x2 = x + torch.as_tensor(steps, dtype=torch.float32).unsqueeze(0) / 255.0
    assert float(x2.max()) <= 1.0 and smoothcore.noise("dssn", sigma=1.0, dim=d).check_input(x2) is None
    changed = changed_draws(noise, x, x2)
    assert int(changed.sum()) == budget == int(steps.sum())
    clean = {tuple(row) for row in noise.draws(x, 0, levels)[0].flatten(1).tolist()}
    moved = noise.draws(x2, 0, levels)[0].flatten(1)[changed]
    assert not any(tuple(row) in clean for row in moved.tolist())
