"""Attacking an experiment folder's certified images (``smoothcore attack RUN_DIR``) and the robustness table
that puts certified accuracy (a lower bound) next to the empirical robust accuracy the attacks leave (an upper
bound)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from smoothcore.attacks import AttackConfig, ImageAttack, attack_images, attacks_for
from smoothcore.certificates import ABSTAIN
from smoothcore.errors import ConfigError, ExperimentError

COLUMNS = (
    "index",
    "label",
    "prediction",
    "radius",
    "flip_norm",
    "attack",
    "flip_class",
    "forward_passes",
    "seconds",
)


@dataclass
class ExperimentAttack:
    images: list[ImageAttack]
    table: Path
    output: Path
    noise: str
    attacks: list[str]


def attack_table_path(certify_table: Path) -> Path:
    """``attack_<tag>.csv`` beside ``certify_<tag>.csv``."""
    return certify_table.with_name("attack_" + certify_table.name.removeprefix("certify_"))


def attack_experiment(
    run_dir: str | Path,
    *,
    tag: str | None = None,
    limit: int | None = 100,
    config: AttackConfig | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    max_batch: int | str = "auto",
    trust_checkpoint: bool = False,
    on_image: Callable[[ImageAttack], None] | None = None,
) -> ExperimentAttack:
    """Attack the images among the first ``limit`` of ``certify_<tag>.csv`` that the smoothed classifier gets right
    (the others are not robust at any radius) with the classifier, denoiser and noise the certification used; write
    ``attack_<tag>.csv`` (one row per image considered; ``attacked`` False for the wrong or abstaining ones) and
    ``attack_<tag>.json`` (configuration, summary)."""
    from smoothcore.data import fetch
    from smoothcore.fileio import atomic_write, atomic_write_json
    from smoothcore.results import load_results
    from smoothcore.runner import reopen

    cfg = (config or AttackConfig()).check()
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer, got {limit!r}")
    run = reopen(
        run_dir, tag, data_dir=data_dir, device=device, max_batch=max_batch, trust_checkpoint=trust_checkpoint
    )
    names = [a.name for a in attacks_for(run.smoothed.noise, cfg.attacks)]
    table = load_results(run.table)
    head = table.head(limit) if limit is not None else table
    rows = head[(head["prediction"] != ABSTAIN) & (head["prediction"] == head["label"])]
    if not len(rows):
        raise ExperimentError(
            f"{run.table.name} has no correctly classified images among its first {len(head)}"
        )
    x, _ = fetch(run.test_set, [int(i) for i in rows["index"]])
    images = attack_images(
        run.smoothed,
        x,
        rows["prediction"].astype(int).tolist(),
        labels=rows["label"].astype(int).tolist(),
        radius=rows["radius"].astype(float).tolist(),
        indices=[int(i) for i in rows["index"]],
        config=cfg,
        on_image=on_image,
    )
    output = attack_table_path(run.table)
    frame = pd.DataFrame([{**im.row(), "attacked": True} for im in images])
    # the images considered but not attacked (wrong or abstaining: not robust at any radius) are listed too, so
    # that the table says which images its accuracies are over
    skipped = head[~head["index"].isin(rows["index"])]
    if len(skipped):
        rest = pd.DataFrame(
            {
                "index": skipped["index"].astype(int),
                "label": skipped["label"].astype(int),
                "prediction": skipped["prediction"].astype(int),
                "radius": skipped["radius"].astype(float),
                "flip_norm": math.nan,
                "attack": "",
                "attacked": False,
            }
        )
        frame = pd.concat([frame, rest], ignore_index=True).sort_values("index", kind="stable")
    atomic_write(output, lambda f: frame.to_csv(f, index=False), mode="w")
    atomic_write_json(
        output.with_suffix(".json"),
        {
            "table": run.table.name,
            "images_considered": int(len(head)),
            "attacked": len(images),
            "attacks": names,
            "config": {k: v for k, v in asdict(cfg).items()},
            "summary": summary(images),
        },
    )
    return ExperimentAttack(images, run.table, output, run.smoothed.noise.name, names)


def summary(images: Sequence[ImageAttack]) -> dict[str, Any]:
    norms = np.array([im.flip_norm for im in images], dtype=np.float64)
    found = norms[np.isfinite(norms)]
    ratios = np.array(
        [im.radius / im.flip_norm for im in images if math.isfinite(im.flip_norm) and im.flip_norm > 0]
    )
    return {
        "images": len(images),
        "flips_found": int(len(found)),
        "median_flip": float(np.median(found)) if len(found) else math.nan,
        "median_tightness": float(np.median(ratios)) if len(ratios) else math.nan,
        "forward_passes": int(sum(im.forward_passes for im in images)),
        "seconds": float(sum(im.seconds for im in images)),
    }


def robustness_table(certified: pd.DataFrame, attacked: pd.DataFrame, radii: Sequence[float]) -> pd.DataFrame:
    """Per radius, over the images the attack considered (the rows of the certification table up to the last image
    ``attacked`` lists): certified accuracy (correct and certified to at least the radius: a lower bound on the
    robust accuracy), empirical robust accuracy (correct and no verified flip of norm ``<= r``: an upper bound) and
    the gap between them, in percent."""
    if not len(attacked):
        raise ExperimentError("the attack table is empty")
    last = int(attacked["index"].max())
    considered = certified[certified["index"] <= last]
    correct = (considered["prediction"] == considered["label"]) & (considered["prediction"] != ABSTAIN)
    flips = dict(zip(attacked["index"].astype(int), attacked["flip_norm"].astype(float)))
    flip = considered["index"].map(lambda i: flips.get(int(i), math.nan)).to_numpy(dtype=np.float64)
    radius = considered["radius"].to_numpy(dtype=np.float64)
    n = max(len(considered), 1)
    out = []
    for r in radii:
        cert = correct.to_numpy() & (radius >= r)
        robust = correct.to_numpy() & ~(np.isfinite(flip) & (flip <= r))
        out.append(
            {
                "radius": float(r),
                "certified": 100.0 * cert.sum() / n,
                "empirical": 100.0 * robust.sum() / n,
                "gap": 100.0 * (robust.sum() - cert.sum()) / n,
            }
        )
    return pd.DataFrame(out)
