"""What the loaded plugins offer together: which certificate applies to which noise (``smoothcore plugins``)."""

from __future__ import annotations

from dataclasses import dataclass

from smoothcore.certificates import MONTE_CARLO, certificates_for
from smoothcore.noises import Noise, make_noise
from smoothcore.plugins import registry

PROBE_SIGMA = 0.5


@dataclass
class CertificateCoverage:
    """A registered certificate, its kind, the noises it applies to and the plugin that registered it."""

    name: str
    kind: str
    noises: list[str]
    plugin: str


def probe_noises() -> tuple[dict[str, Noise], dict[str, str]]:
    """Every registered noise built at sigma 0.5 (on 4 pixels), and why those that cannot be built failed."""
    built: dict[str, Noise] = {}
    failed: dict[str, str] = {}
    for e in registry("noise"):
        try:
            built[e.name] = make_noise(e.name, sigma=PROBE_SIGMA, dim=4)
        except Exception as exc:  # a plugin's noise that needs more than sigma: named, not hidden
            failed[e.name] = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return built, failed


def certificate_coverage() -> tuple[list[CertificateCoverage], dict[str, str]]:
    """Each registered certificate with the probed noises it applies to (:func:`certificates_for`), and the noises
    that could not be probed, with why."""
    built, failed = probe_noises()
    applicable = {name: set(certificates_for(noise)) for name, noise in built.items()}
    rows = [
        CertificateCoverage(
            e.name,
            getattr(e.factory(), "kind", MONTE_CARLO),
            [n for n in built if e.name in applicable[n]],
            e.plugin,
        )
        for e in registry("certificate")
    ]
    return rows, failed
