"""Uniform noise (Yang et al. 2020): ``x + e`` with ``e ~ U[-lambda, lambda]^d``."""

from __future__ import annotations

from typing import Any

import torch

from smoothcore.hookspecs import hookimpl
from smoothcore.noises import Noise, apply_radius, uniform_scale


class UniformNoise(Noise):
    """Additive uniform noise; L1 radius ``2 lambda (p - 1/2)``, L-infinity radius
    ``2 lambda (1 - (3/2 - p)^(1/d))`` (``radius_linf``)."""

    norm = "l1"
    monte_carlo_certificate = True
    finite_draws = True

    def __init__(self, *, sigma=None, lambd=None, dim: int, seed: int = 0, device="cpu") -> None:
        super().__init__(dim=dim, seed=seed, device=device)
        self.sigma, self.lambd = uniform_scale(sigma, lambd)

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        e = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + (e * 2.0 - 1.0) * self.lambd

    def radius(self, p_lower):
        return apply_radius(p_lower, lambda p: 2.0 * self.lambd * (p - 0.5))

    def radius_linf(self, p_lower):
        return apply_radius(p_lower, lambda p: 2.0 * self.lambd * (1.0 - (1.5 - p) ** (1.0 / self.dim)))

    def params(self) -> dict[str, Any]:
        return {"name": self.name, "sigma": self.sigma, "lambda": self.lambd, "seed": self.seed}


@hookimpl
def register_noises(register) -> None:
    register(
        "uniform",
        UniformNoise,
        description="additive U[-lambda, lambda] noise (Yang et al. 2020); L1 and L-inf",
    )
