import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.proportion import proportion_confint

from smoothcore import ConfigError, clopper_pearson_lower, clopper_pearson_upper
from smoothcore.stats import pair_test


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 200_000), frac=st.floats(0, 1), alpha=st.sampled_from([0.001, 0.01, 0.05, 0.3]))
def test_lower_bound_equals_statsmodels_beta_interval(n, frac, alpha):
    k = int(round(frac * n))
    low, high = proportion_confint(k, n, alpha=alpha, method="beta")
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(low, abs=1e-12)
    assert clopper_pearson_upper(k, n, alpha) == pytest.approx(high, abs=1e-12)


def test_lower_bound_is_vectorised_and_monotone_in_k():
    k = np.arange(0, 1001)
    low = clopper_pearson_lower(k, 1000, 0.001)
    assert low.shape == k.shape
    assert low[0] == 0.0
    assert np.all(np.diff(low) > 0)


def test_two_sided_interval_uses_half_of_alpha():
    from scipy.stats import beta

    assert clopper_pearson_lower(990, 1000, 0.01) == pytest.approx(beta.ppf(0.005, 990, 11))


@pytest.mark.parametrize(
    "k,n,alpha",
    [
        (5, 4, 0.01),
        (-1, 4, 0.01),
        (1, 0, 0.01),
        (1, 4, 0.0),
        (1, 4, 1.0),
        (0.99, 1000, 0.001),
        (0, 0, 0.01),  # no trials
        (5.5, 10, 0.01),
    ],
)
def test_invalid_arguments_are_clear_errors(k, n, alpha):
    with pytest.raises(ConfigError):
        clopper_pearson_lower(k, n, alpha)


# -- the paired test of attack verification ------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(m=st.integers(1, 5000), frac=st.floats(0, 1), level=st.sampled_from([0.0005, 0.002, 0.01, 0.05]))
def test_pair_test_rejects_exactly_when_the_binomial_tail_at_one_half_is_below_the_level(m, frac, level):
    from scipy.stats import binomtest

    k = round(frac * m)
    rejected, lower = pair_test(m - k, k, level)
    p_value = binomtest(k, m, 0.5, alternative="greater").pvalue
    assert rejected == (lower > 0.5)
    if abs(p_value - level) > 1e-9 * level:  # away from the boundary itself
        assert rejected == (p_value < level)


@pytest.mark.parametrize("m", [1, 10, 101, 1000, 4000])
@pytest.mark.parametrize("level", [0.001, 0.01, 0.05])
def test_pair_test_has_size_at_most_its_level_when_the_rival_ties(m, level):
    from scipy.stats import binom

    rejected = [k for k in range(m + 1) if pair_test(m - k, k, level)[0]]
    size = float(binom.pmf(rejected, m, 0.5).sum()) if rejected else 0.0
    assert size <= level
    if m >= 1000:  # and it is not needlessly conservative
        assert size > level / 3


def test_pair_test_needs_votes():
    assert pair_test(0, 0, 0.01) == (False, 0.0)
    assert pair_test(400, 600, 0.001)[0] and not pair_test(480, 520, 0.001)[0]
