"""Sweeps: the paper's grid (noises x sigmas x plain/stabilized) expanded into train and certify runs, run in
order, skipping what is already complete and resuming what was interrupted, ending with the report.

A recipe is a JSON (or, on Python >= 3.11, TOML) file with the keys of :class:`Sweep`, for example::

    {"dataset": "cifar10", "model": "wrn40", "noises": ["uniform", "ssn", "dssn"],
     "sigmas": [0.15, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.25, 3.5],
     "stability": [false, true], "out": "checkpoints/paper-cifar10", "certify": {"n0": 64, "n": 100000, "alpha": 0.001}}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from smoothcore.checks import split_list
from smoothcore.errors import ConfigError, ExperimentError
from smoothcore.experiment import Experiment, config_diff
from smoothcore.fileio import read_json
from smoothcore.run_record import Certification

PAPER_SIGMAS = (0.15, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.25, 3.5)


@dataclass
class Sweep:
    dataset: str = "cifar10"
    model: str = "wrn40"
    noises: list[str] = field(default_factory=lambda: ["uniform", "ssn", "dssn"])
    sigmas: list[float] | dict[str, list[float]] = field(default_factory=lambda: list(PAPER_SIGMAS))
    # plain/stabilized training: one list for every noise, or a mapping noise -> list (e.g. stabilized for DSSN only)
    stability: list[bool] | dict[str, list[bool]] = field(default_factory=lambda: [False, True])
    # training objectives (instead of stability): one list for every noise, or a mapping noise -> list; with
    # ``objective_params`` per objective, e.g. {"macer": {"draws": 8}}
    objectives: list[str] | dict[str, list[str]] | None = None
    objective_params: dict[str, dict[str, Any]] = field(default_factory=dict)
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
        return cls.from_mapping(data, str(path))

    @classmethod
    def from_mapping(cls, data: dict[str, Any], where: str = "the recipe") -> Sweep:
        """A sweep from a recipe's keys. Besides the Sweep fields, the recipe takes the options of the commands it
        runs, spelled as on their command lines (``epochs``, ``batch-size``, ``n``, ``max-batch``, ...): a
        train-classifier option goes to ``train``, a certify option to ``certify``, one of both (``device``,
        ``precision``, ...) to both; ``[train]`` and ``[certify]`` tables take the same spellings."""
        from smoothcore.configs import CertifyConfig, TrainConfig

        def norm(key: str) -> str:
            return {"lambda": "lambd"}.get(key, key.replace("-", "_"))

        own = {f.name for f in dataclasses.fields(cls)}
        train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
        cert_keys = {f.name for f in dataclasses.fields(CertifyConfig)}
        fields: dict[str, Any] = {"train": {}, "certify": {}}
        unknown = []
        for key, value in data.items():
            name = norm(key)
            if name in ("train", "certify"):
                if not isinstance(value, dict):
                    raise ConfigError(f"{where}: sweep {name} must be a mapping of options, got {value!r}")
                fields[name].update({norm(k): v for k, v in value.items()})
            elif name in own:
                fields[name] = value
            elif (name in train_keys or name in cert_keys) and name not in _AXES:
                if name in train_keys:
                    fields["train"][name] = value
                if name in cert_keys:
                    fields["certify"][name] = value
            else:
                unknown.append(key)
        if unknown:
            raise ConfigError(
                f"{where}: unknown recipe keys {', '.join(sorted(unknown))}; known: the sweep's "
                f"({', '.join(sorted(own))}) and the options of train-classifier and certify"
            )
        return cls(**fields)

    def check(self) -> None:
        """Validate the grid (a recipe's values arrive untyped): each problem names the key, what was given and what
        is allowed. ``stability`` also takes the CLI's words: "plain", "stab", "both" (alone or in a list)."""

        from smoothcore.plugins import registry

        for key in ("dataset", "model", "out"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ConfigError(f"sweep {key} must be a non-empty string, got {getattr(self, key)!r}")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise ConfigError(f"sweep data_dir must be a path string, got {self.data_dir!r}")
        if (
            not isinstance(self.noises, list)
            or not self.noises
            or not all(isinstance(n, str) for n in self.noises)
        ):
            raise ConfigError(
                f"sweep noises must be a non-empty list of noise names, got {self.noises!r}",
                hint='e.g. ["dssn"]',
            )
        known = set(registry("noise").names()) | {"none"}
        unknown = [n for n in self.noises if n not in known]
        if unknown:
            raise ConfigError(
                f"unknown noise {unknown[0]!r} in the sweep; available: {', '.join(sorted(known))}"
            )
        if isinstance(self.sigmas, dict):
            if sorted(self.sigmas) != sorted(self.noises):
                raise ConfigError(
                    "sweep sigmas given per noise must name exactly the sweep's noises "
                    f"({', '.join(self.noises)}), got {', '.join(sorted(self.sigmas))}",
                    hint="e.g. sigmas = { dssn = [0.5, 2.0], ssn = [1.0] }",
                )
            self.sigmas = {n: _sigma_list(self.sigmas[n]) for n in self.noises}
        else:
            self.sigmas = _sigma_list(self.sigmas)
        if isinstance(self.stability, dict):
            missing = [n for n in self.noises if n not in self.stability]
            extra = sorted(set(self.stability) - set(self.noises))
            if missing or extra:
                raise ConfigError(
                    "sweep stability given per noise must name exactly the sweep's noises: "
                    + "; ".join(
                        part
                        for part in (
                            f"missing {', '.join(missing)}" if missing else "",
                            f"not in noises: {', '.join(extra)}" if extra else "",
                        )
                        if part
                    ),
                    hint='e.g. stability = {uniform = "plain", ssn = "plain", dssn = "both"}',
                )
            self.stability = {n: _stability_list(self.stability[n]) for n in self.noises}
        else:
            self.stability = _stability_list(self.stability)
        for key in ("train", "certify"):
            if not isinstance(getattr(self, key), dict):
                raise ConfigError(f"sweep {key} must be a mapping of options, got {getattr(self, key)!r}")
        self._check_objectives(registry("objective").names())

    def _check_objectives(self, known: list[str]) -> None:
        if self.objectives is None:
            return
        if isinstance(self.objectives, str):
            self.objectives = split_list(self.objectives, str, "objectives")
        lists = self.objectives.values() if isinstance(self.objectives, dict) else [self.objectives]
        if isinstance(self.objectives, dict) and sorted(self.objectives) != sorted(self.noises):
            raise ConfigError(
                "sweep objectives given per noise must name exactly the sweep's noises "
                f"({', '.join(self.noises)}), got {', '.join(sorted(self.objectives))}"
            )
        for items in lists:
            if not isinstance(items, list) or not items or not all(isinstance(o, str) for o in items):
                raise ConfigError(
                    f"sweep objectives must be a non-empty list of objective names, got {items!r}",
                    hint='e.g. ["plain", "stability", "consistency", "macer"]',
                )
            unknown = [o for o in items if o not in known]
            if unknown:
                raise ConfigError(
                    f"unknown objective {unknown[0]!r} in the sweep; available: {', '.join(known)}"
                )
        if not isinstance(self.objective_params, dict) or not all(
            isinstance(v, dict) for v in self.objective_params.values()
        ):
            raise ConfigError(
                f"sweep objective_params must map objective names to parameter mappings, got {self.objective_params!r}",
                hint="e.g. objective_params = {macer = {draws = 8}}",
            )

    def trainings(self, noise: str) -> list[str]:
        """The training objectives of ``noise``'s runs: ``objectives`` if given, else plain/stability from
        ``stability``."""
        if self.objectives is not None:
            items = self.objectives[noise] if isinstance(self.objectives, dict) else self.objectives
            return list(dict.fromkeys(items))
        stab = self.stability[noise] if isinstance(self.stability, dict) else self.stability
        return ["stability" if s else "plain" for s in stab]


_AXES = {"noise", "sigma", "lambd", "stability", "objective"}  # what the sweep's grid sets per run


def _sigma_list(value: Any) -> list[float]:
    import math

    if (
        not isinstance(value, list)
        or not value
        or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
            for v in value
        )
    ):
        raise ConfigError(
            f"sweep sigmas must be a non-empty list of positive numbers, got {value!r}",
            hint="e.g. [0.5, 1.0], or per noise { dssn = [0.5, 2.0], ssn = [1.0] }",
        )
    return [float(v) for v in value]


_STABILITY_WORDS = {"plain": [False], "stab": [True], "both": [False, True]}


def _stability_list(value: Any) -> list[bool]:
    """``[False, True]`` style lists, or the CLI's words "plain" | "stab" | "both" (alone or in a list)."""
    items = value if isinstance(value, list) else [value]
    out: list[bool] = []
    for item in items:
        if isinstance(item, bool):
            out.append(item)
        elif isinstance(item, str) and item in _STABILITY_WORDS:
            out.extend(_STABILITY_WORDS[item])
        else:
            raise ConfigError(
                f'sweep stability must be true/false, "plain", "stab" or "both" (or a list of them), got {value!r}'
            )
    if not out:
        raise ConfigError("sweep stability is an empty list", hint='e.g. "both" or [false, true]')
    return list(dict.fromkeys(out))


@dataclass
class RunSpec:
    name: str
    path: Path
    train: Any  # TrainConfig
    certify: Any  # CertifyConfig


def _radii_option(certify: dict[str, Any]) -> dict[str, Any]:
    """``radii`` as a list whether the recipe or ``--certify-option radii=0.5,1`` gave a list, a number or a string."""
    radii = certify.get("radii")
    if isinstance(radii, (int, float)) and not isinstance(radii, bool):
        return {"radii": [radii]}
    if isinstance(radii, str):
        return {"radii": split_list(radii, float, "radii")}
    return {}


def run_name(noise: str, sigma: float, objective: str | bool) -> str:
    """``{noise}_sigma{sigma}_{training}``: ``plain``, ``stab`` (stability training; also ``True``) or the
    objective's name."""
    if isinstance(objective, bool):
        objective = "stability" if objective else "plain"
    return f"{noise}_sigma{sigma:g}_{'stab' if objective == 'stability' else objective}"


def expand(sweep: Sweep) -> list[RunSpec]:
    from smoothcore.runner import CertifyConfig
    from smoothcore.train import RECIPES, TrainConfig

    sweep.check()
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
        for sigma in sweep.sigmas[noise] if isinstance(sweep.sigmas, dict) else sweep.sigmas:
            for objective in sweep.trainings(noise):
                name = run_name(noise, sigma, objective)
                train = TrainConfig(
                    **{
                        **recipe,
                        "dataset": sweep.dataset,
                        "model": sweep.model,
                        "noise": noise,
                        "sigma": sigma,
                        "stability": objective == "stability",
                        **({} if sweep.objectives is None else {"objective": objective}),
                        "objective_params": dict(sweep.objective_params.get(objective, {})),
                        "data_dir": sweep.data_dir,
                        **sweep.train,
                    }
                )
                train.validate()  # before anything runs: a bad option fails the dry run too, not run 7 of 90
                cert = CertifyConfig(
                    **{
                        "data_dir": sweep.data_dir,
                        "tag": "sweep",
                        **sweep.certify,
                        **_radii_option(sweep.certify),
                    }
                )
                cert.validate()
                specs.append(RunSpec(name, Path(sweep.out) / name, train, cert))
    return specs


def status(spec: RunSpec) -> tuple[str, str]:
    """('complete' | 'partial' | 'new') for training and for certification. A run made with other options than
    the sweep now gives it is refused, not reported as done: its results would be shown as the sweep's. A larger
    certification ``limit`` makes a finished certification partial (resuming extends it)."""
    from smoothcore.runner import check_resume, plan

    exp = Experiment(spec.path)
    if not exp.exists():
        return "new", "new"
    diff = config_diff(exp.config(), spec.train.to_dict())
    if diff:
        raise ExperimentError(
            f"{spec.path} was trained with other options than the sweep gives it: " + "; ".join(diff),
            hint="rerun the sweep with its original options, or give it another --out",
        )
    trained = (
        "complete"
        if exp.manifest().get("epoch") == spec.train.epochs and exp.checkpoint.exists()
        else "partial"
    )
    record_path = spec.path / f"certify_{spec.certify.tag}.json"
    certified = "new"
    if record_path.exists():
        record = Certification.read(record_path)
        extended = False
        if trained == "complete":
            run = plan(spec.path, spec.certify)
            check_resume(run)  # certified with other parameters: refused, with the differences
            extended = record.limit != run.record.limit
        certified = "complete" if record.finished and not extended else "partial"
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
            _, certified = status(
                spec
            )  # a table certified before (re)training is checked against the new model
        if certified != "complete":
            certify_experiment(
                spec.path, spec.certify, resume=certified == "partial", on_progress=on_progress
            )
        tables.append(spec.path / f"certify_{spec.certify.tag}.csv")
    return tables


def group_of(name: str) -> str:
    """The group of a run: its noise and training (plain, stab or the objective), over all sigmas."""
    noise, _, rest = name.partition("_sigma")
    return f"{noise}, {rest.rsplit('_', 1)[-1]}"


def sweep_table(tables: list[Path], radii) -> pd.DataFrame:
    """The sweep's report: certified accuracy (%) at ``radii`` of each run (named by its folder), then the best over
    sigma of each group (noise and training)."""
    from smoothcore.report import certified_accuracy_table, load_runs

    runs = load_runs(tables)
    for run in runs:
        run.name = run.name.split("/")[0]
    table = certified_accuracy_table(runs, radii, envelope=False)
    envelopes = []
    for group in dict.fromkeys(group_of(r.name) for r in runs):
        members = [r for r in runs if group_of(r.name) == group]
        env = certified_accuracy_table(members, radii, envelope=len(members) > 1).iloc[-1].copy()
        env["run"] = f"best over sigma: {group}"
        envelopes.append(env)
    return pd.concat([table, pd.DataFrame(envelopes)], ignore_index=True)
