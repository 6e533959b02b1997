"""Built-in certificates: the standard Monte-Carlo certificate (Cohen et al. 2019) and DSSN's exact one."""

from __future__ import annotations

import numpy as np
import torch

from smoothcore.certificates import ABSTAIN, EXACT, MONTE_CARLO, Certificate, Certified, Statistics
from smoothcore.hookspecs import hookimpl
from smoothcore.stats import clopper_pearson_lower


def dssn_margins(
    counts: torch.Tensor, remaining: torch.Tensor | int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For counts over the draws evaluated so far and ``remaining`` draws still to come (per image), the current
    leader ``a`` and the smallest and largest final margin ``min_j (c_a - c_j - [j < a])`` over every way the
    remaining draws can fall (all to one rival, or all to ``a``). With nothing remaining the margin is exactly
    ``c_a - c_b - [b < a]`` for the runner-up ``b``; ``a`` is the final prediction whenever the smallest margin is
    non-negative."""
    counts = counts.long()
    a = counts.argmax(dim=1)
    c_a = counts.gather(1, a.unsqueeze(1))
    below = (torch.arange(counts.shape[1], device=counts.device).unsqueeze(0) < a.unsqueeze(1)).long()
    diff = c_a - counts - below
    diff.scatter_(1, a.unsqueeze(1), torch.iinfo(torch.long).max)
    margin = diff.min(dim=1).values
    remaining = torch.as_tensor(remaining, dtype=torch.long, device=counts.device)
    return a, margin - remaining, margin + remaining


def margin_radius(margin: torch.Tensor) -> torch.Tensor:
    """DSSN radius of a margin: ``floor(margin / 2) / 255`` (float64)."""
    return torch.div(margin, 2, rounding_mode="floor").double() / 255.0


def dssn_certificate(
    counts: torch.Tensor, remaining: torch.Tensor | int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact DSSN certificate: prediction ``a = argmax c`` and radius ``floor((c_a - c_b - [b < a]) / 2) / 255``
    (float64), ``b`` the runner-up, ties to the lowest index. With ``remaining`` draws not evaluated (an early
    decision), the radius is the smallest the remaining draws could leave: sound, and the prediction is final
    (callers stop only once the smallest margin is non-negative)."""
    a, low, _ = dssn_margins(counts, remaining)
    return a, torch.where(low >= 0, margin_radius(low), torch.nan)


def dssn_decided(counts: torch.Tensor, remaining: torch.Tensor | int, radii) -> torch.Tensor:
    """Whether the remaining draws can no longer change an image's prediction, nor whether its radius reaches
    each of ``radii``: the verdicts of full enumeration are then already known."""
    _, low, high = dssn_margins(counts, remaining)
    decided = low >= 0
    r_low, r_high = margin_radius(low), margin_radius(high)
    for r in radii:
        decided &= (r_low >= float(r)) == (r_high >= float(r))
    return decided


class StandardCertificate(Certificate):
    """Cohen et al.: top class ``A`` from the selection counts, ``p_lower`` = two-sided Clopper-Pearson lower
    bound of ``k = counts[A]`` out of ``n`` at ``alpha``; abstain when ``p_lower < 1/2``, else the noise's radius."""

    name = "standard"
    kind = MONTE_CARLO
    description = "Clopper-Pearson lower bound on p_A, the noise's radius formula (Cohen et al. 2019)"

    def applies_to(self, noise) -> bool:
        return _has_radius(noise)

    def certify(self, noise, stats: Statistics) -> Certified:
        selection = stats.selection if stats.selection is not None else stats.counts
        top = selection.argmax(dim=1)
        k = stats.counts.gather(1, top.unsqueeze(1)).squeeze(1)
        p_lower = np.asarray(
            clopper_pearson_lower(k.cpu().numpy(), stats.num_draws, stats.alpha), dtype=np.float64
        )
        p_lower = torch.as_tensor(p_lower.reshape(-1))
        certified = p_lower >= 0.5
        prediction = torch.where(certified, top.cpu(), torch.full_like(top.cpu(), ABSTAIN))
        radius = torch.where(
            certified, torch.as_tensor(noise.radius(p_lower), dtype=torch.float64), torch.nan
        )
        return Certified(prediction, radius, noise.norm, p_lower=p_lower)


class ExactCertificate(Certificate):
    """The exact noise's own certificate from counts over every draw (DSSN: Levine & Feizi 2021)."""

    name = "exact"
    kind = EXACT
    description = (
        "deterministic certificate of an exact noise from counts over all its draws (DSSN: Levine & Feizi)"
    )

    def applies_to(self, noise) -> bool:
        from smoothcore.noise import ExactNoise

        return noise.exact and type(noise).certify_counts is not ExactNoise.certify_counts

    def certify(self, noise, stats: Statistics) -> Certified:
        prediction, radius = noise.certify_counts(stats.counts, stats.remaining)
        return Certified(prediction.cpu(), radius.cpu().double(), noise.norm)


def _has_radius(noise) -> bool:
    from smoothcore.noise import Noise

    return type(noise).radius is not Noise.radius


@hookimpl
def register_certificates(register) -> None:
    register("standard", StandardCertificate, description=StandardCertificate.description)
    register("exact", ExactCertificate, description=ExactCertificate.description)
