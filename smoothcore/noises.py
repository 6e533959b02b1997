"""What a noise is.

A :class:`Noise` turns a batch of clean images into noisy ones (``sample``). What else it can do it *declares* in
class attributes, which the framework reads (it never inspects which methods a subclass overrides):

- ``monte_carlo_certificate``: ``radius(p_lower)`` is implemented and sound, so the ``standard`` certificate (and
  sequential early decisions) apply;
- ``exact``: an :class:`ExactNoise`, a finite, deterministic set of ``num_draws`` draws enumerated by ``draws``
  and certified from exact counts by ``certify_counts`` (the ``exact`` certificate);
- ``early_decisions`` (exact noises): ``decided(counts, remaining, radii)`` may end an enumeration early;
- ``input_grid``: inputs must lie on the ``1 / input_grid`` grid (DSSN: 255), checked by ``check_input``;
- ``finite_draws``: draws of finite images are finite by construction (the engine skips its NaN/Inf check).

A noise's name is the one it was registered under: :func:`make_noise` gives it to the noise (``noise.name``), so
``params()`` and ``repr`` read it from there. Noises only transform tensors on the input's device: no models, no
loops over draws, no host synchronisation. The helpers plugins share (:func:`apply_radius`, :func:`uniform_scale`,
:func:`sigma_only`, :func:`positive_scale`) are public here.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from smoothcore.checks import is_int
from smoothcore.devices import resolve_device
from smoothcore.errors import ConfigError, DataError, PluginError

SQRT3 = math.sqrt(3.0)
MAX_SCALE = 1e4  # a noise scale beyond this is certainly a typo: every image in [0, 1] is drowned long before
GRID_TOLERANCE = 1e-3  # a value within 1e-3 / grid of a multiple of 1 / grid counts as on the grid


class Noise(ABC):
    """A noise distribution over images with pixel values in [0, 1].

    Subclasses set ``norm`` (the norm of their radius: ``"l1"``, ``"l2"``), implement ``sample`` and declare their
    capabilities (module docstring); a Monte-Carlo noise sets ``monte_carlo_certificate = True`` and implements
    ``radius``. ``name`` is given by the registry (:func:`make_noise`).
    """

    name: str = "noise"
    norm: str = "l1"
    monte_carlo_certificate: bool = False
    exact: bool = False
    early_decisions: bool = False
    input_grid: int | None = None
    #: True when the draws of finite images are finite by construction (bounded arithmetic on bounded inputs):
    #: the engine then skips its NaN/Inf check of the draws. A plugin that sets it answers for it.
    finite_draws: bool = False

    def __init__(self, *, dim: int, seed: int = 0, device: str | torch.device = "cpu") -> None:
        self.dim = check_dim(dim)
        if not is_int(seed) or not 0 <= seed < 2**32:
            # the draw streams key generators by 32-bit words: a larger or negative seed would alias another
            raise ConfigError(f"seed must be an integer in [0, 2^32), got {seed!r}")
        self.seed = int(seed)
        self.device = resolve_device(device)

    @abstractmethod
    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One random draw per image: ``x`` ``(batch, *image)`` -> noisy ``(batch, *image)``, same device/dtype."""

    def radius(self, p_lower):
        """Certified radius (in ``self.norm``) for a lower bound ``p_lower`` >= 1/2 on the top-class probability.

        Accepts a float, a numpy array or a tensor and returns the same kind (see :func:`apply_radius`). Declared
        by ``monte_carlo_certificate = True``.
        """
        raise NotImplementedError(
            f"noise {self.name!r} implements no radius(p_lower); a noise that does declares "
            "monte_carlo_certificate = True"
        )

    def check_input(self, x: torch.Tensor) -> None:
        """Raise DataError if ``x`` is not a valid input for this noise's certificate: float images in [0, 1] with
        ``dim`` values each and, when ``input_grid`` is declared, on its grid. Called before every certification;
        an override calls ``super().check_input(x)`` first."""
        check_images(x, self.dim)
        if self.input_grid is not None:
            check_on_grid(x, self.input_grid, self.name)

    def params(self) -> dict[str, Any]:
        """The parameters that define this noise (recorded with every result)."""
        return {"name": self.name, "seed": self.seed}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if k != "name")
        return f"{type(self).__name__}({inner})"


class ExactNoise(Noise):
    """A noise with finitely many equally likely draws that can be enumerated, certified from exact counts.

    ``draws(x, start, stop)`` returns draws ``start .. stop-1`` of every image: ``(batch, stop - start, *image)``.
    ``sample`` must pick one of these draws uniformly at random (training uses it).
    """

    exact = True
    num_draws: int

    @abstractmethod
    def draws(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor: ...

    @abstractmethod
    def certify_counts(
        self, counts: torch.Tensor, remaining: torch.Tensor | int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``counts`` ``(batch, classes)`` over all ``num_draws`` draws -> (prediction, radius). With ``remaining``
        draws per image not evaluated (early decisions), a radius that holds however they fall."""

    def decided(self, counts: torch.Tensor, remaining: torch.Tensor | int, radii) -> torch.Tensor:
        """Per image: can the ``remaining`` draws no longer change the prediction, nor whether the radius reaches
        each of ``radii``? Declared by ``early_decisions = True``; without it an enumeration runs to the end."""
        raise NotImplementedError(
            f"noise {self.name!r} implements no decided(counts, remaining, radii); a noise that does declares "
            "early_decisions = True"
        )


def check_declarations(noise: Noise, plugin: str) -> None:
    """A built noise's declared capabilities are consistent: it certifies something, and what only exact noises
    can do is declared by an exact one. The error names the plugin and what to declare."""
    where = f"plugin {plugin!r} built noise {noise.name!r}"
    if not (noise.monte_carlo_certificate or noise.exact):
        raise PluginError(
            f"{where}, which declares no certificate",
            hint="a noise that implements radius(p_lower) declares it with the class attribute "
            "monte_carlo_certificate = True; an enumerable noise subclasses ExactNoise (see docs/plugins.md)",
        )
    for declared in ("exact", "early_decisions"):
        if getattr(noise, declared) and not isinstance(noise, ExactNoise):
            raise PluginError(f"{where}, which declares {declared} but is not an ExactNoise")
    grid = noise.input_grid
    if grid is not None and (not is_int(grid) or grid < 1):
        raise PluginError(f"{where} with input_grid={grid!r}; it must be a positive integer or None")


def check_dim(dim: Any) -> int:
    if not is_int(dim) or dim < 1:
        raise ConfigError(
            f"dim (the number of pixel values per image) must be a positive integer, got {dim!r}"
        )
    return int(dim)


def uniform_scale(sigma: float | None, lambd: float | None) -> tuple[float, float]:
    """Resolve the uniform-family scale: exactly one of ``sigma`` (standard deviation) and ``lambd``
    (half-width, ``lambd = sigma * sqrt(3)``). Returns ``(sigma, lambd)``."""
    if sigma is not None and lambd is not None:
        raise ConfigError(f"give sigma or lambda, not both (got sigma={sigma!r}, lambda={lambd!r})")
    if sigma is None and lambd is None:
        raise ConfigError("this noise needs a scale: give sigma (standard deviation) or lambda (half-width)")
    if sigma is not None:
        sigma = positive_scale("sigma", sigma)
        return sigma, sigma * SQRT3
    lambd = positive_scale("lambda", lambd)
    return lambd / SQRT3, lambd


def sigma_only(sigma: float | None, lambd: float | None) -> float:
    """The scale of a noise that takes ``sigma`` (its standard deviation) and no ``lambd``: the Gaussian,
    Laplace and heavier-tailed noises. Returns ``sigma``, validated by :func:`positive_scale`."""
    if lambd is not None:
        raise ConfigError(
            f"this noise takes sigma (its standard deviation), not lambda (got lambda={lambd!r})"
        )
    if sigma is None:
        raise ConfigError("this noise needs sigma (its standard deviation)")
    return positive_scale("sigma", sigma)


def apply_radius(p_lower, formula: Callable[[np.ndarray], np.ndarray]):
    """Evaluate a radius ``formula`` (numpy in, numpy out) on a float, a numpy array or a tensor and return the
    same kind: a float, a float64 array, a float64 CPU tensor. Division by zero and logs of 0 give inf or NaN
    quietly (the standard certificate abstains below 1/2 anyway)."""
    if isinstance(p_lower, torch.Tensor):
        out = formula(p_lower.detach().cpu().double().numpy())
        return torch.as_tensor(out, dtype=torch.float64)
    arr = np.asarray(p_lower, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = formula(arr)
    return float(out) if np.ndim(out) == 0 else out


def positive_scale(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    if v > MAX_SCALE:
        raise ConfigError(f"{name}={v:g} is absurdly large for images in [0, 1] (at most {MAX_SCALE:g})")
    return v


def check_images(x: Any, dim: int | None = None) -> None:
    """Inputs are float tensors ``(batch, *image)`` with finite values in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise DataError(f"images must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise DataError(f"images must be floating point in [0, 1], got dtype {x.dtype}")
    if x.dim() < 2:
        raise DataError(f"images must have shape (batch, *image), got {tuple(x.shape)}")
    per_image = math.prod(x.shape[1:])
    if dim is not None and per_image != dim:
        raise DataError(
            f"each image must have {dim} pixel values (the noise's dim), got {per_image} ({tuple(x.shape[1:])})"
        )
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise DataError("images contain NaN or Inf values")
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise DataError(
            f"pixel values must be in [0, 1], got range [{float(x.min()):.4g}, {float(x.max()):.4g}]"
        )


def is_quantised(x: torch.Tensor, levels: int = 255, tol: float = GRID_TOLERANCE) -> bool:
    """True when every value of ``x`` is within ``tol / levels`` of a multiple of ``1 / levels``."""
    scaled = x.double() * levels
    return bool(((scaled - scaled.round()).abs() <= tol).all())


def check_on_grid(x: torch.Tensor, grid: int, name: str) -> None:
    """Raise DataError unless ``x`` can hold the ``1 / grid`` grid (float32 or float64) and lies on it. Values
    within ``GRID_TOLERANCE / grid`` of the grid (float rounding) are accepted and stand for their rounded value."""
    if x.dtype in (torch.float16, torch.bfloat16):
        raise DataError(
            f"{name} needs float32 or float64 images: {x.dtype} cannot hold every multiple of 1/{grid} exactly",
            hint="pass x.float(); to run the model in half precision, use the precision option (bf16, fp16)",
        )
    if not is_quantised(x, grid):
        raise DataError(
            f"{name} certifies only images whose pixel values are multiples of 1/{grid}; these inputs are not "
            f"quantised (resized or otherwise interpolated?). Values within {GRID_TOLERANCE:g}/{grid} of the grid "
            "are accepted and certified as the rounded image",
            hint=f"the guarantee is for perturbations on the 1/{grid} grid; quantise inputs with "
            f"x = (x * {grid}).round() / {grid} first, or use a noise without a grid (ssn)",
        )


NOISE_ARGUMENTS = ("sigma", "lambd", "dim", "seed", "device")  # what every noise factory takes


def make_noise(
    name: str,
    *,
    sigma: float | None = None,
    lambd: float | None = None,
    dim: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    **params: Any,
) -> Noise:
    """Build the registered noise ``name`` (see :func:`smoothcore.noise`)."""
    from smoothcore.plugins import registry

    entry = registry("noise").get(name)
    built = entry.build(
        _framework=NOISE_ARGUMENTS, sigma=sigma, lambd=lambd, dim=dim, seed=seed, device=device, **params
    )
    if not isinstance(built, Noise):
        raise PluginError(
            f"plugin {entry.plugin!r} built noise {name!r} as {type(built).__name__}, not a smoothcore Noise"
        )
    with contextlib.suppress(AttributeError, TypeError):
        built.name = entry.name  # the registered name is the noise's name
        built._smoothcore_plugin = entry.plugin  # so that errors in its draws name the plugin
    check_declarations(built, entry.plugin)
    return built
