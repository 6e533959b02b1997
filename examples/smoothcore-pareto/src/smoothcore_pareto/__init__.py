"""smoothcore-pareto: a third-party smoothcore plugin adding symmetric Pareto (double Lomax) L1 noise.

Noise: every pixel gets ``x_i + Z_i`` with independent ``Z_i`` of density

    q(z) = a / (2 s) * (1 + |z| / s) ** -(a + 1)

(a Lomax, i.e. Pareto type II, magnitude with a random sign): heavy-tailed, with tail index ``a`` (``tail``,
default 3). Scale convention of smoothcore: ``sigma`` is the standard deviation, finite for ``a > 2``:
``Var Z = 2 s^2 / ((a - 1) (a - 2))``, so ``s = sigma * sqrt((a - 1) (a - 2) / 2)`` (``s = sigma`` for
``a = 3``).

Certified L1 radius for a lower bound ``p`` on the top-class probability:

    radius(p) = s / (a + 1) * log(1 / (2 (1 - p)))

Why it is sound: ``log q`` is Lipschitz in ``z`` with constant ``L = (a + 1) / s`` (its derivative in ``|z|``
is ``-(a + 1) / (s + |z|)``), so the product density satisfies ``Q(z) <= exp(L ||z - z'||_1) Q(z')``. For any
set ``S`` of noisy images, ``P(x + delta + Z in S) <= exp(L ||delta||_1) P(x + Z in S)`` (the
Laplace-mechanism argument of differential privacy, as in Lecuyer et al. 2019). With ``S`` the inputs the base
classifier does not send to ``A``: ``1 - p_A(x + delta) <= exp(L ||delta||_1) (1 - p)``, which is below 1/2
whenever ``||delta||_1 < log(1 / (2 (1 - p))) / L``: ``A`` keeps more than half of the mass, so it stays the
smoothed prediction. For Laplace noise (``L = 1 / b``) the same argument gives Teng et al.'s radius
``-b log(2 (1 - p))``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from smoothcore import ConfigError, hookimpl
from smoothcore.noises import Noise, apply_radius, sigma_only

__version__ = "0.1.0"


class ParetoNoise(Noise):
    """Additive symmetric Pareto (double Lomax) noise with standard deviation ``sigma`` and tail index
    ``tail``; L1 radius ``s / (tail + 1) * log(1 / (2 (1 - p)))`` (module docstring)."""

    norm = "l1"
    monte_carlo_certificate = True  # radius(p_lower) below is sound: the standard certificate applies

    def __init__(
        self, *, sigma=None, lambd=None, dim: int, seed: int = 0, device="cpu", tail: float = 3.0
    ) -> None:
        super().__init__(dim=dim, seed=seed, device=device)
        self.sigma = sigma_only(sigma, lambd)
        try:
            self.tail = float(tail)
        except (TypeError, ValueError):
            raise ConfigError(f"tail must be a number > 2, got {tail!r}") from None
        if not math.isfinite(self.tail) or self.tail <= 2.0:
            raise ConfigError(f"tail must be a finite number > 2 (finite variance), got {tail!r}")
        self.scale = self.sigma * math.sqrt((self.tail - 1.0) * (self.tail - 2.0) / 2.0)

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # |Z| = s (U^(-1/a) - 1) with U uniform on (0, 1] is Lomax(a, s); the sign comes from the same uniform
        v = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 0.5
        u = (1.0 - 2.0 * v.abs()).clamp_min(torch.finfo(x.dtype).tiny)
        return x + torch.sign(v) * self.scale * (u.pow(-1.0 / self.tail) - 1.0)

    def lipschitz(self) -> float:
        """``L``: ``|log Q(z) - log Q(z')| <= L ||z - z'||_1`` for the noise density ``Q``."""
        return (self.tail + 1.0) / self.scale

    def radius(self, p_lower):
        return apply_radius(p_lower, lambda p: np.log(1.0 / (2.0 * (1.0 - p))) / self.lipschitz())

    def params(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sigma": self.sigma,
            "tail": self.tail,
            "scale": self.scale,
            "seed": self.seed,
        }


@hookimpl
def register_noises(register) -> None:
    register(
        "pareto",
        ParetoNoise,
        description="symmetric Pareto (double Lomax) noise, tail 3; L1, Monte-Carlo (smoothcore-pareto)",
    )
