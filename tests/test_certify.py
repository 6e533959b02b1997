"""SmoothedClassifier: Cohen et al.'s PREDICT / CERTIFY and the exact DSSN certificate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import smoothcore
from smoothcore import ConfigError, DataError, SmoothedClassifier
from tests.conftest import quantised


class Threshold(nn.Module):
    """Class 0 when the first pixel of the (noisy) input is below ``threshold[i]``, else class 1: under uniform
    noise of half-width lambda around x, P(class 0) = (threshold - x + lambda) / (2 lambda), known exactly."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.reshape(x.shape[0], -1)[:, 0]
        return torch.stack([self.threshold - z, z - self.threshold], dim=1) * 1000


def test_monte_carlo_lower_bound_covers_the_true_probability():
    """Over 400 images with p_A = 0.8, p_lower exceeds p_A in at most about alpha/2 of them (two-sided bound)."""
    noise = smoothcore.noise("uniform", lambd=0.5, dim=1)
    p_true = 0.8
    threshold = 0.5 - 0.5 + 2 * 0.5 * p_true  # x = 0.5: P(x + e < t) = (t - 0.5 + 0.5) / 1.0
    smoothed = SmoothedClassifier(Threshold(threshold), noise, 2, max_batch=4096)
    x = torch.full((400, 1), 0.5)
    alpha = 0.2
    result = smoothed.certify(x, n0=16, n=100, alpha=alpha)
    assert (result.prediction == 0).float().mean() > 0.95
    exceed = (result.p_lower > p_true).float().mean().item()
    assert exceed <= alpha / 2 + 0.05  # binomial slack at 400 trials
    assert exceed > 0.0  # the bound is not vacuous: it is tight enough to miss sometimes at alpha = 0.2


def test_monte_carlo_radius_is_the_noise_formula_and_abstains_below_one_half():
    noise = smoothcore.noise("uniform", lambd=0.5, dim=1)
    sure = SmoothedClassifier(Threshold(10.0), noise, 2).certify(
        torch.full((2, 1), 0.5), n0=10, n=1000, alpha=0.001
    )
    p = smoothcore.clopper_pearson_lower(1000, 1000, 0.001)
    assert torch.allclose(sure.p_lower, torch.tensor([p, p], dtype=torch.float64))
    assert torch.allclose(sure.radius, torch.tensor([2 * 0.5 * (p - 0.5)] * 2, dtype=torch.float64))
    coin = SmoothedClassifier(Threshold(0.5), noise, 2).certify(
        torch.full((3, 1), 0.5), n0=10, n=200, alpha=0.001
    )
    assert (coin.prediction == -1).all() and torch.isnan(coin.radius).all()


def test_certification_is_reproducible_and_independent_of_the_batch():
    noise = smoothcore.noise("uniform", sigma=0.25, dim=16)
    model = Threshold(0.5)  # undecided enough that p_lower varies from draw to draw
    x = quantised((5, 1, 4, 4))
    x[:, 0, 0, 0] = 0.45
    smoothed = SmoothedClassifier(model, noise, 2, max_batch=64)
    a = smoothed.certify(x, n0=20, n=300, indices=[10, 11, 12, 13, 14])
    b = smoothed.certify(x, n0=20, n=300, indices=[10, 11, 12, 13, 14])
    alone = smoothed.certify(x[2:3], n0=20, n=300, indices=[12])
    assert torch.equal(a.p_lower, b.p_lower) and torch.equal(a.prediction, b.prediction)
    assert a.p_lower[2] == alone.p_lower[0]
    other_seed = SmoothedClassifier(
        model, smoothcore.noise("uniform", sigma=0.25, dim=16, seed=1), 2, max_batch=64
    )
    assert not torch.equal(
        other_seed.certify(x, n0=20, n=300).p_lower, smoothed.certify(x, n0=20, n=300).p_lower
    )


def test_forward_passes_are_n0_plus_n_per_image_or_the_draw_count():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = quantised((3, 1, 4, 4))
    mc = SmoothedClassifier(model, smoothcore.noise("uniform", sigma=0.2, dim=16), 3, max_batch=100).certify(
        x, n0=7, n=250
    )
    assert mc.forward_passes == 3 * 257
    dssn = smoothcore.noise("dssn", sigma=0.2, dim=16)
    exact = SmoothedClassifier(model, dssn, 3, max_batch=100).certify(x)
    assert exact.forward_passes == 3 * dssn.num_draws
    assert (exact.counts.sum(dim=1) == dssn.num_draws).all()


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def test_dssn_certificate_is_sound_under_random_grid_perturbations_within_the_radius():
    """For perturbed images on the 1/255 grid with L1 norm within the certified radius, recomputed exact counts
    keep the prediction."""
    noise = smoothcore.noise("dssn", sigma=0.3, dim=48, seed=2)
    smoothed = SmoothedClassifier(small_net(), noise, 4, max_batch=4096)
    x = quantised((12, 3, 4, 4), seed=9)
    base = smoothed.certify(x)
    rng = np.random.default_rng(0)
    checked = 0
    for i in range(len(x)):
        budget = int(round(float(base.radius[i]) * 255))
        if budget == 0:
            continue
        levels = (x[i].flatten() * 255).round()
        perturbed = []
        for _ in range(15):
            step = np.zeros(48)
            pix = rng.choice(48, size=rng.integers(1, 6), replace=False)
            split = rng.multinomial(budget, np.ones(len(pix)) / len(pix))
            step[pix] = split * rng.choice([-1, 1], size=len(pix))
            new = (levels + torch.from_numpy(step).float()).clamp(0, 255)
            assert (new - levels).abs().sum() <= budget
            perturbed.append((new / 255).reshape(3, 4, 4))
        again = smoothed.certify(torch.stack(perturbed))
        assert (again.prediction == base.prediction[i]).all()
        checked += 1
    assert checked >= 5


def test_dssn_radius_is_tight_up_to_the_union_bound_for_a_single_pixel_classifier():
    """A classifier that reads one pixel's cell: moving that pixel by radius + 1/255 grey levels can flip it,
    moving it by the radius cannot."""

    class FirstPixel(nn.Module):
        def forward(self, z):
            v = z.reshape(z.shape[0], -1)[:, 0]
            return torch.stack([0.5 - v, v - 0.5], dim=1)

    noise = smoothcore.noise("dssn", sigma=0.1, dim=1, seed=0)  # 88 draws, cells 88/255 wide
    smoothed = SmoothedClassifier(FirstPixel(), noise, 2)

    def prediction_at(level: int) -> int:
        return int(smoothed.certify(torch.tensor([[level / 255]])).prediction[0])

    x = 100  # grey level: below 1/2, so class 0, and moving it up pushes draws over 1/2
    base = smoothed.certify(torch.tensor([[x / 255]]))
    r = int(round(float(base.radius[0]) * 255))
    assert int(base.prediction[0]) == 0 and r > 0
    for step in range(-r, r + 1):
        assert prediction_at(x + step) == 0
    assert prediction_at(x + r + 1) == 1  # one grey level more flips it: the radius is exact here


def test_exact_prediction_never_abstains_and_breaks_ties_to_the_lowest_class():
    counts = torch.tensor([[3, 5, 5, 0], [0, 0, 0, 13], [13, 0, 0, 0]])
    noise = smoothcore.noise("dssn", lambd=13 / 510 + 1e-9, dim=4)
    assert noise.num_draws == 13
    prediction, radius = smoothcore.certify_counts(noise, counts)
    assert prediction.tolist() == [1, 3, 0]
    # a=1, b=2 (b > a): floor(0/2) = 0; a=3, b=0 (b < a): floor((13 - 0 - 1)/2) = 6; a=0, b=1: floor(13/2) = 6
    assert (radius * 255).round().tolist() == [0, 6, 6]


def test_certify_counts_checks_its_input():
    noise = smoothcore.noise("dssn", lambd=13 / 510 + 1e-9, dim=4)
    with pytest.raises(ConfigError, match="sum"):
        smoothcore.certify_counts(noise, torch.tensor([[3, 5]]))
    with pytest.raises(ConfigError, match="integer"):
        smoothcore.certify_counts(noise, torch.tensor([[3.0, 10.0]]))
    with pytest.raises(ConfigError, match="no exact certificate"):
        smoothcore.certify_counts(smoothcore.noise("ssn", sigma=0.1, dim=4), torch.tensor([[3, 10]]))


def test_predict_abstains_on_a_coin_flip_and_answers_a_sure_thing():
    noise = smoothcore.noise("uniform", lambd=0.5, dim=1)
    x = torch.full((4, 1), 0.5)
    assert (
        SmoothedClassifier(Threshold(0.5), noise, 2).predict(x, n=100, alpha=0.001).prediction == -1
    ).all()
    assert (SmoothedClassifier(Threshold(5.0), noise, 2).predict(x, n=100, alpha=0.001).prediction == 0).all()


def test_certify_refuses_bad_input():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    smoothed = SmoothedClassifier(model, smoothcore.noise("dssn", sigma=0.2, dim=16), 3)
    with pytest.raises(DataError, match="1/255"):
        smoothed.certify(torch.rand(2, 1, 4, 4) * 0.999 + 0.0005)
    with pytest.raises(DataError, match="NaN"):
        smoothed.certify(torch.full((1, 1, 4, 4), float("nan")))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        smoothed.certify(torch.full((1, 1, 4, 4), 2.0))
    with pytest.raises(DataError, match="16 pixel values"):
        smoothed.certify(torch.zeros(1, 3, 4, 4))
    mc = SmoothedClassifier(model, smoothcore.noise("ssn", sigma=0.2, dim=16), 3)
    with pytest.raises(ConfigError, match="n0"):
        mc.certify(torch.zeros(1, 1, 4, 4), n0=0)
    with pytest.raises(ConfigError, match="alpha"):
        mc.certify(torch.zeros(1, 1, 4, 4), alpha=1.5)
    with pytest.raises(ConfigError, match="logits of shape"):
        SmoothedClassifier(model, smoothcore.noise("ssn", sigma=0.2, dim=16), 5).certify(
            torch.zeros(1, 1, 4, 4), n=10
        )


def test_an_image_without_its_batch_axis_is_a_clean_error_naming_the_shape():
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(3))
    conv(torch.zeros(1, 1, 4, 4))
    smoothed = SmoothedClassifier(conv, smoothcore.noise("dssn", sigma=0.2, dim=16), 3)
    with pytest.raises(DataError, match=r"could not evaluate noisy images of shape \(4, 4\)") as info:
        smoothed.certify(torch.zeros(1, 4, 4))  # (channels, height, width) of one image, no batch axis
    assert isinstance(info.value.__cause__, RuntimeError)  # the model's own error stays attached
    assert smoothed.certify(torch.zeros(1, 1, 4, 4)).prediction.shape == (1,)


class BatchSpy(nn.Module):
    """Wraps a model and records the size of every forward batch."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.sizes = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        return self.inner(x)


@pytest.mark.parametrize("name", ["uniform", "dssn"])
def test_a_per_call_batch_size_bounds_the_forward_batches_and_leaves_the_results_unchanged(name):
    noise = smoothcore.noise(name, sigma=0.3, dim=48)
    spy = BatchSpy(small_net())
    smoothed = SmoothedClassifier(spy, noise, 4, max_batch=1000)
    x = quantised((4, 3, 4, 4), seed=2)
    wide = smoothed.certify(x, n0=10, n=300)
    assert max(spy.sizes) > 64
    spy.sizes.clear()
    narrow = smoothed.certify(x, n0=10, n=300, batch_size=64)
    assert max(spy.sizes) <= 64 and smoothed.engine.max_batch == 1000  # the override ends with the call
    assert torch.equal(wide.prediction, narrow.prediction) and torch.equal(
        wide.radius.nan_to_num(-1), narrow.radius.nan_to_num(-1)
    )
    spy.sizes.clear()
    assert torch.equal(
        smoothed.predict(x, n=200, batch_size=32).prediction, smoothed.predict(x, n=200).prediction
    )
    assert max(spy.sizes) > 32
    with pytest.raises(ConfigError, match="batch_size"):
        smoothed.certify(x, batch_size=0)


@pytest.mark.parametrize("name", ["gaussian", "laplace", "uniform", "ssn"])
def test_monte_carlo_results_do_not_depend_on_the_batch_size_for_any_noise(name):
    """An image's draws come in fixed blocks of its own stream: the same p_lower whatever max_batch (and on CUDA,
    whatever --max-batch auto measures). dim 3 is not a multiple of 16, where CPU Gaussian sampling of one call of
    n values differs from several smaller calls."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3))
    noise = smoothcore.noise(name, sigma=0.5, dim=3)
    x = torch.rand(4, 3)
    results = [
        SmoothedClassifier(model, noise, 3, max_batch=size).certify(x, n0=50, n=700, indices=[3, 1, 4, 5])
        for size in (7, 64, 129, 5000)
    ]
    for other in results[1:]:
        assert torch.equal(other.p_lower, results[0].p_lower)
    alone = SmoothedClassifier(model, noise, 3, max_batch=64).certify(x[2:3], n0=50, n=700, indices=[4])
    assert alone.p_lower[0] == results[0].p_lower[2]


def test_sequential_estimation_continues_the_streams_of_a_full_run():
    """The draws of the sequential looks are the draws a full run would make, in the same order: an image that
    is never decided early ends with the full run's counts and bound (at the sequential run's per-look alpha)."""
    model = Threshold(0.5)
    noise = smoothcore.noise("uniform", sigma=0.25, dim=16)
    x = quantised((1, 1, 4, 4))
    x[:, 0, 0, 0] = 0.5  # a coin flip: never decided before the last look
    smoothed = SmoothedClassifier(model, noise, 2, max_batch=100)
    sequential = smoothed.certify(x, n0=20, n=640, radii=[0.1], looks=6, indices=[7])
    full = smoothed.certify(x, n0=20, n=640, alpha=0.001 / 6, indices=[7])
    assert int(sequential.draws[0]) == 660
    assert torch.allclose(sequential.p_lower, full.p_lower)


def test_a_model_in_training_mode_is_evaluated_in_eval_mode_and_left_as_it_was():
    """Certifying between training epochs: dropout and batch-norm act as at evaluation (deterministic counts),
    batch-norm running statistics stay untouched, and every module keeps its mode afterwards."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    frozen = nn.Sequential(nn.Identity())
    frozen.eval()
    model.append(frozen)
    model.train()
    frozen.eval()  # a submodule the user keeps in eval mode stays so
    stats = model[2].running_mean.clone()
    smoothed = SmoothedClassifier(model, smoothcore.noise("dssn", sigma=0.2, dim=16), 3)
    assert model.training  # building it changes nothing
    x = quantised((3, 1, 4, 4))
    first, second = smoothed.certify(x), smoothed.certify(x)
    assert torch.equal(first.counts, second.counts)
    assert torch.equal(model[2].running_mean, stats)
    assert model.training and model[3].training and not frozen.training
    model.eval()
    assert torch.equal(smoothed.certify(x).counts, first.counts)


def test_python_api_arguments_are_checked_like_the_command_line():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    mc = SmoothedClassifier(model, smoothcore.noise("ssn", sigma=0.2, dim=16), 3)
    x = quantised((2, 1, 4, 4))
    for radii in ([float("nan")], [-1.0], 0.5, "0.5,1", []):
        with pytest.raises(ConfigError, match="radii"):
            mc.certify(x, n=20, radii=radii)
    with pytest.raises(ConfigError, match="indices must be non-negative integers"):
        mc.certify(x, n=20, indices=[1.7, 2.2])
    with pytest.raises(ConfigError, match="2 images"):
        mc.certify(x, n=20, indices=[1])
    # numpy numbers, as computed from shapes and arrays, are accepted where Python numbers are
    dim = np.prod(x.shape[1:])
    smoothed = SmoothedClassifier(
        model, smoothcore.noise("ssn", sigma=0.2, dim=dim), np.int64(3), max_batch=np.int64(64)
    )
    out = smoothed.certify(x, n0=np.int64(10), n=np.int64(50), indices=np.arange(2), radii=np.array([0.1]))
    assert out.prediction.shape == (2,)
    assert (
        SmoothedClassifier(model, mc.noise, 3, max_batch="auto").engine.max_batch == 1024
    )  # CPU: the default


def test_dtype_mistakes_are_named_as_such():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = quantised((2, 1, 4, 4))
    dssn = SmoothedClassifier(model, smoothcore.noise("dssn", sigma=0.2, dim=16), 3)
    with pytest.raises(DataError, match="float16 cannot hold every multiple of 1/255"):
        dssn.certify(x.half())
    with pytest.raises(DataError, match=r"weights are torch.float32 but the images are torch.float64"):
        dssn.certify(x.double())
    with pytest.raises(ConfigError, match="must be a torch.nn.Module"):
        SmoothedClassifier(lambda z: model(z), dssn.noise, 3)


@pytest.mark.parametrize(
    "counts, keeps",
    [
        ([60, 40], False),  # two-sided p = 0.057 (one-sided would be 0.028)
        ([61, 39], True),  # p = 0.035
        ([15, 5], True),  # p = 0.041 (testing against 21 draws instead of 20 would give 0.078)
        ([14, 5], False),  # p = 0.064
        ([61, 3, 39], True),  # the runner-up is the second largest count, wherever it is
        ([0, 0, 0], False),
    ],
)
def test_predict_keeps_the_top_class_exactly_when_the_two_sided_binomial_test_rejects_a_tie(
    counts, keeps, monkeypatch
):
    """Cohen et al.'s PREDICT at alpha = 0.05 on given counts: the test is two-sided, of the top count against the
    top two's total, at level alpha itself."""
    noise = smoothcore.noise("uniform", lambd=0.5, dim=1)
    smoothed = SmoothedClassifier(Threshold(0.5), noise, len(counts))
    monkeypatch.setattr(
        smoothed.engine, "sampled_counts", lambda noise, x, num, streams: torch.tensor([counts])
    )
    result = smoothed.predict(torch.full((1, 1), 0.5), n=sum(counts) or 1, alpha=0.05)
    assert result.prediction.tolist() == [int(np.argmax(counts)) if keeps else -1]


def test_sequential_estimation_stops_an_image_only_once_its_verdict_at_each_radius_is_settled():
    """With radii requested, an image stops at a look only when its confidence interval for p_A at that look
    (level alpha / 6: six looks) puts the radius on one side of every requested radius; here the true radius,
    p_A - 1/2 = 0.2, is one of them, so images stop only if the bound settles it, and many do not stop."""
    from smoothcore.stats import clopper_pearson_lower, clopper_pearson_upper

    noise = smoothcore.noise("uniform", lambd=0.5, dim=1)
    smoothed = SmoothedClassifier(Threshold(0.7), noise, 2, max_batch=8192)  # P(class 0) = 0.7
    n0, n, alpha, radii = 16, 4000, 0.01, [0.1, 0.2]
    result = smoothed.certify(
        torch.full((60, 1), 0.5), n0=n0, n=n, alpha=alpha, radii=radii, indices=range(60)
    )
    stopped = (result.draws < n0 + n).nonzero().flatten().tolist()
    assert stopped and len(stopped) < 60
    for i in stopped:
        a, m = int(result.prediction[i]), int(result.draws[i]) - n0
        k = int(result.counts[i, a])
        low, high = clopper_pearson_lower(k, m, alpha / 6), clopper_pearson_upper(k, m, alpha / 6)
        for r in radii:
            assert (float(noise.radius(low)) >= r) == (float(noise.radius(high)) >= r), (i, m, k, r)


def test_exact_counts_must_be_non_negative_integers_that_sum_to_the_draws():
    noise = smoothcore.noise("dssn", sigma=0.25, dim=4)
    m = noise.num_draws
    with pytest.raises(ConfigError, match="non-negative integer"):
        smoothcore.certify_counts(noise, torch.tensor([[-3, m + 3]]))
    with pytest.raises(ConfigError, match="sum to the noise's"):
        smoothcore.certify_counts(noise, torch.tensor([[1, m]]))


@pytest.mark.parametrize("value", [1.001, -0.001])
def test_pixels_just_outside_the_unit_interval_are_refused(value):
    smoothed = SmoothedClassifier(Threshold(0.5), smoothcore.noise("uniform", lambd=0.5, dim=1), 2)
    with pytest.raises(DataError, match=r"pixel values must be in \[0, 1\]"):
        smoothed.certify(torch.full((1, 1), value), n0=4, n=20)


def test_an_exact_noise_that_declares_no_early_decisions_enumerates_every_draw_under_radii():
    """A third-party exact noise must never stop early by accident: without ``early_decisions = True`` the
    requested radii change nothing, and the result is that of full enumeration."""
    from smoothcore import hookimpl
    from smoothcore.plugins import use_plugins
    from smoothcore_plugins.splitting import DerandomizedSplittingNoise

    class Plugin:
        @staticmethod
        @hookimpl
        def register_noises(register):
            register(
                "dssn-no-early", type("NoEarly", (DerandomizedSplittingNoise,), {"early_decisions": False})
            )

    use_plugins(Plugin)
    noise = smoothcore.noise("dssn-no-early", sigma=0.3, dim=16)
    smoothed = SmoothedClassifier(Threshold(0.5), noise, 2)
    x = quantised((6, 1, 4, 4), seed=1)
    early, full = smoothed.certify(x, radii=[0.01]), smoothed.certify(x)
    assert early.draws.tolist() == [noise.num_draws] * 6
    assert torch.equal(early.counts, full.counts) and torch.equal(early.radius, full.radius)


@pytest.mark.parametrize("name", ["uniform", "ssn", "gaussian", "laplace", "dssn"])
@pytest.mark.parametrize("seed", [-1, 2**32, 1.5])
def test_a_seed_that_would_alias_another_is_refused(name, seed):
    """Draw streams key their generators by 32-bit words: seed 2^32 would draw exactly what seed 0 draws."""
    with pytest.raises(ConfigError, match="seed.*(must be an integer in|takes an integer)"):
        smoothcore.noise(name, sigma=0.5, dim=4, seed=seed)
