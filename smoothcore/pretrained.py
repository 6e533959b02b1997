"""Pretrained classifiers by name, and verified downloads of checkpoint files.

The manifests ship inside the package (``smoothcore/manifests/*.tsv``): one row per released file with its path in
the publishing repository at a pinned commit and its git blob id. A name is ``<manifest>/<name>``, for example
``levine-feizi-2021/cifar_split_derandomized_1.0``. :func:`fetch` downloads a file on first use, verifies it
*before* it enters the cache (a download cut short or corrupted is deleted, never used), and afterwards reads it
from the cache: ``$SMOOTHCORE_CACHE``, else the platform's user cache folder. Sources:

- a manifest name: verified against the git blob id (sha1 over ``blob <size>\\0`` + bytes);
- ``https://...#sha256=<hex>``: any URL, verified against the SHA-256 in its fragment (required);
- ``hf://owner/repo/path/in/repo[@revision]``: through ``huggingface_hub`` (optional extra), which verifies.

Further manifests in the same layout are read from the folders in ``$SMOOTHCORE_MANIFESTS``.
``$SMOOTHCORE_PRETRAINED_URL`` replaces ``https://raw.githubusercontent.com`` for manifest downloads (a mirror).
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from smoothcore.errors import CheckpointError, ConfigError

RAW_HOST = "https://raw.githubusercontent.com"
MIRROR_ENV = "SMOOTHCORE_PRETRAINED_URL"
CACHE_ENV = "SMOOTHCORE_CACHE"
MANIFESTS_ENV = (
    "SMOOTHCORE_MANIFESTS"  # further folders of manifests (a lab's own releases), os.pathsep-separated
)
CHUNK = 1 << 20
TIMEOUT_S = 60

# the reference's names (args.pkl) -> smoothcore's registered names
_NOISES = {"SplitMethodDerandomized": "dssn", "SplitMethod": "ssn", "Uniform": "uniform"}
_MODELS = {"WideResNet": "wrn40"}
_DATASETS = {"cifar": "cifar10"}


@dataclass(frozen=True)
class Pretrained:
    """One released classifier: where it lives and how it was trained (what to certify it with)."""

    name: str  # "<manifest>/<name>"
    repo: str  # owner/name of the publishing repository
    commit: str
    path: str  # in the repository at ``commit``
    git_blob: str
    noise: str  # smoothcore noise name
    sigma: float
    stability: bool
    model: str  # smoothcore model name
    dataset: str  # smoothcore dataset name
    denoiser_path: (
        str | None
    )  # the denoiser it was retrained behind, if any (not verifiable: no blob id given)

    @property
    def url(self) -> str:
        base = os.environ.get(MIRROR_ENV, RAW_HOST).rstrip("/")
        return f"{base}/{self.repo}/{self.commit}/{self.path}"

    @property
    def training(self) -> str:
        return "stability" if self.stability else ("denoiser retrained" if self.denoiser_path else "plain")


def _header_facts(lines: list[str]) -> tuple[str, str]:
    """(repo, commit) from a manifest's first comment line: '... (repository OWNER/NAME, commit SHA).'"""
    head = lines[0]
    try:
        repo = head.split("repository ", 1)[1].split(",", 1)[0].strip()
        commit = head.split("commit ", 1)[1].split(")", 1)[0].strip()
    except IndexError:
        raise ConfigError(f"manifest header does not name its repository and commit: {head!r}") from None
    return repo, commit


_NAME_NOISES = {"split_derandomized": "SplitMethodDerandomized", "split": "SplitMethod", "uniform": "Uniform"}


def _settings_from_name(name: str) -> dict[str, str]:
    """The settings a reference name states (``cifar_<noise>_<sigma>[_stabilized]``), for rows whose args.pkl
    was not released (one in the paper's manifest): used only where the row leaves a column empty."""
    match = re.fullmatch(r"(?:.*/)?cifar_(split_derandomized|split|uniform)_([0-9.]+)(_stabilized)?", name)
    if not match:
        return {}
    noise, sigma, stabilized = match.groups()
    return {
        "noise": _NAME_NOISES[noise],
        "sigma": sigma,
        "stability": str(bool(stabilized)),
        "model": "WideResNet",
        "dataset": "cifar",
    }


def _parse_manifest(stem: str, text: str) -> list[Pretrained]:
    lines = text.splitlines()
    repo, commit = _header_facts(lines)
    rows = csv.DictReader([line for line in lines if not line.startswith("#")], delimiter="\t")
    missing = {"name", "path", "git_blob", "noise", "sigma", "stability", "model", "dataset"} - set(
        rows.fieldnames or []
    )
    if missing:
        raise ConfigError(f"manifest {stem!r} lacks the columns {', '.join(sorted(missing))}")
    out = []
    for row in rows:
        row = {**_settings_from_name(row["name"]), **{k: v for k, v in row.items() if v}}
        out.append(
            Pretrained(
                name=f"{stem}/{row['name']}",
                repo=repo,
                commit=commit,
                path=row["path"],
                git_blob=row["git_blob"],
                noise=_NOISES.get(row["noise"], row["noise"]),
                sigma=float(row["sigma"]),
                stability=row["stability"] == "True",
                model=_MODELS.get(row["model"], row["model"]),
                dataset=_DATASETS.get(row["dataset"], row["dataset"]),
                denoiser_path=row.get("denoiser_path") or None,
            )
        )
    return out


def _manifests() -> list[tuple[str, str]]:
    """(stem, text) of the package's manifests, then of the ``.tsv`` files in ``$SMOOTHCORE_MANIFESTS``'s folders."""
    found = [
        (entry.name[: -len(".tsv")], entry.read_text())
        for entry in sorted(
            resources.files("smoothcore").joinpath("manifests").iterdir(), key=lambda e: e.name
        )
        if entry.name.endswith(".tsv")
    ]
    for folder in filter(None, os.environ.get(MANIFESTS_ENV, "").split(os.pathsep)):
        for path in sorted(Path(folder).glob("*.tsv")):
            try:
                found.append((path.stem, path.read_text()))
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"cannot read the manifest {path}: {exc}") from None
    return found


def catalogue() -> dict[str, Pretrained]:
    """Every pretrained classifier of every manifest (the package's, then ``$SMOOTHCORE_MANIFESTS``'s), by name."""
    models: dict[str, Pretrained] = {}
    for stem, text in _manifests():
        for record in _parse_manifest(stem, text):
            models[record.name] = record
    return models


def list_models(pattern: str | None = None) -> list[Pretrained]:
    """The pretrained classifiers whose name matches the glob ``pattern`` (all when None)."""
    return [m for name, m in catalogue().items() if pattern is None or fnmatch.fnmatch(name, pattern)]


def get(name: str) -> Pretrained:
    models = catalogue()
    if name in models:
        return models[name]
    close = [n for n in models if name.split("/")[-1] in n][:5]
    raise ConfigError(
        f"no pretrained model {name!r}",
        hint=f"did you mean {', '.join(close)}?" if close else "`smoothcore models` lists them",
    )


def is_pretrained_name(source: str | Path) -> bool:
    """True for a manifest name (``<manifest>/<name>`` that the catalogue holds), a verified URL or an hf:// path."""
    text = str(source)
    return text.startswith(("https://", "http://", "hf://")) or text in catalogue()


def cache_dir() -> Path:
    """``$SMOOTHCORE_CACHE``, else the platform's user cache folder + ``smoothcore``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "smoothcore"
    if os.name == "nt":
        return (
            Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "smoothcore" / "Cache"
        )
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "smoothcore"


def git_blob_id(path: Path) -> str:
    """git's object id of a file: sha1 over ``blob <size>\\0`` followed by the bytes."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    _update(digest, path)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    _update(digest, path)
    return digest.hexdigest()


def _update(digest, path: Path) -> None:
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)


@dataclass(frozen=True)
class _Source:
    url: str
    target: Path  # where the verified file lives in the cache
    check: str  # "git_blob" | "sha256"
    expected: str


def _source_of(source: str) -> _Source:
    if source.startswith(("https://", "http://")):
        url, _, fragment = source.partition("#")
        if not fragment.startswith("sha256=") or len(fragment) != len("sha256=") + 64:
            raise ConfigError(
                f"a checkpoint URL needs its SHA-256: {source!r}",
                hint="append #sha256=<64 hex digits> so that the download can be verified",
            )
        expected = fragment[len("sha256=") :].lower()
        name = url.rstrip("/").rsplit("/", 1)[-1] or "checkpoint"
        return _Source(url, cache_dir() / "url" / expected[:16] / name, "sha256", expected)
    record = get(source)
    target = cache_dir() / record.repo.replace("/", "+") / record.commit / record.path
    return _Source(record.url, target, "git_blob", record.git_blob)


def fetch(source: str | Path, *, quiet: bool = True) -> Path:
    """The local path of ``source`` (a pretrained name, a ``https://...#sha256=`` URL or an ``hf://`` path),
    downloaded and verified on first use. Raises CheckpointError when it cannot be had (saying where to put the
    file by hand) or does not verify; nothing unverified is ever left in the cache."""
    source = str(source)
    if source.startswith("hf://"):
        return _fetch_hf(source)
    src = _source_of(source)
    if src.target.exists():
        if _verified(src, src.target):
            return src.target
        src.target.unlink()  # corrupted in the cache since: fetch again
    src.target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=src.target.parent, prefix=".download-", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            _download(src.url, out, quiet=quiet)
        if not _verified(src, tmp):
            got = git_blob_id(tmp) if src.check == "git_blob" else sha256_of(tmp)
            raise CheckpointError(
                f"the download of {source} does not verify: {src.check} {got}, expected {src.expected}",
                hint="the file at the source changed or the transfer was altered; nothing was kept",
            )
        os.replace(tmp, src.target)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        if isinstance(exc, urllib.error.HTTPError):
            reason = f"HTTP {exc.code} {exc.reason}"
        else:
            reason = getattr(exc, "reason", None) or exc
        raise CheckpointError(
            f"could not download {source} from {src.url} ({reason})",
            hint=f"without a network, download it yourself and put it at {src.target}",
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return src.target


def _verified(src: _Source, path: Path) -> bool:
    got = git_blob_id(path) if src.check == "git_blob" else sha256_of(path)
    return got == src.expected


def _download(url: str, out, *, quiet: bool) -> None:
    """Stream ``url`` into ``out``; a response shorter than its Content-Length is an error (cut short)."""
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310 (https/http only, checked)
        expected = response.headers.get("Content-Length")
        received = 0
        while block := response.read(CHUNK):
            out.write(block)
            received += len(block)
    if expected is not None and received != int(expected):
        raise ValueError(f"download cut short: {received} of {expected} bytes")
    if not quiet:
        print(f"downloaded {url} ({received:,} bytes)", file=sys.stderr)


def _fetch_hf(source: str) -> Path:
    """``hf://owner/repo/path[@revision]`` through huggingface_hub (which verifies its downloads)."""
    spec = source[len("hf://") :]
    spec, _, revision = spec.partition("@")
    parts = spec.split("/")
    if len(parts) < 3 or not all(parts):
        raise ConfigError(f"an hf:// source is hf://owner/repo/path/in/repo[@revision], got {source!r}")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ConfigError(
            "hf:// checkpoints need the huggingface_hub package", hint="pip install 'smoothcore[hub]'"
        ) from None
    try:
        path = hf_hub_download(
            repo_id="/".join(parts[:2]),
            filename="/".join(parts[2:]),
            revision=revision or None,
            cache_dir=cache_dir() / "hf",
        )
    except Exception as exc:  # the hub's errors are many classes; each is a failed download here
        raise CheckpointError(f"could not download {source} ({type(exc).__name__}: {exc})") from None
    return Path(path)
