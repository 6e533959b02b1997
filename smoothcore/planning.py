"""Planning a certification: from an experiment folder and a :class:`CertifyConfig` to a :class:`CertifyRun` that
holds everything the run needs (the smoothed classifier, the resolved certificate, the test set, the images, its
:class:`~smoothcore.run_record.Certification` record), checked before anything is evaluated.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from smoothcore.certificates import Certificate, default_certificate, resolve_certificate
from smoothcore.certify import SmoothedClassifier
from smoothcore.checkpoints import sha256
from smoothcore.configs import CertifyConfig
from smoothcore.data import DatasetSource, get_dataset, subset_indices
from smoothcore.devices import resolve_device
from smoothcore.errors import ConfigError, ExperimentError, SmoothcoreError, UnknownNameError
from smoothcore.experiment import Experiment
from smoothcore.loading import check_compatible, load_classifier
from smoothcore.models import stack
from smoothcore.noises import Noise, make_noise
from smoothcore.run_record import Certification

DEFAULT_ALPHA = CertifyConfig.alpha  # left out of the default tag


@dataclass
class CertifyRun:
    """A certification of one experiment's test images, ready to run: ``cfg`` as resolved for it (data folder,
    batch size), the smoothed classifier, the certificate, the test set and the images of it to certify, the
    table's ``tag`` and the ``record`` that will be written beside the table."""

    exp: Experiment
    cfg: CertifyConfig
    smoothed: SmoothedClassifier
    certificate: Certificate
    test_set: Dataset
    indices: list[int]
    tag: str
    record: Certification

    @property
    def dataset(self) -> str:
        return str(self.record.dataset)

    @property
    def table(self) -> Path:
        return self.exp.path / f"certify_{self.tag}.csv"

    @property
    def meta_path(self) -> Path:
        """The record's file, ``certify_<tag>.json``."""
        return self.exp.path / f"certify_{self.tag}.json"

    @property
    def lock_path(self) -> Path:
        return self.exp.path / f".certify_{self.tag}.lock"

    def shard_table(self, rank: int, world: int) -> Path:
        """The table rank ``rank`` of ``world`` writes in a sharded run."""
        return self.exp.path / f".certify_{self.tag}.rank{rank}of{world}.csv"

    def shards(self) -> list[Path]:
        """Shard tables of sharded runs of this table, of any world size."""
        return sorted(self.exp.path.glob(f".certify_{self.tag}.rank*of*.csv"))


def plan(exp_dir: str | Path, cfg: CertifyConfig) -> CertifyRun:
    """Load everything a certification needs and check it, without evaluating anything."""
    try:
        return _plan(exp_dir, cfg)
    except UnknownNameError as exc:
        hint = _missing_plugins_hint(Experiment(exp_dir))
        if hint is None:
            raise
        raise UnknownNameError(exc.message, hint=f"{exc.hint}; or: {hint}" if exc.hint else hint) from None


def _missing_plugins_hint(exp: Experiment) -> str | None:
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
    trained = exp.config()
    device = resolve_device(cfg.device)
    classifier_path = _classifier_path(exp, trained)
    dataset = _dataset(cfg, trained)
    source = get_dataset(dataset)
    model, info = load_classifier(
        classifier_path,
        model=trained.get("checkpoint_model"),
        dataset=dataset,
        trust=cfg.trust_checkpoint,
        device=device,
        return_info=True,
    )
    check_compatible(info | {"num_classes": info.get("num_classes", source.num_classes)}, dataset)
    denoiser_path, denoiser_sha = _denoiser_file(cfg, info)
    denoiser = None
    if denoiser_path:
        from smoothcore.denoise import load_frozen_denoiser

        denoiser = load_frozen_denoiser(
            denoiser_path, source.image_shape[0], device, trust=cfg.trust_checkpoint
        )
    noise, noise_params = _noise(cfg, trained, exp, source, device)
    cert = resolve_certificate(noise, cfg.certificate)
    full_model = stack(denoiser, model)
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
    if (
        cfg.max_batch == "auto"
    ):  # the batch bound for the dataset's images; forward batches are tuned as it runs
        cfg.max_batch = smoothed.engine.fit(source.image_shape)
    tag = cfg.tag or result_tag(
        noise.params(),
        cert.name,
        default_certificate(noise),
        cfg.denoiser is not None,
        noise_params,
        sampling=None if cert.kind == "exact" else (cfg.n, cfg.alpha),
    )
    if "/" in tag or tag.startswith("."):
        raise ConfigError(f"--tag must be a plain name, got {tag!r}")
    test_set = source.load("test", cfg.data_dir)
    indices = subset_indices(len(test_set), cfg.skip, cfg.limit, cfg.offset)
    fingerprint = getattr(test_set, "fingerprint", None)
    exact = cert.kind == "exact"
    record = Certification(
        noise=json.loads(json.dumps(noise.params())),  # as the record's file will read back
        noise_params=noise_params,
        certificate=cert.name,
        certificate_kind=cert.kind,
        norm=noise.norm,
        n0=None if exact else cfg.n0,
        n=noise.num_draws if exact else cfg.n,
        alpha=None if exact else cfg.alpha,
        dataset=dataset,
        skip=cfg.skip,
        limit=cfg.limit,
        offset=cfg.offset,
        num_images=len(indices),
        precision=cfg.precision,
        radii=cfg.radii,
        forward_passes_full_per_image=noise.num_draws if exact else cfg.n0 + cfg.n,
        classifier_sha256=sha256(classifier_path),
        denoiser=str(denoiser_path) if denoiser_path else None,
        denoiser_sha256=denoiser_sha,
        test_fingerprint=fingerprint() if fingerprint else None,
    )
    return CertifyRun(exp, cfg, smoothed, cert, test_set, indices, tag, record)


def _classifier_path(exp: Experiment, trained: dict[str, Any]) -> Path:
    path = Path(trained.get("classifier_path") or exp.checkpoint)
    if not path.is_absolute() and not path.exists():
        path = exp.path / path
    if not path.exists():
        raise ExperimentError(
            f"{exp.path} has no trained classifier yet ({path.name} is missing)",
            hint="train it first, or resume its training",
        )
    return path


def _dataset(cfg: CertifyConfig, trained: dict[str, Any]) -> str:
    """The dataset to certify; the run's ``data_dir`` is the training's while that folder is still there."""
    dataset = cfg.dataset or trained.get("dataset")
    if dataset is None:
        raise ConfigError("which dataset? give --dataset")
    trained_on = trained.get("data_dir")
    if (
        cfg.data_dir is None
        and dataset == trained.get("dataset")
        and trained_on
        and Path(trained_on).is_dir()
    ):
        cfg.data_dir = trained_on
    return dataset


def _denoiser_file(cfg: CertifyConfig, info: dict[str, Any]) -> tuple[str | None, str | None]:
    """The denoiser in front of the classifier (given, else the one it was trained on, which must be unchanged)
    and its checksum, hashed once."""
    recorded = info.get("denoiser") or {}
    path = cfg.denoiser or recorded.get("path")
    if cfg.denoiser is None and recorded and not Path(recorded["path"]).is_file():
        raise ExperimentError(
            f"the classifier was trained on top of the denoiser {recorded['path']}, which is gone",
            hint="restore it, or certify with --denoiser PATH pointing at the same file",
        )
    checksum = sha256(path) if path else None
    if cfg.denoiser is None and recorded.get("sha256") and checksum != recorded["sha256"]:
        raise ExperimentError(
            f"the denoiser {recorded['path']} changed since the classifier was trained on it (checksum differs)"
        )
    return path, checksum


def _noise(
    cfg: CertifyConfig, trained: dict[str, Any], exp: Experiment, source: DatasetSource, device: torch.device
) -> tuple[Noise, dict[str, Any]]:
    """The noise to certify with (given, else the training's, with its scale and further parameters) and its
    further parameters."""
    name = cfg.noise or trained.get("noise")
    if name is None:
        raise ConfigError("which noise? give --noise (and --sigma)")
    if name == "none" and cfg.noise is None:
        raise ConfigError(
            f"the classifier of {exp.path} was trained without noise: which noise to certify it with?",
            hint="give --noise (and --sigma), usually with --denoiser in front of a clean classifier",
        )
    same = name == trained.get("noise")
    sigma, lambd = cfg.sigma, cfg.lambd
    if sigma is None and lambd is None and same:
        sigma, lambd = trained.get("sigma"), trained.get("lambd")
    seed = cfg.noise_seed if cfg.noise_seed is not None else trained.get("noise_seed", 0) or 0
    params = cfg.noise_params
    if params is None:
        params = dict(trained.get("noise_params") or {}) if same else {}
    noise = make_noise(name, sigma=sigma, lambd=lambd, dim=source.dim, seed=seed, device=device, **params)
    return noise, params


def _fmt(x: float) -> str:
    return f"{x:g}"


def _count(n: int) -> str:
    """100000 -> 100k, 2000000 -> 2M, 12345 -> 12345."""
    for size, suffix in ((1_000_000, "M"), (1000, "k")):
        if n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


def result_tag(
    noise_params: dict[str, Any],
    certificate: str,
    default_cert: str,
    denoised: bool,
    extra: dict[str, Any] | None = None,
    *,
    sampling: tuple[int, float] | None = None,
) -> str:
    """The default name of a result table: noise, scale, further parameters, certificate (if not the default), for
    a Monte-Carlo certificate its ``sampling`` (``n``, and ``alpha`` when not the default 0.001), ``denoised``:
    ``ssn_sigma1_n100k``, ``uniform_sigma0.5_box_n10k_alpha0.01``, ``dssn_sigma0.5_denoised``."""
    scale = f"sigma{_fmt(noise_params['sigma'])}" if "sigma" in noise_params else "default"
    tag = f"{noise_params['name']}_{scale}"
    for key, value in sorted((extra or {}).items()):  # a plugin noise's further parameters tell tables apart
        shown = _fmt(value) if isinstance(value, float) else str(value)
        tag += "_" + re.sub(r"[^A-Za-z0-9.+-]", "-", f"{key}{shown}")
    if certificate != default_cert:
        tag += f"_{certificate}"
    if sampling is not None:
        n, alpha = sampling
        tag += f"_n{_count(int(n))}"
        if not math.isclose(float(alpha), DEFAULT_ALPHA):
            tag += f"_alpha{_fmt(float(alpha))}"
    if denoised:
        tag += "_denoised"
    return tag


def adopt_checkpoint(
    run_dir: str | Path,
    checkpoint: str | Path,
    *,
    model: str | None,
    dataset: str | None,
    trust: bool = False,
    with_denoiser: bool = False,
) -> tuple[str | None, bool]:
    """Make ``run_dir`` an experiment folder whose classifier is the outside ``checkpoint`` (any known layout,
    ``model`` where the file does not say; or a pretrained name or verified URL, downloaded on first use), to
    certify it there. A pretrained name also records the noise and sigma it was trained with, so that certify uses
    them by default. Returns the dataset (``dataset``, else the one the checkpoint names) and whether this call
    created the folder."""
    from smoothcore.experiment import now, plugin_versions, versions
    from smoothcore.fileio import atomic_write_json
    from smoothcore.loading import resolve_source

    ckpt, record = resolve_source(checkpoint)
    if record is not None and record.denoiser_path and not with_denoiser:
        raise ConfigError(
            f"{record.name} was retrained behind a denoiser ({record.denoiser_path} in {record.repo}): certifying "
            "it alone would not certify what was published",
            hint="give that denoiser with --denoiser",
        )
    ckpt = ckpt.resolve()
    model = model or (record.model if record else None)
    _, info = load_classifier(ckpt, model=model, dataset=dataset, trust=trust, return_info=True)
    exp = Experiment(run_dir)
    config = {
        "classifier_path": str(ckpt),
        "checkpoint_model": model or info.get("model"),
        "dataset": dataset or info.get("dataset"),
        "layout": info["layout"],
        "noise": record.noise if record else None,
        **({"sigma": record.sigma, "pretrained": record.name} if record else {}),
    }
    if exp.exists() and {k: exp.config().get(k) for k in config} != config:
        raise ExperimentError(f"{run_dir} already holds another experiment", hint="choose another RUN_DIR")
    made = not exp.path.exists()
    exp.path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(exp.path / "config.json", config)
    manifest = exp.manifest()
    exp.update_manifest(
        created=manifest.get("created", now()),
        versions=versions(),
        plugins=plugin_versions(),
        classifier_path=str(ckpt),
        checkpoint_sha256=sha256(ckpt),
        layout=info["layout"],
    )
    return config["dataset"], made
