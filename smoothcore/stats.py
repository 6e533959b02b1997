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


def rival_test(counts, top: int, level: float) -> tuple[bool, int, str]:
    """Does some class beat ``top`` on these counts (``n`` = their sum)? True when, for the rival with the largest
    lower bound, the one-sided Clopper-Pearson upper bound on ``p_top`` lies below the one-sided lower bound on
    ``p_rival``, each at level ``level``. Returns (rejected, rival, evidence). The test of the auditor and of attack
    verification on fresh draws."""
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    n = int(counts.sum())
    upper_a = float(clopper_pearson_upper(int(counts[top]), n, 2 * level))
    others = [c for c in range(len(counts)) if c != top]
    lowers = np.asarray(clopper_pearson_lower(counts[others], n, 2 * level), dtype=np.float64).reshape(-1)
    j = int(lowers.argmax())
    rival = others[j]
    evidence = (
        f"n={n}: k_A={int(counts[top])} (upper {upper_a:.4f}) vs k_{rival}={int(counts[rival])} "
        f"(lower {lowers[j]:.4f}), level {level:.3g} per bound"
    )
    return bool(lowers[j] > upper_a), rival, evidence


def strongest_rival(counts, top: int) -> int:
    """The class other than ``top`` with the most votes in ``counts`` (the lowest index on ties)."""
    counts = np.asarray(counts, dtype=np.int64).reshape(-1).copy()
    counts[top] = -1
    return int(counts.argmax())


def pair_test(k_top: int, k_rival: int, level: float) -> tuple[bool, float]:
    """Does class ``rival`` (chosen in advance, independently of these draws) beat ``top``? Of the ``m = k_top +
    k_rival`` draws voting for either, ``k_rival ~ Binomial(m, q)`` with ``q = p_rival / (p_top + p_rival)``; reject
    ``q <= 1/2`` (i.e. ``p_rival <= p_top``) when the one-sided Clopper-Pearson lower bound on ``q`` at ``level``
    exceeds 1/2. Valid conditionally on ``m``, hence unconditionally; one bound instead of ``rival_test``'s one per
    class. Returns (rejected, lower bound)."""
    m = int(k_top) + int(k_rival)
    if m == 0:
        return False, 0.0
    lower = float(clopper_pearson_lower(int(k_rival), m, 2 * level))
    return lower > 0.5, lower
