"""Do the attacks converge? The smallest verified flips of the attack benchmark's models and images
(`benchmarks/attacks.py`) with 1x, 3x and 10x its forward-pass budget per image.

If ten times the budget finds flips much smaller than the 1x budget does, the attacks are still budget-bound and the
gap between certified and empirical robust accuracy says little about the certificates; if it barely moves, the
attacks have converged on their own terms (a local optimum is still possible).

    uv run python -m benchmarks.attack_budget [--images 10] [--factors 1,3,10] [--no-write]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from benchmarks.attacks import MODELS, attack, certified_images, median, search_images
from benchmarks.common import record
from smoothcore.data import get_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--audit-budget", type=int, default=4000)
    parser.add_argument("--factors", default="1,3,10")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    factors = [float(f) for f in args.factors.split(",")]
    test = get_dataset("fashion-mnist").load("test", args.data_dir)
    rows = []
    for name in args.models.split(","):
        smoothed, x, y, pred, radius, indices = certified_images(name, args.images, test, args.data_dir)
        searches, _, base = search_images(smoothed, x, pred, radius, indices, args.audit_budget)
        old = median([im.smallest_flip for im in searches.images])
        first = None
        for factor in factors:
            t0 = time.perf_counter()
            attacked = attack(smoothed, x, y, pred, radius, indices, int(factor * base))
            norms = np.asarray([im.flip_norm for im in attacked], dtype=float)
            first = norms if first is None else first
            both = np.isfinite(norms) & np.isfinite(first)
            new = median(norms)
            rows.append(
                {
                    "model": name,
                    "budget": f"{factor:g}x ({int(factor * base):,} per attack)",
                    "images": len(x),
                    "median smallest flip": new,
                    "flips found": int(np.isfinite(norms).sum()),
                    "flip / first budget's flip (median, same image)": median(norms[both] / first[both]),
                    "passes/image": int(np.mean([im.forward_passes for im in attacked])),
                    "s": time.perf_counter() - t0,
                    "searches: median smallest flip": old,
                    "ratio (searches / attacks)": old / new if new > 0 else math.nan,
                }
            )
            print(rows[-1], flush=True)
    record(
        "Attack convergence: smallest verified flips with 1x, 3x and 10x the forward-pass budget",
        rows,
        "`python -m benchmarks.attack_budget`: the models and images of `benchmarks/attacks.py`; 1x is that "
        "benchmark's budget (the forward passes per image of the audit's searches at --audit-budget, split between "
        "the noise's default attacks), seed 0. Flips are verified as there (exact recount for DSSN; Monte-Carlo: a "
        "paired Clopper-Pearson test on 1,000 fresh draws against a rival chosen on 256 others); the searches' "
        "column is the same at every budget.",
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
