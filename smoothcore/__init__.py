"""smoothcore: certified L1 robustness by randomized and derandomized smoothing, as a plugin framework.

Public API (names are fixed)::

    noise(name, *, sigma=None, lambd=None, dim, seed=0, device="cpu")   # a registered noise
    certify_counts(noise, counts) -> (prediction, radius)                 # exact certificate from counts
    clopper_pearson_lower(k, n, alpha)                                    # two-sided Clopper-Pearson bound
    SmoothedClassifier(model, noise, num_classes)                          # predict / certify
    load_classifier(path, *, model=None, dataset=None)                     # any known checkpoint layout
    load_denoiser(path)                                                    # denoiser checkpoints
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smoothcore.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ExperimentError,
    PluginError,
    SmoothcoreError,
    UnknownNameError,
)

if TYPE_CHECKING:
    import torch

    from smoothcore.certify import CertifyResult, PredictResult, SmoothedClassifier, certify_counts
    from smoothcore.hookspecs import hookimpl
    from smoothcore.loading import load_classifier
    from smoothcore.models import stack
    from smoothcore.noises import ExactNoise, Noise
    from smoothcore.stats import clopper_pearson_lower, clopper_pearson_upper

# imported on first use (PEP 562), so that `import smoothcore` (and the command line's --help) loads no torch
_LAZY = {
    "hookimpl": "smoothcore.hookspecs",
    "CertifyResult": "smoothcore.certify",
    "PredictResult": "smoothcore.certify",
    "SmoothedClassifier": "smoothcore.certify",
    "certify_counts": "smoothcore.certify",
    "load_classifier": "smoothcore.loading",
    "stack": "smoothcore.models",
    "ExactNoise": "smoothcore.noises",
    "Noise": "smoothcore.noises",
    "clopper_pearson_lower": "smoothcore.stats",
    "clopper_pearson_upper": "smoothcore.stats",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'smoothcore' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"


def noise(
    name: str,
    *,
    sigma: float | None = None,
    lambd: float | None = None,
    dim: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    **params: Any,
) -> Noise:
    """The registered noise ``name`` (``uniform``, ``ssn``, ``dssn``, ``gaussian``, ``laplace``, or a plugin's).

    ``sigma`` is the standard deviation (for the uniform family the half-width is ``lambd = sigma * sqrt(3)``;
    give one of the two). ``dim`` is the number of pixel values per image. ``seed`` fixes DSSN's template and keys
    every Monte-Carlo image stream (so certifying the same images twice gives the same result). ``device`` (``cpu``,
    ``cuda``, ``auto``, ...) is where the noise keeps its own tensors (DSSN's template); draws are always made on
    the device of the images they perturb.
    """
    from smoothcore.noises import make_noise

    return make_noise(name, sigma=sigma, lambd=lambd, dim=dim, seed=seed, device=device, **params)


def load_denoiser(path, **kwargs: Any):
    """An eval-mode denoiser (noisy ``[0, 1]`` images -> denoised ones) from a denoised-smoothing or smoothcore
    checkpoint."""
    from smoothcore.denoise import load_denoiser as _load

    return _load(path, **kwargs)


__all__ = [
    "CertifyResult",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ExactNoise",
    "ExperimentError",
    "Noise",
    "PluginError",
    "PredictResult",
    "SmoothcoreError",
    "SmoothedClassifier",
    "UnknownNameError",
    "certify_counts",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "hookimpl",
    "load_classifier",
    "load_denoiser",
    "noise",
    "stack",
]
