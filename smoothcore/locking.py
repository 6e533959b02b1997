"""One writer at a time: an exclusive lock per result table and per training run.

Two processes appending to the same table (or one overwriting it while the other appends) would leave every image
twice or rows of other parameters under a table's recorded ones; two trainings of one folder would interleave
their checkpoints. The lock is ``flock`` on a small file beside what it guards, holding the owner's pid; the
kernel drops it when the process ends, however it ends, so a killed run never leaves a stale lock. Where ``flock``
is unavailable (not a POSIX system) runs are not locked.
"""

from __future__ import annotations

import os
from pathlib import Path

from smoothcore.errors import ExperimentError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class Lock:
    """An exclusive lock on ``path`` (created if missing), taken at once or refused; release with :meth:`release`
    or by using it as a context manager."""

    def __init__(self, path: str | Path, what: str) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        if fcntl is None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise ExperimentError(
                f"cannot create the lock file {self.path}: {exc.strerror or exc}",
                hint="the folder must be writable",
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise ExperimentError(
                f"{what} is in use by another smoothcore process" + (f" (pid {owner})" if owner else ""),
                hint="wait for it to finish or stop it; to work beside it, write another table (--tag) or --out",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
