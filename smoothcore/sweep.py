"""Sweeps: the paper's grid (noises x sigmas x plain/stabilized) expanded into train and certify runs, run in
order, skipping what is already complete and resuming what was interrupted, ending with the report.

A recipe is a JSON (or, on Python >= 3.11, TOML) file with the keys of :class:`Sweep`, for example::

    {"dataset": "cifar10", "model": "wrn40", "noises": ["uniform", "ssn", "dssn"],
     "sigmas": [0.15, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.25, 3.5],
     "stability": [false, true], "out": "checkpoints/paper-cifar10", "certify": {"n0": 64, "n": 100000, "alpha": 0.001}}
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smoothcore.errors import ConfigError
from smoothcore.experiment import Experiment
from smoothcore.fileio import read_json

PAPER_SIGMAS = (0.15, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.25, 3.5)


@dataclass
class Sweep:
    dataset: str = "cifar10"
    model: str = "wrn40"
    noises: list[str] = field(default_factory=lambda: ["uniform", "ssn", "dssn"])
    sigmas: list[float] = field(default_factory=lambda: list(PAPER_SIGMAS))
    stability: list[bool] = field(default_factory=lambda: [False, True])
    out: str = "checkpoints/sweep"
    data_dir: str | None = None
    train: dict[str, Any] = field(
        default_factory=dict
    )  # any TrainConfig field (epochs, batch_size, lr, device, ...)
    certify: dict[str, Any] = field(
        default_factory=dict
    )  # any CertifyConfig field (n0, n, alpha, skip, limit, ...)

    @classmethod
    def from_file(cls, path: str | Path) -> Sweep:
        path = Path(path)
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:
                raise ConfigError("TOML recipes need Python >= 3.11; use JSON") from None
            try:
                data = tomllib.loads(path.read_text())
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"{path} is not a readable TOML recipe: {exc}") from None
        else:
            data = read_json(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a recipe is a mapping of Sweep fields")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{path}: unknown recipe keys {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)


@dataclass
class RunSpec:
    name: str
    path: Path
    train: Any  # TrainConfig
    certify: Any  # CertifyConfig


def run_name(noise: str, sigma: float, stability: bool) -> str:
    return f"{noise}_sigma{sigma:g}_{'stab' if stability else 'plain'}"


def expand(sweep: Sweep) -> list[RunSpec]:
    from smoothcore.runner import CertifyConfig
    from smoothcore.train import RECIPES, TrainConfig

    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cert_fields = {f.name for f in dataclasses.fields(CertifyConfig)}
    for label, given, known in (
        ("train", sweep.train, train_fields),
        ("certify", sweep.certify, cert_fields),
    ):
        bad = sorted(set(given) - known)
        if bad:
            raise ConfigError(f"unknown {label} options in the sweep: {', '.join(bad)}")
    recipe = RECIPES.get((sweep.dataset, sweep.model), {})
    specs = []
    for noise in sweep.noises:
        for sigma in sweep.sigmas:
            for stab in sweep.stability:
                name = run_name(noise, sigma, stab)
                train = TrainConfig(
                    **{
                        **recipe,
                        "dataset": sweep.dataset,
                        "model": sweep.model,
                        "noise": noise,
                        "sigma": sigma,
                        "stability": bool(stab),
                        "data_dir": sweep.data_dir,
                        **sweep.train,
                    }
                )
                cert = CertifyConfig(**{"data_dir": sweep.data_dir, "tag": "sweep", **sweep.certify})
                specs.append(RunSpec(name, Path(sweep.out) / name, train, cert))
    return specs


def status(spec: RunSpec) -> tuple[str, str]:
    """('complete' | 'partial' | 'new') for training and for certification."""
    exp = Experiment(spec.path)
    if not exp.exists():
        return "new", "new"
    trained = (
        "complete"
        if exp.manifest().get("epoch") == spec.train.epochs and exp.checkpoint.exists()
        else "partial"
    )
    meta = spec.path / "certify_sweep.json"
    certified = "new"
    if meta.exists():
        certified = "complete" if read_json(meta).get("finished") else "partial"
    return trained, certified


def run_sweep(
    sweep: Sweep,
    *,
    dry_run: bool = False,
    on_event: Callable[[str], None] = print,
    on_step=None,
    on_progress=None,
) -> list[Path]:
    """Train and certify every run of the sweep that is not complete yet; returns the result tables."""
    from smoothcore.runner import certify_experiment
    from smoothcore.train import Trainer

    tables = []
    specs = expand(sweep)
    for i, spec in enumerate(specs, 1):
        trained, certified = status(spec)
        on_event(f"[{i}/{len(specs)}] {spec.name}: training {trained}, certification {certified}")
        if dry_run:
            continue
        if trained != "complete":
            Trainer(spec.train, spec.path).run(resume=trained == "partial", on_step=on_step)
        if certified != "complete":
            certify_experiment(
                spec.path, spec.certify, resume=certified == "partial", on_progress=on_progress
            )
        tables.append(spec.path / "certify_sweep.csv")
    return tables


def group_of(name: str) -> str:
    noise, _, rest = name.partition("_sigma")
    return f"{noise}, {rest.rsplit('_', 1)[-1]}"


def save_recipe(sweep: Sweep, path: str | Path) -> None:
    Path(path).write_text(json.dumps(dataclasses.asdict(sweep), indent=2) + "\n")
