"""What a certificate is: a pure function from statistics of the base classifier under a noise to
predictions and certified radii. Certificates are plugins (hook ``register_certificates``); like a noise, a
certificate's name is the one it was registered under (:func:`get_certificate` gives it)."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from smoothcore.errors import ConfigError, PluginError, SmoothcoreError
from smoothcore.noises import Noise

MONTE_CARLO = "monte-carlo"
EXACT = "exact"
ABSTAIN = -1


@dataclass
class Statistics:
    """What the engine measured for a batch of images.

    ``counts``: ``(batch, classes)`` class counts of the base classifier over the estimation draws (Monte-Carlo:
    ``num_draws = n`` fresh draws) or over every draw (exact noises). ``selection``: Monte-Carlo only, the counts of
    the ``n0`` selection draws that choose the top class. ``x``: the clean images, for certificates that use them.
    """

    counts: torch.Tensor
    num_draws: int
    selection: torch.Tensor | None = None
    alpha: float | None = None
    x: torch.Tensor | None = None
    remaining: torch.Tensor | int = 0  # exact noises stopped early: draws per image not evaluated


@dataclass
class Certified:
    """Per image: ``prediction`` (``-1`` = abstain), ``radius`` (float64, NaN where abstaining) in ``norm``,
    ``p_lower`` (Monte-Carlo), and any further per-image columns a certificate reports in ``extra``."""

    prediction: torch.Tensor
    radius: torch.Tensor
    norm: str
    p_lower: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


class Certificate(ABC):
    """``kind``: ``MONTE_CARLO`` (statistics of sampled draws) or ``EXACT`` (counts over every draw of an exact
    noise). ``name`` is given by the registry."""

    name: str = "certificate"
    kind: str = MONTE_CARLO
    description: str = ""

    @abstractmethod
    def applies_to(self, noise: Noise) -> bool:
        """Whether this certificate is sound for ``noise``."""

    @abstractmethod
    def certify(self, noise: Noise, stats: Statistics) -> Certified: ...


def get_certificate(name: str) -> Certificate:
    from smoothcore.plugins import registry

    entry = registry("certificate").get(name)
    cert = entry.factory()
    if not isinstance(cert, Certificate):
        raise PluginError(
            f"plugin {entry.plugin!r} built certificate {name!r} as {type(cert).__name__}, not a Certificate"
        )
    with contextlib.suppress(AttributeError, TypeError):
        cert.name = entry.name  # the registered name is the certificate's name
        cert._smoothcore_plugin = entry.plugin
    return cert


def certificates_for(noise: Noise) -> list[str]:
    """Names of the registered certificates that apply to ``noise``."""
    from smoothcore.plugins import registry

    names = []
    for e in registry("certificate"):
        try:
            if applies(get_certificate(e.name), noise):
                names.append(e.name)
        except PluginError:  # a broken plugin is reported when it is used, not when others are listed
            continue
    return names


def default_certificate(noise: Noise) -> str:
    """``exact`` for exact noises, else ``standard``."""
    return "exact" if noise.exact else "standard"


def applies(cert: Certificate, noise: Noise) -> bool:
    """``cert.applies_to(noise)``; a (third-party) certificate that raises there is an error naming its plugin."""
    try:
        return bool(cert.applies_to(noise))
    except SmoothcoreError:
        raise
    except Exception as exc:
        plugin = getattr(cert, "_smoothcore_plugin", None) or type(cert).__module__
        raise PluginError(
            f"certificate {cert.name!r} (plugin {plugin!r}) failed in applies_to: {type(exc).__name__}: {exc}"
        ) from None


def resolve_certificate(noise: Noise, certificate: str | Certificate | None) -> Certificate:
    """The certificate for ``noise``: by name (None: :func:`default_certificate`), or one already resolved (a run
    resolves its certificate once and hands it on); a ConfigError listing the ones that apply if it does not."""
    if isinstance(certificate, Certificate):
        cert = certificate
    else:
        cert = get_certificate(certificate or default_certificate(noise))
    if not applies(cert, noise):
        ok = ", ".join(certificates_for(noise)) or "(none)"
        raise ConfigError(
            f"certificate {cert.name!r} does not apply to noise {noise.name!r}; certificates for it: {ok}"
        )
    return cert
