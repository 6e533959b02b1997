"""Durable file writing: atomic replacement and fsync'd appends."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smoothcore.errors import ExperimentError, SmoothcoreError


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` through ``write(file)`` into a temporary file beside it, fsync, then rename over ``path``:
    readers see the old file or the new one, never a mix. A failed write (full disk) leaves the old file."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # as open() would create it (mkstemp makes it private)
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, RuntimeError) as exc:
        _remove(tmp)
        if isinstance(exc, RuntimeError) and not _is_write_failure(exc):
            raise
        reason = (
            exc.strerror if isinstance(exc, OSError) and exc.strerror else "the write failed (disk full?)"
        )
        raise ExperimentError(
            f"could not write {path}: {reason}",
            hint="check that the folder is writable and the disk has room, then rerun (with --resume)",
        ) from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: str | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


def _is_write_failure(exc: RuntimeError) -> bool:
    """torch.save reports a failed write (full disk) as a RuntimeError from its zip writer."""
    text = str(exc)
    return "inline_container" in text or "PytorchStreamWriter" in text or "file write failed" in text


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write(
        path, lambda f: f.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"), mode="w"
    )


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def check_fields(
    data: Any,
    path: str | Path,
    types: dict[str, tuple[type, ...]],
    error: type[SmoothcoreError] = ExperimentError,
) -> dict[str, Any]:
    """``data`` read from the JSON file ``path``, checked to be an object whose ``types`` fields (where present and
    not null) have those types: a damaged or hand-edited file is a clear ``error`` naming the field, not a failure
    somewhere downstream."""
    if not isinstance(data, dict):
        raise error(f"{path} is damaged (not a JSON object)")
    for key, allowed in types.items():
        value = data.get(key)
        if value is not None and (not isinstance(value, allowed) or isinstance(value, bool)):
            raise error(
                f"{path} is damaged: {key} = {value!r} is not a {' or '.join(t.__name__ for t in allowed)}"
            )
    return data


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ExperimentError(f"{path} does not exist") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExperimentError(f"{path} is not readable JSON: {exc}") from None
