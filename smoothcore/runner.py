"""Certifying a test set: the workflow behind ``smoothcore certify``.

Loads the classifier (and denoiser) of an experiment folder, builds the noise, certifies the chosen test images
in chunks and appends one row per image to ``certify_<tag>.csv`` as it finishes (see :mod:`smoothcore.results`),
with the run's parameters in ``certify_<tag>.json``. ``resume`` continues an interrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from smoothcore.certificates import default_certificate, resolve_certificate
from smoothcore.certify import SmoothedClassifier
from smoothcore.checkpoints import sha256
from smoothcore.checks import check_params, check_radii
from smoothcore.data import fetch, get_dataset, subset_indices
from smoothcore.devices import resolve_device
from smoothcore.distributed import DistInfo, all_agree, barrier
from smoothcore.errors import ConfigError, ExperimentError, SmoothcoreError, UnknownNameError
from smoothcore.experiment import Experiment, now, versions
from smoothcore.fileio import atomic_write_json, read_json
from smoothcore.loading import check_compatible, load_classifier
from smoothcore.locking import Lock
from smoothcore.models import stack
from smoothcore.noise import NOISE_ARGUMENTS, make_noise
from smoothcore.results import ResultWriter, load_results


@dataclass
class CertifyConfig:
    noise: str | None = None  # default: the noise the classifier was trained with
    sigma: float | None = None
    lambd: float | None = None
    noise_seed: int | None = None
    noise_params: dict[str, Any] | None = None  # a noise's further parameters; None: the training's
    certificate: str | None = None
    n0: int = 64
    n: int = 100_000
    alpha: float = 0.001
    skip: int = 1
    limit: int | None = None
    offset: int = 0
    max_batch: int | str = 1024  # or "auto"
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    device: str = "auto"  # cuda when available, else cpu
    data_dir: str | None = None
    dataset: str | None = None
    denoiser: str | None = None
    tag: str | None = None
    trust_checkpoint: bool = False
    radii: list[float] | None = None  # early decisions at these radii

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """The options that need no model or data, checked before anything is loaded (a sweep checks them before
        its first run trains)."""
        from smoothcore.engine import PRECISIONS, check_batch

        SmoothedClassifier._check_mc(self.n0, self.n, self.alpha)
        if self.noise_params is not None:
            check_params("noise_params", self.noise_params, NOISE_ARGUMENTS)
        subset_indices(0, self.skip, self.limit, self.offset)
        if self.max_batch != "auto":
            check_batch(self.max_batch, "max_batch")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.radii is not None:
            self.radii = check_radii(self.radii)  # the Python API's check; recorded as a JSON list of floats


def _fmt(x: float) -> str:
    return f"{x:g}"


def result_tag(
    noise_params: dict[str, Any],
    certificate: str,
    default_cert: str,
    denoised: bool,
    extra: dict[str, Any] | None = None,
) -> str:
    scale = f"sigma{_fmt(noise_params['sigma'])}" if "sigma" in noise_params else "default"
    tag = f"{noise_params['name']}_{scale}"
    for key, value in sorted((extra or {}).items()):  # a plugin noise's further parameters tell tables apart
        shown = _fmt(value) if isinstance(value, float) else str(value)
        tag += "_" + re.sub(r"[^A-Za-z0-9.+-]", "-", f"{key}{shown}")
    if certificate != default_cert:
        tag += f"_{certificate}"
    if denoised:
        tag += "_denoised"
    return tag


@dataclass
class CertifyRun:
    """A certification of one experiment's test images, ready to run."""

    exp: Experiment
    cfg: CertifyConfig
    smoothed: SmoothedClassifier
    dataset: str
    indices: list[int]
    tag: str
    meta: dict[str, Any]

    @property
    def table(self) -> Path:
        return self.exp.path / f"certify_{self.tag}.csv"

    @property
    def meta_path(self) -> Path:
        return self.exp.path / f"certify_{self.tag}.json"

    @property
    def lock_path(self) -> Path:
        return self.exp.path / f".certify_{self.tag}.lock"

    def shards(self) -> list[Path]:
        """Shard tables of sharded runs of this table, of any world size."""
        return sorted(self.exp.path.glob(f".certify_{self.tag}.rank*of*.csv"))


def plan(exp_dir: str | Path, cfg: CertifyConfig) -> CertifyRun:
    """Load everything a certification needs and check it, without evaluating anything."""
    try:
        return _plan(exp_dir, cfg)
    except UnknownNameError as exc:
        hint = missing_plugins_hint(Experiment(exp_dir))
        if hint is None:
            raise
        raise UnknownNameError(exc.message, hint=f"{exc.hint}; or: {hint}" if exc.hint else hint) from None


def missing_plugins_hint(exp: Experiment) -> str | None:
    """When a name is unknown: the third-party plugins the experiment was made with that are not loaded now."""
    from smoothcore.plugins import components

    try:
        recorded = exp.manifest().get("plugins") or {}
    except SmoothcoreError:
        return None
    loaded = {name for name, _ in components().manager.list_name_plugin()}
    missing = (
        {n: v for n, v in recorded.items() if v != "built-in" and n not in loaded}
        if isinstance(recorded, dict)
        else {}
    )
    if not missing:
        return None
    listed = ", ".join(f"{n} ({v})" for n, v in sorted(missing.items()))
    return f"{exp.path} was made with the plugin(s) {listed}, not loaded now: install them (or check SMOOTHCORE_LOAD_PLUGINS)"


def _plan(exp_dir: str | Path, cfg: CertifyConfig) -> CertifyRun:
    cfg = dataclasses.replace(
        cfg
    )  # what is resolved here (data_dir, auto max_batch) is the run's, not the caller's
    cfg.validate()
    exp = Experiment(exp_dir)
    train_cfg = exp.config()
    device = resolve_device(cfg.device)
    classifier_path = Path(train_cfg.get("classifier_path") or exp.checkpoint)
    if not classifier_path.is_absolute() and not classifier_path.exists():
        classifier_path = exp.path / classifier_path
    if not classifier_path.exists():
        raise ExperimentError(
            f"{exp.path} has no trained classifier yet ({classifier_path.name} is missing)",
            hint="train it first, or resume its training",
        )
    dataset = cfg.dataset or train_cfg.get("dataset")
    if dataset is None:
        raise ConfigError("which dataset? give --dataset")
    trained_on = train_cfg.get("data_dir")
    if (
        cfg.data_dir is None
        and dataset == train_cfg.get("dataset")
        and trained_on
        and Path(trained_on).is_dir()
    ):
        cfg.data_dir = trained_on  # where the run's training read this dataset from, while it is still there
    source = get_dataset(dataset)
    model, info = load_classifier(
        classifier_path,
        model=train_cfg.get("checkpoint_model"),
        dataset=dataset,
        trust=cfg.trust_checkpoint,
        device=device,
        return_info=True,
    )
    check_compatible(info | {"num_classes": info.get("num_classes", source.num_classes)}, dataset)
    recorded = info.get("denoiser") or {}
    denoiser_path = cfg.denoiser or recorded.get("path")
    if cfg.denoiser is None and recorded:
        if not Path(recorded["path"]).is_file():
            raise ExperimentError(
                f"the classifier was trained on top of the denoiser {recorded['path']}, which is gone",
                hint="restore it, or certify with --denoiser PATH pointing at the same file",
            )
        if recorded.get("sha256") and sha256(recorded["path"]) != recorded["sha256"]:
            raise ExperimentError(
                f"the denoiser {recorded['path']} changed since the classifier was trained on it (checksum differs)"
            )
    denoiser = None
    if denoiser_path:
        from smoothcore.train import load_frozen_denoiser

        denoiser = load_frozen_denoiser(
            denoiser_path, source.image_shape[0], device, trust=cfg.trust_checkpoint
        )
    noise_name = cfg.noise or train_cfg.get("noise")
    if noise_name is None:
        raise ConfigError("which noise? give --noise (and --sigma)")
    if noise_name == "none" and cfg.noise is None:
        raise ConfigError(
            f"the classifier of {exp.path} was trained without noise: which noise to certify it with?",
            hint="give --noise (and --sigma), usually with --denoiser in front of a clean classifier",
        )
    sigma, lambd = cfg.sigma, cfg.lambd
    if sigma is None and lambd is None and noise_name == train_cfg.get("noise"):
        sigma, lambd = train_cfg.get("sigma"), train_cfg.get("lambd")
    seed = cfg.noise_seed if cfg.noise_seed is not None else train_cfg.get("noise_seed", 0) or 0
    noise_params = cfg.noise_params
    if noise_params is None:
        noise_params = (
            dict(train_cfg.get("noise_params") or {}) if noise_name == train_cfg.get("noise") else {}
        )
    noise = make_noise(
        noise_name, sigma=sigma, lambd=lambd, dim=source.dim, seed=seed, device=device, **noise_params
    )
    cert = resolve_certificate(noise, cfg.certificate)
    full_model = stack(denoiser, model)
    if cfg.max_batch == "auto":
        from smoothcore.engine import auto_max_batch

        cfg.max_batch = auto_max_batch(full_model, source.image_shape, device)
    smoothed = SmoothedClassifier(
        full_model,
        noise,
        source.num_classes,
        max_batch=cfg.max_batch,
        device=device,
        precision=cfg.precision,
        channels_last=cfg.channels_last,
        compile=cfg.compile,
    )
    tag = cfg.tag or result_tag(
        noise.params(), cert.name, default_certificate(noise), cfg.denoiser is not None, noise_params
    )
    if "/" in tag or tag.startswith("."):
        raise ConfigError(f"--tag must be a plain name, got {tag!r}")
    test_set = load_test_set(source, cfg.data_dir)
    test_len = len(test_set)
    fingerprint = getattr(test_set, "fingerprint", None)
    indices = subset_indices(test_len, cfg.skip, cfg.limit, cfg.offset)
    meta = {
        "noise": noise.params(),
        "noise_params": noise_params,
        "certificate": cert.name,
        "certificate_kind": cert.kind,
        "norm": noise.norm,
        "n0": cfg.n0 if cert.kind != "exact" else None,
        "n": cfg.n if cert.kind != "exact" else noise.num_draws,
        "alpha": cfg.alpha if cert.kind != "exact" else None,
        "dataset": dataset,
        "skip": cfg.skip,
        "limit": cfg.limit,
        "offset": cfg.offset,
        "num_images": len(indices),
        "precision": cfg.precision,
        "radii": cfg.radii,
        "forward_passes_full_per_image": noise.num_draws if cert.kind == "exact" else cfg.n0 + cfg.n,
        "classifier_sha256": sha256(classifier_path),
        "denoiser": str(denoiser_path) if denoiser_path else None,
        "denoiser_sha256": sha256(denoiser_path) if denoiser_path else None,
        "test_fingerprint": fingerprint() if fingerprint else None,
    }
    return CertifyRun(exp, cfg, smoothed, dataset, indices, tag, meta)


_TEST_SETS: dict[tuple[str, str | None], Any] = {}


def load_test_set(source, data_dir):
    """The test split of ``source`` (cached: a certification and the audit of it read it once)."""
    key = (source.name, data_dir)
    if key not in _TEST_SETS:
        _TEST_SETS.clear()
        _TEST_SETS[key] = source.load("test", data_dir)
    return _TEST_SETS[key]


MEANINGFUL = (
    "noise",
    "certificate",
    "n0",
    "n",
    "alpha",
    "dataset",
    "skip",
    "limit",
    "offset",
    "precision",
    "classifier_sha256",
    "denoiser_sha256",
    "radii",
    "test_fingerprint",
)


def execute(
    run: CertifyRun,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    images_per_call: int | None = None,
    dist_info: DistInfo | None = None,
) -> pd.DataFrame:
    """Certify the planned images, appending rows durably; returns the full result table.

    Under torchrun (``dist_info`` with several ranks) each rank certifies every ``world``-th image into its own
    shard table, and rank 0 merges the shards into the one table a single process would have written (per-image
    random streams make the rows identical)."""
    info = dist_info or DistInfo()
    if info.active:
        return _execute_sharded(run, info, resume=resume, overwrite=overwrite, on_progress=on_progress)
    with Lock(run.lock_path, f"{run.table}"):
        _check_start(run, resume, overwrite)
        if resume:
            absorb_shards(run)
        else:
            _remove_shards(run)
        meta = dict(run.meta, started=now(), versions=versions())
        before = _seconds_before(run) if resume else 0.0
        atomic_write_json(run.meta_path, meta)
        cfg = run.cfg
        noise = run.smoothed.noise
        chunk = images_per_call or _images_per_call(cfg, noise)
        try:
            writer, elapsed = _certify_rows(run, resume, chunk, on_progress)
        except BaseException:
            if not resume and run.table.exists() and not len(load_results(run.table)):
                run.table.unlink()  # nothing certified: leave no empty table behind
                run.meta_path.unlink(missing_ok=True)
            raise
        table = load_results(run.table)
        meta.update(finished=now(), seconds=round(before + elapsed, 3), discarded_rows=writer.discarded)
        atomic_write_json(run.meta_path, meta)
    return table


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
        seconds = read_json(run.meta_path).get("seconds") if run.meta_path.exists() else None
    except SmoothcoreError:
        return 0.0
    return float(seconds) if isinstance(seconds, (int, float)) else 0.0


def absorb_shards(run: CertifyRun) -> None:
    """Rows left in shard tables by an interrupted sharded run (of any world size) join the table before a
    resume, so that no image is certified twice and none is listed twice."""
    shards = run.shards()
    if not shards:
        return
    frames = [load_results(p) for p in ([run.table] if run.table.exists() else []) + shards]
    _write_table(run.table, frames)
    for p in shards:
        p.unlink(missing_ok=True)


def _remove_shards(run: CertifyRun) -> None:
    for p in run.shards():
        p.unlink(missing_ok=True)


def _write_table(path: Path, frames: list[pd.DataFrame]) -> None:
    """``frames`` as one table at ``path``, by image index, each image once (the first row of it wins)."""
    frames = [f for f in frames if len(f)]
    merged = (
        pd.concat(frames, ignore_index=True)
        .drop_duplicates("index")
        .sort_values("index")
        .reset_index(drop=True)
        if frames
        else None
    )
    tmp = path.with_name(path.name + ".merging")
    with ResultWriter(tmp, resume=False) as writer:
        for row in merged.to_dict("records") if merged is not None else []:
            writer.write(
                {
                    k: (None if isinstance(v, float) and v != v and k != "radius" else v)
                    for k, v in row.items()
                }
            )
    tmp.replace(path)


def _images_per_call(cfg: CertifyConfig, noise) -> int:
    """Images per certify call so that the engine's forward batches are full: exact enumeration with early decisions
    evaluates ``num_draws / decision_points`` draws per image per batch, not all of them, and needs images in
    reserve to refill the room that decided images leave."""
    from smoothcore.engine import DECISION_POINTS, exact_chunk

    if noise.exact:
        per_image = exact_chunk(noise.num_draws, cfg.max_batch, DECISION_POINTS if cfg.radii else None)
    else:
        per_image = min(cfg.n0 + cfg.n, cfg.max_batch)
    images = max(1, cfg.max_batch // max(1, per_image))
    # with early decisions the engine refills the room of decided images from the rest of the call
    return images * 4 if noise.exact and cfg.radii else images


def _certify_rows(run: CertifyRun, resume: bool, chunk: int, on_progress) -> tuple[ResultWriter, float]:
    cfg = run.cfg
    test_set = load_test_set(get_dataset(run.dataset), cfg.data_dir)
    with ResultWriter(run.table, resume=resume) as writer:
        done = set(int(i) for i in writer.done["index"]) if len(writer.done) else set()
        todo = [i for i in run.indices if i not in done]
        if on_progress is not None:
            on_progress(len(run.indices) - len(todo), len(run.indices))
        t_start = time.perf_counter()
        for c0 in range(0, len(todo), chunk):
            idx = todo[c0 : c0 + chunk]
            x, y = fetch(test_set, idx)
            t0 = time.perf_counter()
            result = run.smoothed.certify(
                x,
                n0=cfg.n0,
                n=cfg.n,
                alpha=cfg.alpha,
                indices=idx,
                certificate=cfg.certificate,
                radii=cfg.radii,
            )
            seconds = (time.perf_counter() - t0) / len(idx)
            for j, index in enumerate(idx):
                pred = int(result.prediction[j])
                writer.write(
                    {
                        "index": index,
                        "label": int(y[j]),
                        "prediction": pred,
                        "correct": int(pred == int(y[j])),
                        "radius": float(result.radius[j]),
                        "norm": result.norm,
                        "certificate": result.certificate,
                        "p_lower": float(result.p_lower[j]) if result.p_lower is not None else None,
                        "counts": " ".join(map(str, result.counts[j].tolist()))
                        if result.counts is not None
                        else None,
                        "forward_passes": int(result.draws[j]),
                        "seconds": round(seconds, 6),
                        "extra": json.dumps({k: float(v[j]) for k, v in result.extra.items()}, sort_keys=True)
                        if result.extra
                        else None,
                    }
                )
            if on_progress is not None:
                on_progress(len(run.indices) - len(todo) + c0 + len(idx), len(run.indices))
        elapsed = time.perf_counter() - t_start
    return writer, elapsed


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
    old = read_json(run.meta_path)
    diff = [
        f"{k}: was {old.get(k)!r}, now {run.meta.get(k)!r}"
        for k in MEANINGFUL
        if old.get(k) != run.meta.get(k) and not (k == "limit" and _extends(old.get(k), run.meta.get(k)))
    ]
    if diff:
        raise ExperimentError(
            f"--resume with changed parameters for {run.table.name}: " + "; ".join(diff),
            hint=f"resume with the parameters in {run.meta_path.name} (a larger --limit extends the table), "
            "or write another table with --tag",
        )


def _extends(old_limit: Any, new_limit: Any) -> bool:
    return isinstance(old_limit, int) and (
        new_limit is None or (isinstance(new_limit, int) and new_limit > old_limit)
    )


def shard_path(run: CertifyRun, info: DistInfo) -> Path:
    return run.exp.path / f".certify_{run.tag}.rank{info.rank}of{info.world}.csv"


def _execute_sharded(
    run: CertifyRun, info: DistInfo, *, resume: bool, overwrite: bool, on_progress
) -> pd.DataFrame:
    # every rank checks what it can see; rank 0 alone holds the table's lock; all agree before any work starts,
    # so that a refusal on one rank leaves none of the others waiting at a barrier
    problem: SmoothcoreError | None = None
    lock: Lock | None = None
    try:
        _check_start(run, resume, overwrite)
        if info.main:
            lock = Lock(run.lock_path, f"{run.table}")
    except SmoothcoreError as exc:
        problem = exc
    if not all_agree(info, problem is None):
        if lock is not None:
            lock.release()
        raise problem or ExperimentError(
            f"another rank refused to certify {run.table.name} (its error says why)"
        )
    try:
        return _certify_sharded(run, info, resume=resume, on_progress=on_progress)
    finally:
        if lock is not None:
            lock.release()


def _certify_sharded(run: CertifyRun, info: DistInfo, *, resume: bool, on_progress) -> pd.DataFrame:
    if info.main:
        if resume:
            absorb_shards(run)  # shards of an interrupted run (this world size or another) join the table
        else:
            _remove_shards(run)
            run.table.unlink(missing_ok=True)
        atomic_write_json(
            run.meta_path, dict(run.meta, started=now(), versions=versions(), world_size=info.world)
        )
    barrier(info)
    done_before = (
        set(load_results(run.table)["index"].astype(int)) if resume and run.table.exists() else set()
    )
    mine = [i for i in run.indices[info.rank :: info.world] if i not in done_before]
    shard = CertifyRun(run.exp, run.cfg, run.smoothed, run.dataset, mine, run.tag, run.meta)
    shard_table = shard_path(run, info)
    chunk = _images_per_call(run.cfg, run.smoothed.noise)
    shard_run = _ShardRun(shard, shard_table)
    _certify_rows(shard_run, False, chunk, on_progress if info.main else None)
    barrier(info)
    if info.main:
        shards = [run.exp.path / f".certify_{run.tag}.rank{r}of{info.world}.csv" for r in range(info.world)]
        frames = [load_results(run.table)] if done_before else []
        _write_table(run.table, frames + [load_results(p) for p in shards])
        for p in shards:
            p.unlink(missing_ok=True)
        atomic_write_json(
            run.meta_path, dict(run.meta, finished=now(), versions=versions(), world_size=info.world)
        )
    barrier(info)
    return load_results(run.table)


class _ShardRun:
    """A CertifyRun whose rows go to a shard table."""

    def __init__(self, run: CertifyRun, table: Path) -> None:
        self._run, self.table = run, table

    def __getattr__(self, name: str) -> Any:
        return getattr(self._run, name)


def certify_experiment(exp_dir: str | Path, cfg: CertifyConfig, **kwargs: Any) -> pd.DataFrame:
    """Plan and run a certification of ``exp_dir``'s test images; returns the result table."""
    return execute(plan(exp_dir, cfg), **kwargs)
