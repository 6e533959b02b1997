"""The result table of a run as certification fills it: rows built from a certify result, written image by image
as they finish, and the shard tables of sharded runs merged into it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from smoothcore.certify import CertifyResult
from smoothcore.data import fetch
from smoothcore.planning import CertifyRun
from smoothcore.results import ResultWriter, load_results

Progress = Callable[[int, int], None]


def result_rows(
    result: CertifyResult, indices: list[int], labels: list[int], seconds: float
) -> list[dict[str, Any]]:
    """The table rows of one certify call: image ``indices[j]`` with true label ``labels[j]``, ``seconds`` per
    image."""
    rows = []
    for j, (index, label) in enumerate(zip(indices, labels)):
        prediction = int(result.prediction[j])
        rows.append(
            {
                "index": index,
                "label": label,
                "prediction": prediction,
                "correct": int(prediction == label),
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
    return rows


def images_per_chunk(run: CertifyRun) -> int:
    """Images per certify call so that the engine's forward batches are full: exact enumeration with early decisions
    evaluates ``num_draws / decision_points`` draws per image per batch, not all of them, and needs images in
    reserve to refill the room that decided images leave."""
    from smoothcore.engine import DECISION_POINTS, exact_chunk

    cfg, noise = run.cfg, run.smoothed.noise
    if noise.exact:
        per_image = exact_chunk(noise.num_draws, cfg.max_batch, DECISION_POINTS if cfg.radii else None)
    else:
        per_image = min(cfg.n0 + cfg.n, cfg.max_batch)
    images = max(1, cfg.max_batch // max(1, per_image))
    # with early decisions the engine refills the room of decided images from the rest of the call
    return images * 4 if noise.exact and cfg.radii else images


def certify_rows(
    run: CertifyRun, writer: ResultWriter, indices: list[int], chunk: int, on_progress: Progress | None
) -> float:
    """Certify those of ``indices`` that ``writer`` does not hold yet, ``chunk`` images per call, appending each
    image's row as it finishes; returns the seconds spent."""
    cfg = run.cfg
    done = set(int(i) for i in writer.done["index"]) if len(writer.done) else set()
    todo = [i for i in indices if i not in done]
    if on_progress is not None:
        on_progress(len(indices) - len(todo), len(indices))
    t_start = time.perf_counter()
    for c0 in range(0, len(todo), chunk):
        idx = todo[c0 : c0 + chunk]
        x, y = fetch(run.test_set, idx)
        t0 = time.perf_counter()
        result = run.smoothed.certify(
            x,
            n0=cfg.n0,
            n=cfg.n,
            alpha=cfg.alpha,
            indices=idx,
            certificate=run.certificate,
            radii=cfg.radii,
        )
        seconds = (time.perf_counter() - t0) / len(idx)
        for row in result_rows(result, idx, [int(label) for label in y], seconds):
            writer.write(row)
        if on_progress is not None:
            on_progress(len(indices) - len(todo) + c0 + len(idx), len(indices))
    return time.perf_counter() - t_start


def absorb_shards(run: CertifyRun) -> None:
    """Rows left in shard tables by an interrupted sharded run (of any world size) join the table before a resume,
    so that no image is certified twice and none is listed twice."""
    shards = run.shards()
    if not shards:
        return
    merge_tables(run.table, ([run.table] if run.table.exists() else []) + shards)


def remove_shards(run: CertifyRun) -> None:
    for p in run.shards():
        p.unlink(missing_ok=True)


def merge_tables(path: Path, sources: list[Path]) -> None:
    """The rows of the tables ``sources`` as one table at ``path``, by image index, each image once (the first row
    of it wins); the sources other than ``path`` are removed."""
    frames = [f for f in (load_results(p) for p in sources) if len(f)]
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
    for p in sources:
        if p != path:
            p.unlink(missing_ok=True)
