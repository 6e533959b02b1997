"""The experiment folder: the unit of persistence.

``config.json`` (what was asked), ``manifest.json`` (versions, checksums, data fingerprint), ``checkpoint.pt``
(the classifier), ``train_state.pt`` (for ``--resume``), ``train_log.csv``, and one ``certify_<tag>.csv`` plus
``certify_<tag>.json`` per certification. Everything a report needs is in the folder.
"""

from __future__ import annotations

import csv
import datetime as _dt
import functools
import io
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from smoothcore.errors import CheckpointError, ConfigError, ExperimentError
from smoothcore.fileio import atomic_write, atomic_write_json, check_fields, read_json
from smoothcore.locking import Lock

CONFIG = "config.json"
MANIFEST = "manifest.json"
LOCK = ".lock"
T = TypeVar("T")
CHECKPOINT = "checkpoint.pt"
TRAIN_STATE = "train_state.pt"
TRAIN_LOG = "train_log.csv"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("smoothcore", "torchvision", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def plugin_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    from smoothcore.plugins import components

    owners = packages_distributions()
    out = {}
    for name, plugin in components().manager.list_name_plugin():
        module = getattr(plugin, "__name__", type(plugin).__name__)
        if module.startswith("smoothcore_plugins"):
            out[name] = "built-in"
            continue
        dists = owners.get(module.split(".")[0], [])
        try:
            out[name] = (
                f"{dists[0]} {version(dists[0])}" if dists else str(getattr(plugin, "__version__", "unknown"))
            )
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def releases_experiment_lock(method: Callable[..., T]) -> Callable[..., T]:
    """For a trainer's ``run``: the lock its experiment took in :meth:`Experiment.prepare` is released when the
    run ends, however it ends (the next run of the folder, in this process or another, may start)."""

    @functools.wraps(method)
    def run(self: Any, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        finally:
            self.exp.unlock()

    return run


class Experiment:
    """An experiment folder at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock: Lock | None = None

    # -- files --------------------------------------------------------------------------------------------------
    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def train_state(self) -> Path:
        return self.path / TRAIN_STATE

    @property
    def train_log(self) -> Path:
        return self.path / TRAIN_LOG

    def exists(self) -> bool:
        return (self.path / CONFIG).is_file()

    def config(self) -> dict[str, Any]:
        if not self.exists():
            raise ExperimentError(
                f"{self.path} is not an experiment folder (no {CONFIG})",
                hint="train one with `smoothcore train-classifier --out FOLDER`",
            )
        return check_config(read_json(self.path / CONFIG), self.path / CONFIG)

    def manifest(self) -> dict[str, Any]:
        p = self.path / MANIFEST
        data = read_json(p) if p.is_file() else {}
        if not isinstance(data, dict):
            raise ExperimentError(
                f"{p} is damaged (not a JSON object)", hint="delete it; it is rewritten by the next run"
            )
        return data

    def results(self) -> list[Path]:
        return sorted(self.path.glob("certify_*.csv"))

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def prepare(self, config: dict[str, Any], *, overwrite: bool = False, resume: bool = False) -> bool:
        """Create the folder for a new run, or check it for ``resume``. Returns True when resuming.

        A folder that already holds a run is refused unless ``overwrite`` (its results are deleted) or ``resume``
        (the configuration must match: the error lists every difference)."""
        if self.path.exists() and not self.path.is_dir():
            raise ExperimentError(f"{self.path} exists and is not a folder")
        if resume and overwrite:
            raise ConfigError("give --resume or --overwrite, not both")
        if self.path.is_dir():
            self.lock()
        if self.exists():
            if resume:
                old = self.config()
                # more epochs than recorded extends the run (--resume --epochs N); anything else must match
                before, after = old.get("epochs"), config.get("epochs")
                extends = isinstance(before, int) and isinstance(after, int) and after > before
                diff = config_diff({**old, "epochs": after} if extends else old, config)
                if diff:
                    raise ExperimentError(
                        f"--resume with a changed configuration in {self.path}: " + "; ".join(diff),
                        hint="rerun with the original options (more --epochs extends a run), or start a new --out "
                        "folder",
                    )
                if extends:
                    atomic_write_json(self.path / CONFIG, config)
                return self.train_state.is_file()
            if not overwrite:
                raise ExperimentError(
                    f"{self.path} already holds an experiment",
                    hint="pass --resume to continue it, --overwrite to replace it, or choose another --out",
                )
            for f in [
                self.path / CONFIG,
                self.path / MANIFEST,
                self.checkpoint,
                self.train_state,
                self.train_log,
                *self.results(),
                *self.path.glob("certify_*.json"),
                *self.path.glob("audit_*.csv"),
                *self.path.glob("audit_*.json"),
                *self.path.glob(".certify_*.rank*of*.csv"),
                *self.path.glob("denoiser*.pt"),
            ]:
                f.unlink(missing_ok=True)
        elif resume:
            raise ExperimentError(f"nothing to resume: {self.path} holds no experiment")
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock()
        atomic_write_json(self.path / CONFIG, config)
        self.update_manifest(created=now(), versions=versions(), plugins=plugin_versions())
        return False

    def lock(self) -> None:
        """Hold the experiment's lock (one training at a time) until :meth:`unlock` or the process ends."""
        if self._lock is None:
            self._lock = Lock(self.path / LOCK, f"the experiment {self.path}")

    def unlock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    def update_manifest(self, **fields: Any) -> None:
        manifest = self.manifest()
        manifest.update(fields)
        manifest["updated"] = now()
        atomic_write_json(self.path / MANIFEST, manifest)


_CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "dataset": (str,),
    "model": (str,),
    "noise": (str,),
    "classifier_path": (str,),
    "checkpoint_model": (str,),
    "denoiser": (str,),
    "data_dir": (str,),
    "finetune": (str,),
    "sigma": (int, float),
    "lambd": (int, float),
    "noise_seed": (int,),
    "seed": (int,),
    "epochs": (int,),
    "model_params": (dict,),
    "kind": (str,),
}


def check_config(data: Any, path: Path) -> dict[str, Any]:
    """An experiment's config.json, its fields checked (see :func:`smoothcore.fileio.check_fields`)."""
    return check_fields(data, path, _CONFIG_TYPES)


IGNORED_ON_RESUME = {
    "device",
    "workers",
    "data_dir",
    "save_every",
    "save_every_steps",
    "out",
    "progress",
    "trust_checkpoint",
}


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed between a run's recorded configuration and the one it is resumed with. Options that did not
    exist when the run was made (absent from ``old``) are not differences: the run cannot have used them."""
    keys = sorted((set(old) & set(new)) - IGNORED_ON_RESUME) + sorted(set(old) - set(new) - IGNORED_ON_RESUME)
    return [f"{k}: was {old.get(k)!r}, now {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


# -- the training log ---------------------------------------------------------------------------------------------
def append_csv(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` to the CSV log at ``path`` (header on first write)."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def truncate_log(path: Path, epochs: int) -> None:
    """Keep the rows of the CSV log at ``path`` for epochs ``1 .. epochs`` (resuming from a save at ``epochs``)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if r.get("epoch", "").isdigit() and int(r["epoch"]) <= epochs]
    if len(kept) == len(rows):
        return
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    atomic_write(path, lambda f: f.write(buf.getvalue()), mode="w")


def damaged_train_state(path: Path, exc: BaseException) -> CheckpointError:
    """The error for a ``train_state.pt`` that cannot be resumed from (``exc``: what reading it raised)."""
    return CheckpointError(
        f"{path} is damaged and cannot be resumed from ({type(exc).__name__}: {exc})",
        hint="pass --overwrite to start the run again",
    )
