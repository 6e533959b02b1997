"""The certification result table: one row per image, appended durably as each image finishes.

Every row ends with a CRC-32 of its other fields; a row that is cut short (a crash mid-write) or damaged fails the
check and is discarded, never reported. Rows are flushed at once and fsync'd at most ``fsync_every`` seconds
apart (and on close), so a crash loses at most those seconds of work and never corrupts what is on disk.
"""

from __future__ import annotations

import csv
import io
import os
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pandas as pd

from smoothcore.errors import DataError, ExperimentError

COLUMNS = (
    "index",
    "label",
    "prediction",
    "correct",
    "radius",
    "norm",
    "certificate",
    "p_lower",
    "counts",
    "forward_passes",
    "seconds",
    "extra",
)


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if value != value else repr(value)
    return str(value)


def encode_row(row: dict[str, Any], columns: tuple[str, ...]) -> str:
    buf = io.StringIO()
    fields = [_format(row.get(c)) for c in columns]
    csv.writer(buf, lineterminator="").writerow(fields)
    body = buf.getvalue()
    return f"{body},{zlib.crc32(body.encode()):08x}\n"


def header_line(columns: tuple[str, ...]) -> str:
    return ",".join(columns) + ",crc\n"


def read_valid(path: str | Path) -> tuple[pd.DataFrame, int, int]:
    """The valid rows of a result file, the byte length of its valid prefix, and how many lines were discarded."""
    columns, rows, good_end, discarded = _valid_rows(Path(path))
    return _frame(columns, rows), good_end, discarded


def _valid_rows(path: Path) -> tuple[list[str], list[str], int, int]:
    """The columns of a result file, its valid rows (CSV text without the checksum), the byte length of its valid
    prefix, and how many lines were discarded (a row that fails its checksum, and every row after it)."""
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    if not lines or not lines[0]:
        return list(COLUMNS), [], 0, 0
    header = lines[0].decode(errors="replace").split(",")
    if header[-1] != "crc":
        raise ExperimentError(f"{path} is not a smoothcore result table (no crc column)")
    good_end = len(lines[0]) + 1
    rows: list[str] = []
    discarded = 0
    offset = good_end
    complete = raw.endswith(b"\n")
    for i, line in enumerate(lines[1:], start=1):
        is_last = i == len(lines) - 1
        end = offset + len(line) + (0 if is_last else 1)
        if is_last and not line:
            break
        text = line.decode(errors="replace")
        body, _, crc = text.rpartition(",")
        ok = (not is_last or complete) and crc == f"{zlib.crc32(body.encode()):08x}"
        if ok and discarded == 0:
            rows.append(body)
            good_end = end
        else:
            discarded += 1
        offset = end
    return header[:-1], rows, good_end, discarded


def _frame(columns: list[str], rows: list[str]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame(columns=columns)
    return pd.read_csv(io.StringIO(",".join(columns) + "\n" + "\n".join(rows)), keep_default_na=True)


def _by_index(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("index").reset_index(drop=True) if len(frame) else frame


class ResultWriter:
    """Appends rows to ``path``; ``resume`` keeps the valid rows already there (and cuts off anything after them)."""

    def __init__(
        self, path: str | Path, *, resume: bool, columns: tuple[str, ...] = COLUMNS, fsync_every: float = 5.0
    ) -> None:
        self.path = Path(path)
        self.columns = columns
        self.fsync_every = fsync_every
        self.discarded = 0
        self._columns, self._rows = (
            list(columns),
            [],
        )  # the table's valid rows: those kept, then those written
        if resume and self.path.exists():
            self._columns, self._rows, good_end, self.discarded = _valid_rows(self.path)
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
        elif self.path.exists():
            self.path.unlink()
        self.done = _frame(self._columns, self._rows)  # the rows kept from before
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.file = open(self.path, "a", newline="")
        if new:
            self._write(header_line(columns))
        self.last_sync = time.monotonic()
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._error: OSError | None = None

    def _write(self, text: str) -> None:
        try:
            self.file.write(text)
            self.file.flush()
        except OSError as exc:
            raise ExperimentError(
                f"could not write results to {self.path}: {exc.strerror or exc}",
                hint="free disk space, then rerun with --resume: finished images are kept",
            ) from None

    def write(self, row: dict[str, Any]) -> None:
        """Append ``row``; it reaches the disk (fsync) within ``fsync_every`` seconds, even if no other row follows
        (a background timer syncs what the next write would otherwise leave waiting)."""
        self._raise_background_error()
        line = encode_row(row, self.columns)
        with self._lock:
            self._write(line)
        self._rows.append(line[: line.rindex(",")])
        waited = time.monotonic() - self.last_sync
        if waited >= self.fsync_every:
            self.sync()
        elif self._timer is None:
            self._timer = threading.Timer(self.fsync_every - waited, self._background_sync)
            self._timer.daemon = True
            self._timer.start()

    @property
    def written(self) -> int:
        """Rows written by this writer."""
        return len(self._rows) - len(self.done)

    def table(self) -> pd.DataFrame:
        """The table's valid rows as :func:`load_results` would read them from the file, without reading it."""
        return _by_index(_frame(self._columns, self._rows))

    def _background_sync(self) -> None:
        with self._lock:
            self._timer = None
            if self.file.closed:
                return
            try:
                os.fsync(self.file.fileno())
                self.last_sync = time.monotonic()
            except OSError as exc:  # reported by the next write or close, in the main thread
                self._error = exc

    def _raise_background_error(self) -> None:
        if self._error is not None:
            exc, self._error = self._error, None
            raise ExperimentError(
                f"could not write results to {self.path}: {exc.strerror or exc}",
                hint="free disk space, then rerun with --resume: finished images are kept",
            )

    def sync(self) -> None:
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        with self._lock:
            try:
                os.fsync(self.file.fileno())
            except OSError as exc:
                raise ExperimentError(
                    f"could not write results to {self.path}: {exc.strerror or exc}",
                    hint="free disk space, then rerun with --resume: finished images are kept",
                ) from None
            self.last_sync = time.monotonic()
        self._raise_background_error()

    def close(self) -> None:
        if not self.file.closed:
            try:
                self.sync()
            finally:
                with self._lock:
                    self.file.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.close()
        except Exception:
            if exc[0] is None:
                raise


def load_results(path: str | Path) -> pd.DataFrame:
    """The valid rows of a result table, sorted by image index."""
    path = Path(path)
    if path.is_dir():
        tables = sorted(p.name for p in path.glob("certify_*.csv"))
        raise DataError(
            f"{path} is a folder, not a result table",
            hint=f"pass one of its tables ({', '.join(tables)})"
            if tables
            else "pass a certify_*.csv file; smoothcore.report.load_runs reads whole folders",
        )
    if not path.exists():
        raise DataError(f"{path} does not exist")
    try:
        frame, _, _ = read_valid(path)
    except OSError as exc:
        raise DataError(f"could not read {path}: {exc.strerror or exc}") from None
    return _by_index(frame)
