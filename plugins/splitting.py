"""Independent splitting noise (SSN) and its derandomized form (DSSN), Levine & Feizi (ICML 2021).

Every pixel is replaced by the midpoint of the cell (of width ``w = 2 lambda``, clipped to [0, 1]) that holds
it, the cells being cut at ``s + w Z`` for a per-pixel offset ``s``. SSN draws ``s ~ U[0, w)`` independently;
DSSN fixes a per-pixel template ``t`` (from the seed) and enumerates the ``levels = floor(2 lambda 255)`` offsets
``s = ((t + k) mod levels + 0.5) / 255`` for ``k = 0 .. levels - 1``. Arithmetic follows ../shared/SPEC.md
(float32, the reference's order) so that draws are bit-identical to the reference implementation's.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from smoothcore.errors import ConfigError
from smoothcore.hookspecs import hookimpl
from smoothcore.noises import ExactNoise, Noise, apply_radius, uniform_scale

MAX_DSSN_DRAWS = 1_000_000


class SplittingNoise(Noise):
    """SSN: independent uniform offsets per pixel and draw. L1 radius ``2 lambda (p - 1/2)``."""

    norm = "l1"
    monte_carlo_certificate = True
    finite_draws = True

    def __init__(self, *, sigma=None, lambd=None, dim: int, seed: int = 0, device="cpu") -> None:
        super().__init__(dim=dim, seed=seed, device=device)
        self.sigma, self.lambd = uniform_scale(sigma, lambd)
        self.width = 2.0 * self.lambd

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # in-place arithmetic on the fresh tensors (half the time on the CPU); the values are those of
        # ((x > s) + min(s, 1)) / 2 and (min(u, 1) + max(u - w, 0)) / 2 exactly (x <= 1, so x > s iff x > min(s, 1))
        s = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype).mul_(self.width)
        if self.lambd >= 0.5:
            s.clamp_(max=1.0)
            return s.add_(x > s).mul_(0.5)
        w = self.width
        u = (x - s).div_(w).ceil_().mul_(w).add_(s)
        out = (u - w).clamp_(min=0.0)
        return out.add_(u.clamp_(max=1.0)).mul_(0.5)

    def radius(self, p_lower):
        return apply_radius(p_lower, lambda p: 2.0 * self.lambd * (p - 0.5))

    def params(self) -> dict[str, Any]:
        return {"name": self.name, "sigma": self.sigma, "lambda": self.lambd, "seed": self.seed}


def dssn_levels(lambd: float) -> int:
    """Number of DSSN draws: ``floor(2 lambda 255)``. A product within 1e-9 of an integer counts as that integer:
    ``lambda = sigma * sqrt(3)`` computed from a sigma given for a grid value of lambda (k / 510) can land a rounding
    error below it, and the floor would lose a draw."""
    product = 2.0 * lambd * 255.0
    nearest = round(product)
    return int(nearest) if abs(product - nearest) <= 1e-9 else int(math.floor(product))


def dssn_template(seed: int, levels: int, dim: int) -> np.ndarray:
    """The reference template: ``numpy.random.RandomState(seed).randint(levels, size=dim)``."""
    return np.random.RandomState(seed).randint(levels, size=dim)


class DerandomizedSplittingNoise(ExactNoise):
    """DSSN: ``levels`` deterministic draws; exact certificate ``floor((c_a - c_b - [b < a]) / 2) / 255``.

    Inputs must lie on the 1/255 grid (``input_grid``); values within ``GRID_TOLERANCE / 255`` of it are
    accepted, and their draws, counts and certificate are exactly those of the rounded image (offsets sit half-way
    between grid values, so a deviation below ``0.5 / 255`` changes no cell).
    """

    norm = "l1"
    monte_carlo_certificate = (
        True  # the union bound of SSN, for users who estimate p_A by sampling DSSN draws
    )
    early_decisions = True
    input_grid = 255
    finite_draws = True

    def __init__(self, *, sigma=None, lambd=None, dim: int, seed: int = 0, device="cpu") -> None:
        super().__init__(dim=dim, seed=seed, device=device)
        self.sigma, self.lambd = uniform_scale(sigma, lambd)
        levels = dssn_levels(self.lambd)
        if levels < 1:
            raise ConfigError(
                f"DSSN needs lambda >= 1/510 so that at least one 1/255 level fits in a cell; got lambda={self.lambd:.4g}"
                f" (sigma={self.sigma:.4g})"
            )
        if levels > MAX_DSSN_DRAWS:
            raise ConfigError(
                f"DSSN with lambda={self.lambd:.4g} needs {levels} draws per image; at most {MAX_DSSN_DRAWS} are allowed"
            )
        self.levels = levels
        self.num_draws = levels
        self.width = levels / 255.0
        self.template = torch.from_numpy(dssn_template(self.seed, levels, self.dim)).to(self.device)

    def _template(self, device: torch.device) -> torch.Tensor:
        if self.template.device != device:
            self.template = self.template.to(device)
        return self.template

    def offsets(self, k: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Offsets ``s`` for draw indices ``k`` (any shape): ``(*k.shape, dim)`` float32."""
        t = self._template(device)
        return ((t + k.unsqueeze(-1)) % self.levels + 0.5) / 255.0

    TABLE_LIMIT = (
        1 << 23
    )  # offsets x pixels up to which the wide-cell outcomes of every draw are kept (3 x 32 MiB)

    def _wide_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """For lambda >= 1/2 and small enough images: the offsets of every draw and both cell midpoints
        ``(1 + min(s, 1)) / 2`` and ``min(s, 1) / 2``, ``(levels, dim)`` each, computed once per device."""
        if self.lambd < 0.5 or self.levels * self.dim > self.TABLE_LIMIT:
            return None
        cached = getattr(self, "_tables", None)
        if cached is None or cached[0].device != device:
            s = self.offsets(torch.arange(self.levels, device=device), device)
            m = s.clamp(max=1.0)
            cached = (s, (1.0 + m) / 2.0, (0.0 + m) / 2.0)
            self._tables = cached
        return cached

    def _split(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Cell midpoints for flat images ``x`` (..., dim) and offsets ``s`` broadcastable to it (float32)."""
        x = x.float()
        if self.lambd >= 0.5:
            # ([x > s] + min(s, 1)) / 2, with both outcomes computed on the (smaller) offsets: bit-identical, since
            # (1 + m) / 2 and (0 + m) / 2 are exactly what the reference's order evaluates.
            m = s.clamp(max=1.0)
            return torch.where(x > s, (1.0 + m) / 2.0, (0.0 + m) / 2.0)
        u = torch.ceil(255.0 * (x - s) / self.levels) * self.levels / 255.0 + s
        return (u.clamp(max=1.0) + (u - self.levels / 255.0).clamp(min=0.0)) / 2.0

    def draws(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        if not 0 <= start <= stop <= self.levels:
            raise ConfigError(f"draw range [{start}, {stop}) is outside [0, {self.levels})")
        batch = x.shape[0]
        tables = self._wide_tables(x.device)
        if tables is not None:
            s, high, low = (t[start:stop].unsqueeze(0) for t in tables)
            out = torch.where(x.reshape(batch, 1, -1).float() > s, high, low)
            return out.reshape(batch, stop - start, *x.shape[1:]).to(x.dtype)
        k = torch.arange(start, stop, device=x.device)
        s = self.offsets(k, x.device)  # (K, dim)
        out = self._split(x.reshape(batch, 1, -1), s.unsqueeze(0))
        return out.reshape(batch, stop - start, *x.shape[1:]).to(x.dtype)

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        batch = x.shape[0]
        k = torch.randint(self.levels, (batch,), generator=generator, device=x.device)
        s = self.offsets(k, x.device)  # (batch, dim)
        return self._split(x.reshape(batch, -1), s).reshape(x.shape).to(x.dtype)

    def certify_counts(
        self, counts: torch.Tensor, remaining: torch.Tensor | int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prediction ``a = argmax c`` and radius ``floor((c_a - c_b - [b < a]) / 2) / 255`` (float64), ``b`` the
        runner-up, ties to the lowest index. With ``remaining`` draws not evaluated (an early decision), the radius
        is the smallest the remaining draws could leave: sound, and the prediction is final (the engine stops only
        once the smallest margin is non-negative). NaN where the remaining draws could still change the
        prediction."""
        a, low, _ = dssn_margins(counts, remaining)
        return a, torch.where(low >= 0, margin_radius(low), torch.nan)

    def decided(self, counts: torch.Tensor, remaining: torch.Tensor | int, radii) -> torch.Tensor:
        """Whether the remaining draws can no longer change an image's prediction, nor whether its radius reaches
        each of ``radii``: the verdicts of full enumeration are then already known."""
        _, low, high = dssn_margins(counts, remaining)
        decided = low >= 0
        r_low, r_high = margin_radius(low), margin_radius(high)
        for r in radii:
            decided &= (r_low >= float(r)) == (r_high >= float(r))
        return decided

    def radius(self, p_lower):
        # The same union bound as SSN, for users who estimate p_A by sampling DSSN draws.
        return apply_radius(p_lower, lambda p: 2.0 * (self.levels / 255.0 / 2.0) * (p - 0.5))

    def params(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sigma": self.sigma,
            "lambda": self.lambd,
            "levels": self.levels,
            "seed": self.seed,
        }


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


@hookimpl
def register_noises(register) -> None:
    register(
        "ssn",
        SplittingNoise,
        description="independent splitting noise (Levine & Feizi 2021); L1, Monte-Carlo",
    )
    register(
        "dssn",
        DerandomizedSplittingNoise,
        description="derandomized splitting noise; L1, exact and deterministic",
    )
