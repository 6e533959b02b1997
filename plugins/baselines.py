"""Baseline noises: Gaussian (L2, Cohen et al. 2019) and Laplace (L1, Teng et al. 2020)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.stats import norm

from smoothcore.hookspecs import hookimpl
from smoothcore.noises import Noise, apply_radius, sigma_only


class GaussianNoise(Noise):
    """``x + sigma * N(0, I)``; L2 radius ``sigma * Phi^-1(p)``."""

    norm = "l2"
    monte_carlo_certificate = True
    finite_draws = True

    def __init__(self, *, sigma=None, lambd=None, dim: int, seed: int = 0, device="cpu") -> None:
        super().__init__(dim=dim, seed=seed, device=device)
        self.sigma = sigma_only(sigma, lambd)

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return (
            torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype).mul_(self.sigma).add_(x)
        )

    def radius(self, p_lower):
        return apply_radius(p_lower, lambda p: self.sigma * norm.ppf(p))

    def params(self) -> dict[str, Any]:
        return {"name": self.name, "sigma": self.sigma, "seed": self.seed}


class LaplaceNoise(Noise):
    """``x + Laplace(0, b)`` per pixel with ``b = sigma / sqrt(2)``; L1 radius ``-b log(2 (1 - p))``."""

    norm = "l1"
    monte_carlo_certificate = True
    finite_draws = True

    def __init__(self, *, sigma=None, lambd=None, dim: int, seed: int = 0, device="cpu") -> None:
        super().__init__(dim=dim, seed=seed, device=device)
        self.sigma = sigma_only(sigma, lambd)
        self.b = self.sigma / math.sqrt(2.0)

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # inverse CDF of Laplace(0, b) at u ~ U(-1/2, 1/2): -b sign(u) log(1 - 2|u|)
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 0.5
        tiny = torch.finfo(x.dtype).tiny
        return x - self.b * torch.sign(u) * torch.log((1.0 - 2.0 * u.abs()).clamp_min(tiny))

    def radius(self, p_lower):
        return apply_radius(p_lower, lambda p: -self.b * np.log(2.0 * (1.0 - p)))

    def params(self) -> dict[str, Any]:
        return {"name": self.name, "sigma": self.sigma, "b": self.b, "seed": self.seed}


@hookimpl
def register_noises(register) -> None:
    register("gaussian", GaussianNoise, description="additive N(0, sigma^2) noise (Cohen et al. 2019); L2")
    register(
        "laplace",
        LaplaceNoise,
        description="additive Laplace noise, b = sigma/sqrt(2) (Teng et al. 2020); L1",
    )
