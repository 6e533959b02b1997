"""The durable result table."""

from __future__ import annotations

import os
import threading
import time

import pytest

from smoothcore import DataError, ExperimentError
from smoothcore.results import ResultWriter, load_results, read_valid


def rows(n):
    return [
        {
            "index": i,
            "label": i % 10,
            "prediction": i % 10,
            "correct": 1,
            "radius": 0.1 * i,
            "norm": "l1",
            "certificate": "exact",
            "p_lower": None,
            "counts": "1 2 3",
            "forward_passes": 6,
            "seconds": 0.01,
        }
        for i in range(n)
    ]


def test_rows_round_trip(tmp_path):
    with ResultWriter(tmp_path / "r.csv", resume=False) as w:
        for r in rows(5):
            w.write(r)
    table = load_results(tmp_path / "r.csv")
    assert table["index"].tolist() == [0, 1, 2, 3, 4]
    assert table["radius"].tolist() == [0.1 * i for i in range(5)]
    assert table["counts"].iloc[0] == "1 2 3"


def test_a_row_cut_short_is_discarded_and_resume_continues_cleanly(tmp_path):
    path = tmp_path / "r.csv"
    with ResultWriter(path, resume=False) as w:
        for r in rows(4):
            w.write(r)
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # a crash in the middle of writing the last row
    frame, _, discarded = read_valid(path)
    assert frame["index"].tolist() == [0, 1, 2] and discarded == 1
    with ResultWriter(path, resume=True) as w:
        assert w.discarded == 1
        w.write(rows(4)[3])
    assert load_results(path)["index"].tolist() == [0, 1, 2, 3]


def test_a_damaged_row_and_everything_after_it_are_discarded(tmp_path):
    path = tmp_path / "r.csv"
    with ResultWriter(path, resume=False) as w:
        for r in rows(5):
            w.write(r)
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace("0.1", "0.9")  # row 1's radius altered: its checksum no longer matches
    path.write_text("".join(lines))
    assert load_results(path)["index"].tolist() == [0]


def test_a_row_is_synced_to_disk_within_the_interval_even_when_no_other_row_follows(tmp_path, monkeypatch):
    synced = threading.Event()
    real_fsync = os.fsync

    def spy(fd):
        real_fsync(fd)
        synced.set()

    w = ResultWriter(tmp_path / "r.csv", resume=False, fsync_every=0.2)
    monkeypatch.setattr(os, "fsync", spy)
    w.write(rows(1)[0])  # the next row may be hours away (Monte-Carlo on ImageNet)
    assert synced.wait(timeout=30), "the row was never fsynced while the writer waited for more"
    w.close()


def test_a_background_sync_failure_is_reported_by_the_next_write(tmp_path, monkeypatch):
    w = ResultWriter(tmp_path / "r.csv", resume=False, fsync_every=0.05)

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    w.write(rows(1)[0])
    deadline = time.monotonic() + 30
    while w._error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(ExperimentError, match="No space left"):
        w.write(rows(2)[1])
    monkeypatch.undo()
    w.close()


def test_loading_a_folder_or_a_missing_table_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="is a folder, not a result table"):
        load_results(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_results(tmp_path / "certify_x.csv")
