"""Confidence bounds for binomial proportions (Clopper-Pearson, as in Cohen et al. 2019)."""

from __future__ import annotations

import numpy as np
from scipy.stats import beta

from smoothcore.errors import ConfigError


def _check(k, n, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    k_arr = np.asarray(k, dtype=np.float64)
    n_arr = np.asarray(n, dtype=np.float64)
    if np.any(k_arr != np.round(k_arr)) or np.any(n_arr != np.round(n_arr)):
        raise ConfigError(f"k and n are counts (integers), got k={k!r}, n={n!r}")
    if not 0.0 < float(alpha) < 1.0:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}")
    if np.any(n_arr < 1) or np.any(k_arr < 0) or np.any(k_arr > n_arr):
        raise ConfigError(f"need 0 <= k <= n and n >= 1, got k={k!r}, n={n!r}")
    return k_arr, n_arr


def clopper_pearson_lower(k, n, alpha: float):
    """Lower end of the two-sided (1 - alpha) Clopper-Pearson interval for k successes in n trials.

    Equals ``statsmodels.stats.proportion.proportion_confint(k, n, alpha, method="beta")[0]``: the
    ``alpha / 2`` quantile of Beta(k, n - k + 1), and 0 when k = 0. Vectorised over ``k`` and ``n``; returns a
    float for scalar input, else a float64 array.
    """
    k_arr, n_arr = _check(k, n, alpha)
    with np.errstate(invalid="ignore"):
        lower = np.where(k_arr > 0, beta.ppf(alpha / 2, np.maximum(k_arr, 1), n_arr - k_arr + 1), 0.0)
    return float(lower) if lower.ndim == 0 else lower


def clopper_pearson_upper(k, n, alpha: float):
    """Upper end of the two-sided (1 - alpha) Clopper-Pearson interval: the ``1 - alpha / 2`` quantile of
    Beta(k + 1, n - k), and 1 when k = n."""
    k_arr, n_arr = _check(k, n, alpha)
    with np.errstate(invalid="ignore"):
        upper = np.where(k_arr < n_arr, beta.ppf(1 - alpha / 2, k_arr + 1, np.maximum(n_arr - k_arr, 1)), 1.0)
    return float(upper) if upper.ndim == 0 else upper
