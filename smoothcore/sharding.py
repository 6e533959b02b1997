"""A certification shared by the ranks of a torchrun job: each rank certifies every ``world``-th image into its own
shard table, and rank 0 merges the shards into the one table a single process would have written (per-image random
streams make the rows identical)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pandas as pd

from smoothcore.distributed import DistInfo, all_agree, barrier
from smoothcore.errors import ExperimentError, SmoothcoreError
from smoothcore.experiment import now, versions
from smoothcore.locking import Lock
from smoothcore.planning import CertifyRun
from smoothcore.results import ResultWriter, load_results
from smoothcore.run_tables import (
    Progress,
    absorb_shards,
    certify_rows,
    images_per_chunk,
    merge_tables,
    remove_shards,
)


def execute_sharded(
    run: CertifyRun,
    info: DistInfo,
    check_start: Callable[[], None],
    *,
    resume: bool,
    on_progress: Progress | None,
) -> pd.DataFrame:
    """Certify ``run`` as rank ``info.rank`` of ``info.world``; returns the merged table on every rank.

    Every rank runs ``check_start`` (what it can see); rank 0 alone holds the table's lock; all agree before any
    work starts, so that a refusal on one rank leaves none of the others waiting at a barrier."""
    problem: SmoothcoreError | None = None
    lock: Lock | None = None
    try:
        check_start()
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
        return _certify_share(run, info, resume=resume, on_progress=on_progress)
    finally:
        if lock is not None:
            lock.release()


def _certify_share(
    run: CertifyRun, info: DistInfo, *, resume: bool, on_progress: Progress | None
) -> pd.DataFrame:
    record = dataclasses.replace(run.record, versions=versions(), world_size=info.world)
    if info.main:
        if resume:
            absorb_shards(run)  # shards of an interrupted run (this world size or another) join the table
        else:
            remove_shards(run)
            run.table.unlink(missing_ok=True)
        dataclasses.replace(record, started=now()).write(run.meta_path)
    barrier(info)
    done_before = (
        set(load_results(run.table)["index"].astype(int)) if resume and run.table.exists() else set()
    )
    mine = [i for i in run.indices[info.rank :: info.world] if i not in done_before]
    with ResultWriter(run.shard_table(info.rank, info.world), resume=False) as writer:
        certify_rows(run, writer, mine, images_per_chunk(run), on_progress if info.main else None)
    barrier(info)
    if info.main:
        shards = [run.shard_table(r, info.world) for r in range(info.world)]
        merge_tables(run.table, ([run.table] if done_before else []) + shards)
        dataclasses.replace(record, finished=now()).write(run.meta_path)
    barrier(info)
    return load_results(run.table)
