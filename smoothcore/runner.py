"""Certifying a test set: the workflow behind ``smoothcore certify``.

:func:`plan` (:mod:`smoothcore.planning`) loads the classifier (and denoiser) of an experiment folder, the noise, the
certificate and the test set; :func:`execute` certifies the chosen images in chunks and appends one row per image
to ``certify_<tag>.csv`` as it finishes (:mod:`smoothcore.run_tables`, :mod:`smoothcore.results`), with the run's
:class:`Certification` record in ``certify_<tag>.json``; ``resume`` continues an interrupted run, and under torchrun
the ranks share the images (:mod:`smoothcore.sharding`). :func:`reopen` rebuilds a finished certification from its
record, as the audit needs it.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pandas as pd

from smoothcore.distributed import DistInfo
from smoothcore.errors import ConfigError, ExperimentError, SmoothcoreError
from smoothcore.experiment import Experiment, now, versions
from smoothcore.locking import Lock
from smoothcore.planning import CertifyConfig, CertifyRun, plan
from smoothcore.results import ResultWriter, load_results
from smoothcore.run_record import Certification
from smoothcore.run_tables import Progress, absorb_shards, certify_rows, images_per_chunk, remove_shards
from smoothcore.sharding import execute_sharded

__all__ = [
    "Certification",
    "CertifyConfig",
    "CertifyRun",
    "certify_experiment",
    "check_resume",
    "choose_tag",
    "execute",
    "plan",
    "reopen",
    "result_tags",
]


def certify_experiment(exp_dir: str | Path, cfg: CertifyConfig, **kwargs: Any) -> pd.DataFrame:
    """Plan and run a certification of ``exp_dir``'s test images; returns the result table."""
    return execute(plan(exp_dir, cfg), **kwargs)


def execute(
    run: CertifyRun,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_progress: Progress | None = None,
    images_per_call: int | None = None,
    dist_info: DistInfo | None = None,
) -> pd.DataFrame:
    """Certify the planned images, appending rows durably; returns the full result table.

    Under torchrun (``dist_info`` with several ranks) the ranks share the images (:mod:`smoothcore.sharding`)."""
    info = dist_info or DistInfo()
    if info.active:
        return execute_sharded(
            run, info, lambda: _check_start(run, resume, overwrite), resume=resume, on_progress=on_progress
        )
    with Lock(run.lock_path, f"{run.table}"):
        _check_start(run, resume, overwrite)
        if resume:
            absorb_shards(run)
        else:
            remove_shards(run)
        before = _seconds_before(run) if resume else 0.0
        record = dataclasses.replace(run.record, started=now(), versions=versions())
        record.write(run.meta_path)
        chunk = images_per_call or images_per_chunk(run)
        writer = None
        try:
            with ResultWriter(run.table, resume=resume) as writer:
                elapsed = certify_rows(run, writer, run.indices, chunk, on_progress)
        except BaseException:
            if not resume and (writer is None or not writer.written):
                run.table.unlink(missing_ok=True)  # nothing certified: leave no empty table behind
                run.meta_path.unlink(missing_ok=True)
            raise
        record = dataclasses.replace(
            record, finished=now(), seconds=round(before + elapsed, 3), discarded_rows=writer.discarded
        )
        record.write(run.meta_path)
    return writer.table()


def _check_start(run: CertifyRun, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise ConfigError("give --resume or --overwrite, not both")
    if run.table.exists() and not (resume or overwrite) and len(load_results(run.table)):
        raise ExperimentError(
            f"{run.table} already holds results",
            hint="pass --resume to continue it, --overwrite to replace it, or --tag to write another table",
        )
    if resume:
        check_resume(run)


def _seconds_before(run: CertifyRun) -> float:
    """Certification time recorded by the parts of a resumed run before this one."""
    try:
        seconds = Certification.read(run.meta_path).seconds if run.meta_path.exists() else None
    except SmoothcoreError:
        return 0.0
    return float(seconds) if seconds is not None else 0.0


def check_resume(run: CertifyRun) -> None:
    """``--resume`` continues a table only with the parameters it was started with; a larger ``--limit`` (or none)
    extends it, since the images planned before are the first of those planned now."""
    if not run.meta_path.exists():
        rows = any(len(load_results(p)) for p in [run.table, *run.shards()] if p.exists())
        if rows:
            raise ExperimentError(
                f"cannot resume {run.table.name}: its parameters ({run.meta_path.name}) are missing, so nothing "
                "says its rows were certified as asked now",
                hint="certify it again with --overwrite, or write another table with --tag",
            )
        return
    diff = Certification.read(run.meta_path).changes(run.record)
    if diff:
        raise ExperimentError(
            f"--resume with changed parameters for {run.table.name}: " + "; ".join(diff),
            hint=f"resume with the parameters in {run.meta_path.name} (a larger --limit extends the table), "
            "or write another table with --tag",
        )


# -- reopening a certification -----------------------------------------------------------------------------------
def result_tags(run_dir: str | Path) -> list[str]:
    """The tags of the result tables in ``run_dir``."""
    return sorted(p.name[len("certify_") : -len(".csv")] for p in Path(run_dir).glob("certify_*.csv"))


def choose_tag(run_dir: str | Path, tag: str | None) -> str:
    """``tag`` if given (checked), else the folder's only result table."""
    Experiment(run_dir).config()  # an experiment folder, or a clear error
    tags = result_tags(run_dir)
    if tag is not None:
        if tag not in tags:
            raise ExperimentError(
                f"{run_dir} has no result table certify_{tag}.csv; tables: {', '.join(tags) or '(none)'}"
            )
        return tag
    if not tags:
        raise ExperimentError(
            f"{run_dir} has no result tables (certify_<tag>.csv)",
            hint="certify it first: smoothcore certify RUN_DIR",
        )
    if len(tags) > 1:
        raise ConfigError(
            f"{run_dir} has several result tables ({', '.join(tags)}); which one?", hint="give --tag"
        )
    return tags[0]


def reopen(
    run_dir: str | Path,
    tag: str | None = None,
    *,
    data_dir: str | None = None,
    device: str = "auto",
    max_batch: int | str = "auto",
    trust_checkpoint: bool = False,
) -> CertifyRun:
    """The certification of ``certify_<tag>.csv`` in ``run_dir`` (``tag`` None: the folder's only table), planned
    again from its record as it ran: the same classifier, denoiser, noise and certificate. Refused when the
    classifier, the test data or the noise that its record names are not the ones that rebuild now."""
    record, cfg = recorded_config(run_dir, tag, selection=False)
    cfg = dataclasses.replace(
        cfg, data_dir=data_dir, device=device, max_batch=max_batch, trust_checkpoint=trust_checkpoint
    )
    run = plan(run_dir, cfg)
    _check_same_run(run, record)
    return run


def recorded_config(
    run_dir: str | Path, tag: str | None = None, *, selection: bool = True
) -> tuple[Certification, CertifyConfig]:
    """The record of ``certify_<tag>.csv`` (``tag`` None: the folder's only table) and the configuration that
    certifies it again as it ran: noise and certificate, and with ``selection`` also the images, the Monte-Carlo
    settings, the precision and the early decisions (all that ``certify --resume`` needs)."""
    tag = choose_tag(run_dir, tag)
    record_path = Experiment(run_dir).path / f"certify_{tag}.json"
    if not record_path.is_file():
        raise ExperimentError(
            f"certify_{tag}.csv has no parameters file {record_path.name}; cannot rebuild its noise"
        )
    record = Certification.read(record_path)
    try:
        cfg = _config_of(record, tag)
    except (TypeError, ValueError, AttributeError) as exc:
        raise ExperimentError(f"certify_{tag}.json is damaged ({exc})") from None
    if not selection:
        return record, cfg
    chosen = {
        key: getattr(record, key)
        for key in ("skip", "limit", "offset", "precision", "radii")
        if getattr(record, key) is not None
    }
    if record.certificate_kind != "exact":  # an exact certificate records its draw count as n and no n0
        chosen.update(
            {key: getattr(record, key) for key in ("n0", "n", "alpha") if getattr(record, key) is not None}
        )
    return record, dataclasses.replace(cfg, **chosen)


def _config_of(record: Certification, tag: str) -> CertifyConfig:
    """The configuration that rebuilds the certification ``record`` describes."""
    params = dict(record.noise or {})
    if "name" not in params:
        raise ExperimentError(f"certify_{tag}.json does not record its noise")
    # the half-width, when recorded, fixes a uniform-family noise exactly (DSSN's draw count depends on it)
    lambd = params.get("lambda")
    return CertifyConfig(
        noise=params["name"],
        sigma=params.get("sigma") if lambd is None else None,
        lambd=lambd,
        noise_seed=int(params.get("seed", 0) or 0),
        noise_params=dict(record.noise_params or {}),
        certificate=record.certificate,
        dataset=record.dataset,
        denoiser=record.denoiser,
        tag=tag,
    )


def _check_same_run(run: CertifyRun, recorded: Certification) -> None:
    """Refuse a run whose classifier, test data or noise are not those its record names."""
    table = run.table.name
    if recorded.classifier_sha256 and recorded.classifier_sha256 != run.record.classifier_sha256:
        raise ExperimentError(
            f"the classifier changed since {table} was certified (checksum differs)",
            hint="certify again, then audit",
        )
    old_data, new_data = recorded.test_fingerprint, run.record.test_fingerprint
    if old_data and new_data and old_data != new_data:
        raise ExperimentError(
            f"the test data differs from the data {table} was certified on (fingerprint differs)",
            hint="point --data-dir at the dataset the table was certified on",
        )
    old_noise, new_noise = recorded.noise or {}, run.record.noise or {}
    if not _same_params(old_noise, new_noise):
        raise ExperimentError(f"{table} was certified with noise {old_noise}, which rebuilds as {new_noise}")


def _same_params(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal keys and values, floats up to rounding (sigma and lambda are derived from each other)."""
    if a.keys() != b.keys():
        return False
    for key, u in a.items():
        v = b[key]
        numbers = isinstance(u, (int, float)) and isinstance(v, (int, float))
        if isinstance(u, float) or isinstance(v, float):
            if not (numbers and math.isclose(u, v, rel_tol=1e-12)):
                return False
        elif u != v:
            return False
    return True
