"""What a noise is.

A :class:`Noise` turns a batch of clean images into noisy ones (``sample``) and knows the radius its
Monte-Carlo certificate gives for a lower confidence bound on the top-class probability (``radius``).
An :class:`ExactNoise` is a finite, deterministic set of ``num_draws`` draws that can be enumerated
(``draws``), so its certificate is computed from exact counts. Noises only transform tensors on the input's
device: no models, no loops over draws, no host synchronisation.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from typing import Any

import torch

from smoothcore.checks import is_int
from smoothcore.devices import resolve_device
from smoothcore.errors import ConfigError, DataError

SQRT3 = math.sqrt(3.0)
MAX_SCALE = 1e4  # a noise scale beyond this is certainly a typo: every image in [0, 1] is drowned long before


class Noise(ABC):
    """A noise distribution over images with pixel values in [0, 1].

    Subclasses set ``name``, ``norm`` (the norm of their radius: ``"l1"``, ``"l2"``) and implement ``sample``
    and ``radius``.
    """

    name: str = "noise"
    norm: str = "l1"
    exact: bool = False
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

        Accepts a float, a numpy array or a tensor and returns the same kind.
        """
        raise NotImplementedError(f"noise {self.name!r} has no Monte-Carlo certificate")

    def radii(self, p_lower) -> dict[str, Any]:
        """Every radius this noise certifies, by norm (the main one first)."""
        return {self.norm: self.radius(p_lower)}

    def check_input(self, x: torch.Tensor) -> None:
        """Raise DataError if ``x`` is not a valid input for this noise's certificate."""
        check_images(x, self.dim)

    def params(self) -> dict[str, Any]:
        """The parameters that define this noise (recorded with every result)."""
        return {"name": self.name, "seed": self.seed}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if k != "name")
        return f"{type(self).__name__}({inner})"


class ExactNoise(Noise):
    """A noise with finitely many equally likely draws that can be enumerated.

    ``draws(x, start, stop)`` returns draws ``start .. stop-1`` of every image: ``(batch, stop - start, *image)``.
    ``sample`` must pick one of these draws uniformly at random (training uses it).
    """

    exact = True
    num_draws: int

    @abstractmethod
    def draws(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor: ...

    def certify_counts(
        self, counts: torch.Tensor, remaining: torch.Tensor | int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``counts`` ``(batch, classes)`` over all ``num_draws`` draws -> (prediction, radius). With ``remaining``
        draws per image not evaluated (early decisions), a radius that holds however they fall."""
        raise NotImplementedError

    def decided(self, counts: torch.Tensor, remaining: torch.Tensor | int, radii) -> torch.Tensor:
        """Per image: can the ``remaining`` draws still change the prediction or whether the radius reaches each of
        ``radii``? Noises without such a rule decide only when nothing remains."""
        return torch.as_tensor(remaining, device=counts.device).expand(counts.shape[0]) == 0


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


def is_quantised(x: torch.Tensor, levels: int = 255, tol: float = 1e-3) -> bool:
    """True when every value of ``x`` is a multiple of ``1 / levels`` (up to float rounding)."""
    scaled = x.double() * levels
    return bool(((scaled - scaled.round()).abs() <= tol).all())


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
        from smoothcore.errors import PluginError

        raise PluginError(
            f"plugin {entry.plugin!r} built noise {name!r} as {type(built).__name__}, not a smoothcore Noise"
        )
    with contextlib.suppress(AttributeError, TypeError):
        built._smoothcore_plugin = entry.plugin  # so that errors in its draws name the plugin
    return built
