"""Certified accuracy, average certified radius and the best-over-runs envelope (the paper's tables and plots).

A run is a table of per-image ``label``, ``prediction`` (``-1`` = abstain) and ``radius``. Runs come from
smoothcore result tables (``certify_*.csv``), experiment folders (all their tables), or result folders in the
reference implementation's layout (``labels.npy``, ``radius_l1.npy``, ``preds.npy``, and ``predicted_labels.npy``
for DSSN), such as ../shared/golden/levine-feizi-2021/*.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from smoothcore.checks import check_radii
from smoothcore.configs import PAPER_RADII
from smoothcore.errors import DataError
from smoothcore.fileio import read_json
from smoothcore.results import read_valid
from smoothcore.run_record import Certification

ENVELOPE = "envelope (best run)"


@dataclass
class Run:
    """One certification: per-image arrays and what produced them (``certification``: its record, empty for
    results in the reference layout)."""

    name: str
    label: np.ndarray
    prediction: np.ndarray
    radius: np.ndarray
    norm: str = "l1"
    certification: Certification = field(default_factory=Certification)
    index: np.ndarray | None = None
    manifest: dict[str, Any] = field(default_factory=dict)  # of the experiment folder holding the table
    problems: list[str] = field(default_factory=list)  # what was wrong with the table it was read from
    attack: pd.DataFrame | None = None  # attack_<tag>.csv beside the table (smoothcore attack), if any

    def __post_init__(self) -> None:  # tensors (as certify returns them), lists or arrays alike
        self.label = _array(self.label, np.int64, "label")
        self.prediction = _array(self.prediction, np.int64, "prediction")
        self.radius = _array(self.radius, np.float64, "radius")
        if self.index is not None:
            self.index = _array(self.index, np.int64, "index")
        if not len(self.label) == len(self.prediction) == len(self.radius):
            raise DataError(
                f"run {self.name!r}: {len(self.label)} labels, {len(self.prediction)} predictions and "
                f"{len(self.radius)} radii"
            )

    @classmethod
    def from_result(cls, name: str, result, labels) -> Run:
        """A run from :meth:`smoothcore.SmoothedClassifier.certify`'s result and the images' true labels."""
        return cls(name, labels, result.prediction, result.radius, result.norm)

    @property
    def correct(self) -> np.ndarray:
        return (self.prediction == self.label) & (self.prediction >= 0)

    def certified_accuracy(self, radii) -> np.ndarray:
        """Fraction of images whose prediction is right and whose radius is at least r, for each r."""
        radius = np.nan_to_num(self.radius, nan=-np.inf)
        radii = np.asarray(check_radii(radii), dtype=np.float64)
        if not len(radius):
            return np.full(len(radii), np.nan)  # no images: no accuracy to speak of
        return ((self.correct[None, :]) & (radius[None, :] >= radii[:, None])).mean(axis=1)

    def average_certified_radius(self) -> float:
        """ACR: the mean over images of the radius where the prediction is right (and certified), else 0."""
        radius = np.nan_to_num(self.radius, nan=0.0)
        return float(np.where(self.correct & (radius > 0), radius, 0.0).mean()) if len(radius) else 0.0


def default_radii(run: Run) -> list[float]:
    """Radii to show ``run`` at when none are asked for: steps of 0.1, 0.25 or 0.5 (by its largest radius) from 0
    past its largest radius."""
    top = float(np.nanmax(run.radius, initial=0.0)) if len(run.radius) else 0.0
    step = 0.5 if top > 1.5 else 0.25 if top > 0.5 else 0.1
    return [round(i * step, 4) for i in range(int(top / step) + 2)]


@dataclass
class CertifySummary:
    """What a finished certification reports: its run, the radii to show it at (its early-decision radii, else
    :func:`default_radii`), and the forward passes it spent against what full evaluation would have spent."""

    run: Run
    radii: list[float]
    forward_passes: int
    forward_passes_full: int

    @property
    def saved(self) -> float:
        """The fraction of forward passes that early decisions saved."""
        return 1 - self.forward_passes / max(self.forward_passes_full, 1)


def certify_summary(tag: str, table: pd.DataFrame, certification: Certification) -> CertifySummary:
    """The summary of the result table ``table`` that the certification ``certification`` wrote."""
    run = Run(
        tag,
        table["label"].to_numpy(),
        table["prediction"].to_numpy(),
        table["radius"].to_numpy(dtype=float),
        str(certification.norm),
        certification,
    )
    full = int(certification.forward_passes_full_per_image or 0) * len(table)
    radii = list(certification.radii) if certification.radii else default_radii(run)
    return CertifySummary(run, radii, int(table["forward_passes"].sum()), full)


def _array(values: Any, dtype, what: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    try:
        out = np.asarray(values, dtype=dtype).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} must be numbers, one per image: {exc}") from None
    return out


def _reference_run(folder: Path) -> Run:
    def need(name: str) -> np.ndarray:
        path = folder / name
        try:
            return np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise DataError(
                f"{folder} is not a result folder in the reference layout: {name} is missing"
            ) from None
        except (ValueError, OSError) as exc:
            raise DataError(f"{path} is not a readable .npy file: {exc}") from None

    labels = need("labels.npy")
    radius = need("radius_l1.npy")
    if (folder / "predicted_labels.npy").exists():
        prediction = need("predicted_labels.npy")
    else:
        prediction = np.argmax(need("preds.npy"), axis=1)
    if not labels.shape == radius.shape == prediction.shape:
        raise DataError(f"{folder}: labels, predictions and radii have different lengths")
    return Run(
        folder.name,
        labels.astype(np.int64),
        prediction.astype(np.int64),
        radius.astype(np.float64),
        "l1",
        Certification(num_images=int(len(labels))),
        np.arange(len(labels)),
    )


def _table_run(path: Path, name: str | None = None) -> Run:
    try:
        table, _, discarded = read_valid(path)  # one read: the rows and how many failed their checksum
        table = table.sort_values("index").reset_index(drop=True) if len(table) else table
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"{path} is not a readable result table: {exc}") from None
    problems = []
    if discarded:
        problems.append(
            f"row {len(table) + 1} of {path.name} failed its checksum (damaged, or cut short by a crash): it and the "
            f"{discarded - 1} row(s) after it were left out (certify --resume recomputes them)"
        )
    duplicated = int(table["index"].duplicated().sum()) if "index" in table.columns else 0
    if duplicated:
        problems.append(f"{path.name} lists {duplicated} image(s) more than once")
    for col in ("label", "prediction", "radius"):
        if col not in table.columns:
            raise DataError(f"{path} is not a smoothcore result table (no {col} column)")
    record_path = path.with_suffix(".json")
    record = Certification.read(record_path) if record_path.exists() else Certification()
    norm = str(table["norm"].iloc[0]) if "norm" in table.columns and len(table) else record.norm or "l1"
    run_name = name or f"{path.parent.name}/{path.stem.removeprefix('certify_')}"
    manifest_path = path.parent / "manifest.json"
    manifest = read_json(manifest_path) if manifest_path.is_file() else {}
    attack_path = path.with_name("attack_" + path.name.removeprefix("certify_"))
    attack = None
    if attack_path.is_file():
        try:
            attack = pd.read_csv(attack_path)
        except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            problems.append(f"{attack_path.name} is not readable ({exc}): left out")
        else:
            if not {"index", "flip_norm"} <= set(attack.columns) or not len(attack):
                problems.append(f"{attack_path.name} has no index/flip_norm rows: left out")
                attack = None
    return Run(
        run_name,
        table["label"].to_numpy(np.int64),
        table["prediction"].to_numpy(np.int64),
        pd.to_numeric(table["radius"], errors="coerce").to_numpy(np.float64),
        norm,
        record,
        table["index"].to_numpy(np.int64),
        manifest if isinstance(manifest, dict) else {},
        problems,
        attack,
    )


def load_runs(paths) -> list[Run]:
    """Every run found at ``paths`` (result tables, experiment folders, reference result folders)."""
    runs: list[Run] = []
    if isinstance(paths, (str, Path)):
        paths = [paths]
    for p in map(Path, paths):
        if p.is_file() and p.suffix == ".csv":
            runs.append(_table_run(p))
        elif p.is_dir() and (p / "radius_l1.npy").exists():
            runs.append(_reference_run(p))
        elif p.is_dir() and list(p.glob("certify_*.csv")):
            runs += [_table_run(t) for t in sorted(p.glob("certify_*.csv"))]
        elif p.is_dir() and list(p.glob("*/certify_*.csv")):  # a sweep's folder: its experiment folders
            runs += [_table_run(t) for t in sorted(p.glob("*/certify_*.csv"))]
        elif p.is_dir():
            raise DataError(
                f"{p} holds no certification results (no certify_*.csv, here or one folder down; no radius_l1.npy)",
                hint="run `smoothcore certify` on it first",
            )
        else:
            raise DataError(
                f"{p} does not exist" if not p.exists() else f"{p} is neither a result table nor a folder"
            )
    return runs


def certified_accuracy_table(runs: list[Run], radii=PAPER_RADII, *, envelope: bool = True) -> pd.DataFrame:
    """Certified accuracy (%) of each run at each radius, its ACR, and the best-over-runs envelope row."""
    radii = check_radii(radii)
    rows = []
    for run in runs:
        acc = run.certified_accuracy(radii) * 100.0
        rows.append(
            {
                "run": run.name,
                "norm": run.norm,
                "images": len(run.label),
                **{_col(r): float(a) for r, a in zip(radii, acc)},
                "ACR": run.average_certified_radius(),
            }
        )
    table = pd.DataFrame(rows)
    if envelope and len(runs) > 1:
        by_norm = {}
        for norm in sorted({r.norm for r in runs}):
            sub = table[table["norm"] == norm]
            by_norm[norm] = {
                "run": ENVELOPE if len(set(table["norm"])) == 1 else f"{ENVELOPE}, {norm}",
                "norm": norm,
                "images": int(sub["images"].max()),
                **{_col(r): float(sub[_col(r)].max()) for r in radii},
                "ACR": float(sub["ACR"].max()),
            }
        table = pd.concat([table, pd.DataFrame(list(by_norm.values()))], ignore_index=True)
    return table


def to_markdown(table: pd.DataFrame, *, digits: int = 1) -> str:
    """A certified-accuracy table as a Markdown (GitHub) table: numbers right-aligned, accuracies to ``digits``
    decimals, the ACR to three."""
    cols = list(table.columns)
    lines = [
        "| " + " | ".join(cols) + " |",
        "| " + " | ".join("---" if c in _TEXT else "---:" for c in cols) + " |",
    ]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_cell(row[c], c, digits) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame, *, digits: int = 1, caption: str | None = None) -> str:
    """A certified-accuracy table as a LaTeX ``table`` with a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``);
    the best value of each numeric column is bold."""
    cols = list(table.columns)
    best = {c: table[c].max() for c in cols if c not in _TEXT and c != "images"}

    def cell(value, col):
        text = _latex_escape(_cell(value, col, digits))
        return f"\\textbf{{{text}}}" if col in best and value == best[col] and len(table) > 1 else text

    header = " & ".join(_latex_escape(c) for c in cols)
    body = [" & ".join(cell(row[c], c) for c in cols) + r" \\" for _, row in table.iterrows()]
    spec = "".join("l" if c in _TEXT else "r" for c in cols)
    return (
        "\n".join(
            [
                r"\begin{table}[t]",
                r"\centering",
                *([rf"\caption{{{_latex_escape(caption)}}}"] if caption else []),
                rf"\begin{{tabular}}{{{spec}}}",
                r"\toprule",
                header + r" \\",
                r"\midrule",
                *body,
                r"\bottomrule",
                r"\end{tabular}",
                r"\end{table}",
            ]
        )
        + "\n"
    )


_TEXT = {"run", "norm", "bound"}


def _cell(value, col: str, digits: int) -> str:
    if col in _TEXT:
        return str(value)
    if col == "images":
        return f"{int(value)}"
    if value != value:  # NaN
        return "-"
    return f"{value:.3f}" if col == "ACR" else f"{value:.{digits}f}"


def _latex_escape(text: str) -> str:
    for char, escaped in (
        ("\\", r"\textbackslash{}"),
        ("_", r"\_"),
        ("%", r"\%"),
        ("&", r"\&"),
        ("#", r"\#"),
    ):
        text = text.replace(char, escaped)
    return text


def _col(r: float) -> str:
    return f"{r:g}"


def comparability_warnings(runs: list[Run]) -> list[str]:
    """Differences between runs that make comparing them misleading (other data, other images, other models)."""
    out = []
    datasets = {r.certification.dataset for r in runs if r.certification.dataset}
    if len(datasets) > 1:
        out.append(f"the runs certify different datasets: {', '.join(sorted(datasets))}")
    for name in sorted(datasets):
        prints = {
            r.certification.test_fingerprint
            for r in runs
            if r.certification.dataset == name and r.certification.test_fingerprint
        }
        if len(prints) > 1:
            out.append(
                f"the runs on {name} read different test data ({len(prints)} different fingerprints of the test set)"
            )
    index_sets = {tuple(r.index.tolist()) if r.index is not None else None for r in runs}
    if len(index_sets) > 1:
        sizes = sorted({len(r.label) for r in runs})
        out.append(
            f"the runs certify different images ({', '.join(map(str, sizes))} images): certified accuracies are not comparable image for image"
        )
    norms = {r.norm for r in runs}
    if len(norms) > 1:
        out.append(
            f"the runs certify different norms ({', '.join(sorted(norms))}); the envelope is taken per norm"
        )
    for r in runs:
        out += [f"{r.name}: {p}" for p in r.problems]
        planned = r.certification.num_images
        if (r.certification.noise or {}).get("name") and r.certification.finished is None:
            out.append(
                f"{r.name} is unfinished ({len(r.label)} of {planned if planned is not None else '?'} images)"
            )
        elif isinstance(planned, int) and r.certification.finished and len(r.label) != planned:
            out.append(f"{r.name} holds {len(r.label)} images, but its certification planned {planned}")
    by_model = {}
    for r in runs:
        if r.certification.classifier_sha256 and r.certification.noise:
            key = json.dumps(r.certification.noise, sort_keys=True) + str(r.certification.certificate)
            by_model.setdefault(key, set()).add(r.certification.classifier_sha256)
    for key, shas in by_model.items():
        if len(shas) > 1:
            out.append(
                f"runs with the same noise and certificate ({key}) used {len(shas)} different classifier checkpoints"
            )
    for r in runs:
        current, used = r.manifest.get("checkpoint_sha256"), r.certification.classifier_sha256
        if current and used and current != used:
            out.append(
                f"{r.name} was certified with an earlier checkpoint: the experiment's classifier has changed since "
                "(trained further or replaced); certify again to report the current model"
            )
    early_groups: dict[
        tuple, list[str]
    ] = {}  # runs decided early at the same radii: one warning for them all
    for r in runs:
        if r.certification.radii:
            key = (tuple(r.certification.radii), r.certification.certificate_kind == "exact")
            early_groups.setdefault(key, []).append(r.name)
    for (early, exact), names in early_groups.items():
        at_radii = (
            "is exact (full enumeration's) at those radii"
            if exact
            else "holds at level alpha (spent over the sequential looks) at those radii"
        )
        who = (
            names[0]
            if len(names) == 1
            else f"{len(names)} runs ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
        )
        out.append(
            f"{who} stopped each image early once its verdicts at radii {', '.join(map(str, early))} "
            f"were decided (certify --radii): certified accuracy {at_radii}; at other radii, in plots and in "
            "the ACR it is a lower bound (certify without --radii for the full values)"
        )
    settings: dict[str, set[str]] = {}
    for r in runs:
        if (
            r.certification.classifier_sha256
            and r.certification.noise
            and r.certification.n is not None
            and r.certification.certificate != "exact"
        ):
            key = json.dumps(r.certification.noise, sort_keys=True) + r.certification.classifier_sha256
            settings.setdefault(key, set()).add(f"n={r.certification.n}, alpha={r.certification.alpha}")
    for seen in settings.values():
        if len(seen) > 1:
            out.append(
                f"runs of one model and noise use different Monte-Carlo settings ({'; '.join(sorted(seen))}): their "
                "radii hold at different confidence or sample sizes"
            )
    return out


def envelopes(runs: list[Run], radii) -> dict[str, np.ndarray]:
    """The best certified accuracy over runs at each radius, per norm (radii of different norms do not compare),
    for norms with more than one run."""
    by_norm: dict[str, list[np.ndarray]] = {}
    for run in runs:
        by_norm.setdefault(run.norm, []).append(run.certified_accuracy(radii))
    return {norm: np.max(curves, axis=0) for norm, curves in sorted(by_norm.items()) if len(curves) > 1}


def robustness_rows(runs: list[Run], radii) -> pd.DataFrame:
    """For every run with an attack table: certified accuracy (a lower bound on robust accuracy), empirical robust
    accuracy (an upper bound: correct and no verified flip within the radius) and their gap, in percent, over the
    images the attack considered (:func:`smoothcore.attack_run.robustness_table`)."""
    from smoothcore.attack_run import robustness_table

    rows = []
    for run in runs:
        if run.attack is None or run.index is None:
            continue
        certified = pd.DataFrame(
            {"index": run.index, "label": run.label, "prediction": run.prediction, "radius": run.radius}
        )
        table = robustness_table(certified, run.attack, radii)
        images = int((certified["index"] <= int(run.attack["index"].max())).sum())
        for bound, column in (("certified", "certified"), ("empirical", "empirical"), ("gap", "gap")):
            rows.append(
                {
                    "run": run.name,
                    "bound": bound,
                    "images": images,
                    **{_col(r): v for r, v in zip(radii, table[column])},
                }
            )
    return pd.DataFrame(rows)
