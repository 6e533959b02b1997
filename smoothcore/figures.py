"""Figures of certified accuracy against radius: one curve per run, readable legend entries, the envelope beneath the
curves; PNG at a chosen resolution, or vector PDF/SVG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from smoothcore.errors import ConfigError
from smoothcore.report import Run, envelopes, robustness_rows

_NOISE_LABELS = {
    "dssn": "DSSN",
    "ssn": "SSN",
    "uniform": "uniform",
    "gaussian": "Gaussian",
    "laplace": "Laplace",
}
_NOISE_COLOURS = ("Blues", "Oranges", "Greens", "Reds", "Purples", "Greys")


def run_label(run: Run, labels: dict[str, str] | None = None) -> str:
    """A readable legend entry: ``labels`` by run name (or by either part of ``folder/tag``), else the noise, its
    sigma, the training (``stab`` in the folder's name) and a certificate other than the default one."""
    for key in (run.name, *run.name.split("/")):
        if labels and key in labels:
            return labels[key]
    noise = run.certification.noise or {}
    if not noise.get("name"):
        return run.name
    text = _NOISE_LABELS.get(noise["name"], noise["name"])
    if noise.get("sigma") is not None:
        text += f" \N{GREEK SMALL LETTER SIGMA}={noise['sigma']:g}"
    training = _training(run)
    if training != "plain":
        text += f", {training}"
    certificate = run.certification.certificate
    if certificate and certificate not in ("exact", "standard"):
        text += f", {certificate}"
    return text


def _styles(runs: list[Run]) -> list[dict[str, Any]]:
    """One colour family per noise (darker for larger sigma), one line style per training."""
    import matplotlib

    noises = list(dict.fromkeys((r.certification.noise or {}).get("name", r.name) for r in runs))
    styles = []
    for run in runs:
        noise = (run.certification.noise or {}).get("name", run.name)
        family = [r for r in runs if (r.certification.noise or {}).get("name", r.name) == noise]
        sigmas = sorted({(r.certification.noise or {}).get("sigma") or 0.0 for r in family})
        rank = sigmas.index((run.certification.noise or {}).get("sigma") or 0.0)
        shade = 0.45 + 0.5 * (rank / max(len(sigmas) - 1, 1))
        cmap = matplotlib.colormaps[_NOISE_COLOURS[noises.index(noise) % len(_NOISE_COLOURS)]]
        styles.append({"color": cmap(shade), "linestyle": _LINES.get(_training(run), "-.")})
    return styles


_LINES = {"plain": "-", "stability": "--", "consistency": ":", "macer": "-."}


def _training(run: Run) -> str:
    """The training of a run from its folder's name (a sweep's ``{noise}_sigma{s}_{training}``): ``stab`` is
    stability training, a known objective's name is that objective, anything else plain."""
    last = run.name.split("/")[0].rsplit("_", 1)[-1]
    if last == "stab":
        return "stability"
    return last if last in _LINES else "plain"


def plot(
    runs: list[Run],
    path: str | Path,
    *,
    max_radius: float | None = None,
    labels: dict[str, str] | None = None,
    dpi: int = 200,
) -> Path:
    """Certified accuracy against radius, one curve per run (a colour family per noise, darker for larger sigma; a
    line style per training) over the envelope, drawn as a wide light band beneath the curves so that it hides
    none of them; a run with an attack table also gets its empirical robust accuracy, dotted in its colour; written to ``path`` (PNG at ``dpi``, or vector PDF/SVG). ``labels`` renames runs in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = check_plot_path(path)
    if not isinstance(dpi, int) or isinstance(dpi, bool) or not 20 <= dpi <= 1200:
        raise ConfigError(f"dpi must be an integer from 20 to 1200, got {dpi!r}")
    top = (
        max_radius
        or max([float(np.nanmax(np.where(r.correct, r.radius, 0.0), initial=0.0)) for r in runs] + [0.5])
        * 1.05
    )
    flips = np.concatenate(
        [r.attack["flip_norm"].to_numpy(dtype=float) for r in runs if r.attack is not None] or [np.zeros(0)]
    )
    flips = flips[np.isfinite(flips)]
    if max_radius is None and len(flips):  # far enough to show where most verified flips lie (at most 10x)
        top = max(top, min(float(np.quantile(flips, 0.9)) * 1.05, 10 * top))
    grid = np.linspace(0.0, top, 400)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    norms = sorted({r.norm for r in runs})
    for (norm, curve), colour in zip(envelopes(runs, grid).items(), ("0.6", "0.75", "0.45")):
        label = "best over runs" if len(norms) == 1 else f"best over runs ({norm})"
        ax.plot(grid, curve * 100, color=colour, alpha=0.35, linewidth=7, solid_capstyle="butt", label=label)
    for run, style in zip(runs, _styles(runs)):
        ax.plot(
            grid, run.certified_accuracy(grid) * 100, label=run_label(run, labels), linewidth=1.4, **style
        )
        if run.attack is not None and run.index is not None:  # the attack's upper bound, same colour, dotted
            single = Run(
                run.name, run.label, run.prediction, run.radius, run.norm, index=run.index, attack=run.attack
            )
            rows = robustness_rows([single], list(grid))
            empirical = rows[rows["bound"] == "empirical"].iloc[0, 3:].to_numpy(dtype=float)
            ax.plot(
                grid,
                empirical,
                color=style.get("color"),
                linestyle=":",
                linewidth=1.6,
                label=f"{run_label(run, labels)}: empirical (attack, {int(rows['images'].iloc[0])} images)",
            )
    ax.set_xlabel(f"{'/'.join(n.upper() for n in norms)} radius")
    ax.set_ylabel("certified accuracy (%)" if not len(flips) else "certified / empirical robust accuracy (%)")
    ax.set_xlim(0, top)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(runs) > 8 else 1, frameon=False)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=dpi)
    except OSError as exc:
        raise ConfigError(f"could not write the plot {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return path


def check_plot_path(path: str | Path) -> Path:
    """``path`` checked before anything is drawn: its folder exists and its extension is a format matplotlib
    writes (none: ``.png`` is added, and the returned path says so). Opens no figure."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(path)
    formats = FigureCanvasBase.get_supported_filetypes()
    if not path.suffix:
        path = path.with_suffix(".png")
    if path.suffix[1:].lower() not in formats:
        raise ConfigError(
            f"cannot write a plot as {path.suffix!r}",
            hint=f"use one of {', '.join('.' + f for f in sorted(formats))}",
        )
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write the plot {path}: the folder {path.parent} does not exist")
    return path
