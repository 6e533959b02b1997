"""Two-sided and box-constrained L1 certificates for uniform and SSN noise (Voráček & Hein, ICML 2023).

Both use a lower bound on ``p_A`` and an upper bound on the runner-up ``p_B`` (see :func:`margin_bounds`) and
certify every perturbation whose coupling agreement ``prod_i (1 - min(|delta_i| / (2 lambda), 1))`` stays above
``1 - (p_A_lower - p_B_upper) / 2``. ``two-sided`` bounds the agreement by the union bound, for any perturbation;
``box`` computes the exact worst case over perturbations that keep the image in ``[0, 1]^d``. Derivations and the
DSSN discussion: ../docs/certificates.md.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch

from smoothcore.certificates import ABSTAIN, MONTE_CARLO, Certificate, Certified, Statistics
from smoothcore.errors import ConfigError
from smoothcore.hookspecs import hookimpl
from smoothcore.noises import Noise
from smoothcore.stats import clopper_pearson_lower, clopper_pearson_upper
from smoothcore_plugins.splitting import SplittingNoise
from smoothcore_plugins.uniform import UniformNoise

CHUNK_ELEMENTS = 1 << 22  # rows of (batch, d) are processed in chunks of at most this many values


def margin_bounds(stats: Statistics) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top class ``A`` (from the selection counts, as the standard certificate), ``p_A_lower`` and ``p_B_upper``.

    ``p_A_lower`` is the standard certificate's bound, the lower end of the two-sided Clopper-Pearson interval at
    ``alpha``: a one-sided bound that fails with probability at most ``alpha / 2``. ``p_B_upper`` is the upper end
    of the two-sided interval at ``alpha`` at the runner-up's count ``k_B = max_{c != A} k_c``. It bounds
    ``p_B = max_{c != A} p_c`` although ``B`` is chosen from the same counts: let ``B*`` be the class with the
    largest true probability among the others (fixed once ``A`` is, and ``A`` comes from independent draws); the
    bound increases with the count and ``k_B >= k_{B*}``, so ``p_B_upper`` is at least the bound at ``k_{B*}``,
    which is below ``p_{B*} = p_B`` with probability at most ``alpha / 2``. Both bounds hold together with
    probability at least ``1 - alpha``. (``p_B_upper <= 1 - p_A_lower`` always; the minimum is taken anyway.)
    """
    if stats.alpha is None:
        raise ConfigError(
            "this certificate is Monte-Carlo: it needs alpha (and selection and estimation counts)"
        )
    counts = stats.counts.cpu().long()
    selection = (stats.selection if stats.selection is not None else stats.counts).cpu()
    top = selection.argmax(dim=1)
    n, classes = stats.num_draws, counts.shape[1]
    k_a = counts.gather(1, top.unsqueeze(1)).squeeze(1)
    p_a = np.asarray(clopper_pearson_lower(k_a.numpy(), n, stats.alpha), dtype=np.float64).reshape(-1)
    if classes > 1:
        others = counts.scatter(1, top.unsqueeze(1), -1)
        k_b = others.max(dim=1).values
        p_b = np.asarray(clopper_pearson_upper(k_b.numpy(), n, stats.alpha), dtype=np.float64)
        p_b = np.minimum(p_b.reshape(-1), 1.0 - p_a)
    else:
        p_b = np.zeros_like(p_a)
    return top, torch.as_tensor(p_a), torch.as_tensor(p_b)


def agreement(delta: torch.Tensor, lambd: float) -> torch.Tensor:
    """``prod_i (1 - min(|delta_i| / (2 lambda), 1))`` over the last dimension: the probability that the coupled
    noisy images of ``x`` and ``x + delta`` coincide (uniform: the overlap of the two boxes, the largest possible;
    SSN: shared offsets, no cut between ``x_i`` and ``x_i + delta_i``)."""
    return (1.0 - (delta.double().abs() / (2.0 * lambd)).clamp(max=1.0)).prod(dim=-1)


def union_radius(margin: torch.Tensor, lambd: float) -> torch.Tensor:
    """Two-sided radius ``lambda * margin``: ``agreement >= 1 - ||delta||_1 / (2 lambda)`` (union bound), so every
    ``delta`` with ``||delta||_1 < lambda * margin`` keeps ``agreement > 1 - margin / 2``."""
    return lambd * margin.double()


def box_rooms(x: torch.Tensor) -> torch.Tensor:
    """How far each pixel can move inside ``[0, 1]``: ``max(x_i, 1 - x_i)``, as ``(batch, d)`` float64."""
    flat = x.detach().cpu().double().reshape(len(x), -1)
    return torch.maximum(flat, 1.0 - flat)


def box_radius(rooms: torch.Tensor, margin: torch.Tensor, lambd: float) -> torch.Tensor:
    """Exact box-constrained radius, per row of ``rooms`` ``(batch, d)`` and ``margin`` ``(batch,)`` in [0, 1].

    Returns ``R = min { ||delta||_1 : |delta_i| <= rooms_i, agreement(delta) <= 1 - margin / 2 }``: every
    ``delta`` with ``|delta_i| <= rooms_i`` and ``||delta||_1 < R`` keeps ``agreement > 1 - margin / 2``, and one
    of norm ``R`` does not. The minimiser fills the largest rooms (capped at ``2 lambda``) in decreasing order and
    part of one more pixel, solved in closed form. If no such ``delta`` exists, every box-feasible perturbation is
    certified and ``R`` is the larger of the largest feasible norm ``sum_i rooms_i`` and the two-sided radius
    ``lambda margin`` (which certifies every ``delta`` below it, in the box or not; only tiny images have
    ``sum_i rooms_i < lambda margin``), so that ``R`` is never below the two-sided radius. Float64.
    """
    rooms = rooms.double()
    margin = margin.double().reshape(-1)
    if rooms.dim() != 2 or len(rooms) != len(margin):
        raise ConfigError(
            f"rooms must be (batch, d) and margin (batch,), got {tuple(rooms.shape)} and {tuple(margin.shape)}"
        )
    rows = max(1, CHUNK_ELEMENTS // max(1, rooms.shape[1]))
    parts = [
        _box_radius(rooms[i : i + rows], margin[i : i + rows], lambd) for i in range(0, len(rooms), rows)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def _box_radius(rooms: torch.Tensor, margin: torch.Tensor, lambd: float) -> torch.Tensor:
    width = 2.0 * lambd
    threshold = (1.0 - margin / 2.0).unsqueeze(1)
    caps = rooms.clamp(max=width).sort(dim=1, descending=True).values
    ones = torch.ones(len(caps), 1, dtype=torch.float64)
    kept = torch.cat(
        [ones, torch.cumprod(1.0 - caps / width, dim=1)], dim=1
    )  # agreement after filling j pixels
    spent = torch.cat([ones * 0.0, torch.cumsum(caps, dim=1)], dim=1)  # their L1 norm
    alive = (kept > threshold).sum(
        dim=1
    )  # kept is non-increasing: fills 0 .. alive-1 stay above the threshold
    j = (alive - 1).clamp(min=0).unsqueeze(1)
    kept_j, spent_j = kept.gather(1, j).squeeze(1), spent.gather(1, j).squeeze(1)
    partial = width * (
        1.0 - threshold.squeeze(1) / kept_j
    )  # the next pixel moves by a: kept_j (1 - a / width) = threshold
    radius = spent_j + partial
    radius = torch.where(alive == 0, torch.zeros_like(radius), radius)
    everything = torch.maximum(
        rooms.sum(dim=1), union_radius(margin, lambd)
    )  # every feasible delta certified
    return torch.where(alive == caps.shape[1] + 1, everything, radius)


def _applies(noise: Noise) -> bool:
    return isinstance(noise, (UniformNoise, SplittingNoise)) and not noise.exact


class _MarginCertificate(Certificate):
    """Shared part: predict ``A`` when ``p_A_lower >= p_B_upper`` (else abstain), radius from the margin."""

    kind = MONTE_CARLO

    def applies_to(self, noise: Noise) -> bool:
        return _applies(noise)

    @abstractmethod
    def radius(self, noise: Noise, margin: torch.Tensor, stats: Statistics) -> torch.Tensor:
        """Radius for ``margin = p_A_lower - p_B_upper`` (clamped to >= 0), per image."""

    def certify(self, noise: Noise, stats: Statistics) -> Certified:
        top, p_a, p_b = margin_bounds(stats)
        margin = p_a - p_b
        certified = margin >= 0.0
        radius = self.radius(noise, margin.clamp(min=0.0), stats)
        prediction = torch.where(certified, top, torch.full_like(top, ABSTAIN))
        radius = torch.where(certified, radius, torch.nan)
        return Certified(prediction, radius, "l1", p_lower=p_a, extra={"p_b_upper": p_b})


class TwoSidedCertificate(_MarginCertificate):
    """Radius ``lambda (p_A_lower - p_B_upper)``: certifies every ``delta`` with ``||delta||_1`` below it, inside
    the box or not, with probability at least ``1 - alpha``. Never below the standard radius
    ``2 lambda (p_A_lower - 1/2)``, since ``p_B_upper <= 1 - p_A_lower``."""

    description = (
        "lambda (p_A_lower - p_B_upper), Clopper-Pearson bounds on top class and runner-up (uniform, ssn)"
    )

    def radius(self, noise: Noise, margin: torch.Tensor, stats: Statistics) -> torch.Tensor:
        return union_radius(margin, noise.lambd)


class BoxCertificate(_MarginCertificate):
    """Voráček & Hein: the exact worst case over perturbations that keep the image in ``[0, 1]^d``. With
    probability at least ``1 - alpha``, ``A`` is the smoothed prediction at every ``x + delta`` in ``[0, 1]^d``
    with ``||delta||_1 < radius``. Never below the two-sided radius; above it exactly when
    ``lambda (p_A_lower - p_B_upper) > max_i max(x_i, 1 - x_i)``, except on tiny images where every perturbation
    in the box is certified and ``sum_i max(x_i, 1 - x_i)`` does not exceed the two-sided radius (then equal)."""

    description = "exact L1 radius for perturbed images kept in [0, 1]^d (Voráček & Hein 2023; uniform, ssn)"

    def radius(self, noise: Noise, margin: torch.Tensor, stats: Statistics) -> torch.Tensor:
        if stats.x is None:
            raise ConfigError("the box certificate needs the clean images (Statistics.x)")
        return box_radius(box_rooms(stats.x), margin, noise.lambd)


@hookimpl
def register_certificates(register) -> None:
    register("box", BoxCertificate, description=BoxCertificate.description)
    register("two-sided", TwoSidedCertificate, description=TwoSidedCertificate.description)
