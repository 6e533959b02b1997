"""The record of a certification: what a result table ``certify_<tag>.csv`` certifies, kept beside it as
``certify_<tag>.json``.

The runner writes it (:mod:`smoothcore.runner`) and reads it back to resume or reopen a run; the report, the audit
and sweeps read it through :meth:`Certification.read`. Its keys are the JSON file's keys: files written by earlier
versions load as they are (a key they lack reads as None).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoothcore.errors import DataError
from smoothcore.fileio import atomic_write_json, read_json


@dataclass
class Certification:
    """One certification's settings and provenance (``None``: not recorded, or not applicable).

    The noise (``noise``: its ``params()``, ``noise_params``: the further parameters given), the certificate
    (name, ``certificate_kind`` ``exact`` | ``monte-carlo``, ``norm``), the Monte-Carlo settings (``n0``, ``n``,
    ``alpha``; exact certificates record ``n`` = the number of draws), the data selection (``dataset``, ``skip``,
    ``limit``, ``offset``, ``num_images``, ``test_fingerprint``), the evaluation (``precision``, early-decision
    ``radii``, ``forward_passes_full_per_image``), the model (``classifier_sha256``, ``denoiser`` and its
    ``denoiser_sha256``), then the run's progress: ``started``, ``finished``, ``seconds``, ``discarded_rows``,
    ``world_size`` (sharded runs) and the ``versions`` of the software.
    """

    noise: dict[str, Any] | None = None
    noise_params: dict[str, Any] | None = None
    certificate: str | None = None
    certificate_kind: str | None = None
    norm: str | None = None
    n0: int | None = None
    n: int | None = None
    alpha: float | None = None
    dataset: str | None = None
    skip: int | None = None
    limit: int | None = None
    offset: int | None = None
    num_images: int | None = None
    precision: str | None = None
    radii: list[float] | None = None
    forward_passes_full_per_image: int | None = None
    classifier_sha256: str | None = None
    denoiser: str | None = None
    denoiser_sha256: str | None = None
    test_fingerprint: str | None = None
    # the run's progress: written only once known
    started: str | None = None
    finished: str | None = None
    seconds: float | None = None
    discarded_rows: int | None = None
    world_size: int | None = None
    versions: dict[str, str] | None = None

    @classmethod
    def read(cls, path: str | Path) -> Certification:
        """The record at ``path``; a damaged or hand-edited file (not an object, a field of the wrong type) is a
        :class:`DataError` naming the field. Keys this version does not know are ignored."""
        data = read_json(path)
        if not isinstance(data, dict):
            raise DataError(f"{path} is damaged (not a JSON object)")
        for name, allowed in _field_types().items():
            value = data.get(name)
            if value is not None and (not isinstance(value, allowed) or isinstance(value, bool)):
                kinds = " or ".join(t.__name__ for t in allowed)
                raise DataError(f"{path} is damaged: {name} = {value!r} is not a {kinds}")
        return cls(**{name: data.get(name) for name in _field_types()})

    def write(self, path: str | Path) -> None:
        """Written atomically; the run's progress fields only once they are known."""
        data = dataclasses.asdict(self)
        for name in PROGRESS:
            if data[name] is None:
                del data[name]
        atomic_write_json(path, data)

    def changes(self, now: Certification) -> list[str]:
        """What differs in the settings that make rows comparable (``PLANNED_AS``) between this record and ``now``,
        one ``"key: was .., now .."`` each. A larger ``limit`` (or none) only extends the table: not a change."""
        out = []
        for key in PLANNED_AS:
            old, new = getattr(self, key), getattr(now, key)
            if old != new and not (key == "limit" and _extends(old, new)):
                out.append(f"{key}: was {old!r}, now {new!r}")
        return out


PROGRESS = ("started", "finished", "seconds", "discarded_rows", "world_size", "versions")
# settings that decide what a row says: a run continues a table only when all of them are as recorded
PLANNED_AS = (
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


def _extends(old_limit: Any, new_limit: Any) -> bool:
    return isinstance(old_limit, int) and (
        new_limit is None or (isinstance(new_limit, int) and new_limit > old_limit)
    )


@functools.cache
def _field_types() -> dict[str, tuple[type, ...]]:
    """Each field's JSON types, from its annotation (``float`` fields take integers too)."""
    hints = typing.get_type_hints(Certification)
    out: dict[str, tuple[type, ...]] = {}
    for f in dataclasses.fields(Certification):
        kinds = [typing.get_origin(a) or a for a in typing.get_args(hints[f.name]) if a is not type(None)]
        out[f.name] = tuple(kinds + ([int] if float in kinds else []))
    return out
