"""Built-in certificates: the standard Monte-Carlo certificate (Cohen et al. 2019) and the exact certificate of
enumerable noises (DSSN's is ``DerandomizedSplittingNoise.certify_counts``). Each applies to the noises that
declare the capability it relies on (see :mod:`smoothcore.noises`)."""

from __future__ import annotations

import numpy as np
import torch

from smoothcore.certificates import ABSTAIN, EXACT, MONTE_CARLO, Certificate, Certified, Statistics
from smoothcore.hookspecs import hookimpl
from smoothcore.noises import Noise
from smoothcore.stats import clopper_pearson_lower


class StandardCertificate(Certificate):
    """Cohen et al.: top class ``A`` from the selection counts, ``p_lower`` = two-sided Clopper-Pearson lower
    bound of ``k = counts[A]`` out of ``n`` at ``alpha``; abstain when ``p_lower < 1/2``, else the noise's radius."""

    kind = MONTE_CARLO
    description = "Clopper-Pearson lower bound on p_A, the noise's radius formula (Cohen et al. 2019)"

    def applies_to(self, noise: Noise) -> bool:
        return noise.monte_carlo_certificate

    def certify(self, noise: Noise, stats: Statistics) -> Certified:
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

    kind = EXACT
    description = (
        "deterministic certificate of an exact noise from counts over all its draws (DSSN: Levine & Feizi)"
    )

    def applies_to(self, noise: Noise) -> bool:
        return noise.exact

    def certify(self, noise: Noise, stats: Statistics) -> Certified:
        prediction, radius = noise.certify_counts(stats.counts, stats.remaining)
        return Certified(prediction.cpu(), radius.cpu().double(), noise.norm)


@hookimpl
def register_certificates(register) -> None:
    register("standard", StandardCertificate, description=StandardCertificate.description)
    register("exact", ExactCertificate, description=ExactCertificate.description)
