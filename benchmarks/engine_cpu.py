"""CPU: certification wall time against the bare forward passes it needs (same model, inputs and batch sizes,
inference mode), for exact DSSN and Monte-Carlo SSN with the small CNN on Fashion-MNIST.
Target (issue 5): ratio at most 1.10. Also images per second and peak memory.

    uv run python -m benchmarks.engine_cpu [--images 100] [--no-write]
"""

from __future__ import annotations

import argparse
import time

import torch

import smoothcore
from benchmarks.common import peak_rss_mib, record
from smoothcore.data import fetch, get_dataset
from smoothcore.models import build_classifier


def model_for_benchmark() -> torch.nn.Module:
    from pathlib import Path

    demo = Path("checkpoints/demo/checkpoint.pt")
    if demo.exists():
        return smoothcore.load_classifier(demo)
    torch.manual_seed(0)  # speed does not depend on the weights
    return build_classifier(
        "cnn", num_classes=10, in_channels=1, image_size=28, mean=(0.286,), std=(0.353,)
    ).eval()


def bare_forward_seconds(model, batches: list[torch.Tensor]) -> float:
    with torch.inference_mode():
        t0 = time.perf_counter()
        for b in batches:
            model(b).argmax(dim=1)
        return time.perf_counter() - t0


def compare(certify_pass, batches, model, repeats: int) -> tuple[float, float, float]:
    """Certification and bare forward passes, alternated ``repeats`` times (this machine's speed drifts by tens of
    percent from minute to minute); returns (best certify s, best bare s, median of the per-repeat ratios)."""
    with torch.inference_mode():
        model(batches[0])  # warm-up
    certify_pass()
    pairs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        certify_pass()
        c = time.perf_counter() - t0
        pairs.append((c, bare_forward_seconds(model, batches)))
    ratios = sorted(c / b for c, b in pairs)
    return min(c for c, _ in pairs), min(b for _, b in pairs), ratios[len(ratios) // 2]


def bench_dssn(model, x, max_batch: int, repeats: int) -> dict:
    noise = smoothcore.noise("dssn", sigma=0.5, dim=784)
    smoothed = smoothcore.SmoothedClassifier(model, noise, 10, max_batch=max_batch)
    group = max(1, max_batch // noise.num_draws)

    def certify_pass():
        for i in range(0, len(x), group):
            smoothed.certify(x[i : i + group])

    batches = [
        noise.draws(x[i : i + group], 0, noise.num_draws).flatten(0, 1) for i in range(0, len(x), group)
    ]
    certify_s, bare_s, median = compare(certify_pass, batches, model, repeats)
    return {
        "mode": f"DSSN sigma 0.5 ({noise.num_draws} draws)",
        "images": len(x),
        "forward passes": len(x) * noise.num_draws,
        "certify s (best)": certify_s,
        "bare forward s (best)": bare_s,
        "ratio of bests": certify_s / bare_s,
        "median ratio": median,
        "images/s": len(x) / certify_s,
    }


def bench_mc(model, x, max_batch: int, repeats: int, n0: int = 64, n: int = 2000) -> dict:
    noise = smoothcore.noise("ssn", sigma=0.5, dim=784)
    smoothed = smoothcore.SmoothedClassifier(model, noise, 10, max_batch=max_batch)

    def certify_pass():
        for i in range(len(x)):
            smoothed.certify(x[i : i + 1], n0=n0, n=n, indices=[i])

    batches = []
    for i in range(len(x)):  # the same images, draws of the same noise, in the engine's forward-batch sizes
        g = torch.Generator().manual_seed(i)
        for m in [n0] + [min(max_batch, n - s) for s in range(0, n, max_batch)]:
            batches.append(noise.sample(x[i : i + 1].expand(m, *x.shape[1:]), g))
    certify_s, bare_s, median = compare(certify_pass, batches, model, repeats)
    return {
        "mode": f"SSN sigma 0.5 (n0={n0}, n={n})",
        "images": len(x),
        "forward passes": len(x) * (n0 + n),
        "certify s (best)": certify_s,
        "bare forward s (best)": bare_s,
        "ratio of bests": certify_s / bare_s,
        "median ratio": median,
        "images/s": len(x) / certify_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    test = get_dataset("fashion-mnist").load("test")
    x, _ = fetch(test, list(range(0, 10_000, 10_000 // args.images))[: args.images])
    model = model_for_benchmark()
    rows = [
        bench_dssn(model, x, args.max_batch, args.repeats),
        bench_mc(model, x[: max(1, args.images // 4)], args.max_batch, args.repeats),
    ]
    for r in rows:
        r["peak RSS MiB"] = peak_rss_mib()
    record(
        "Engine overhead on the CPU (small CNN, Fashion-MNIST)",
        rows,
        f"Certification and the bare forward passes over the same noisy batches were alternated {args.repeats} times; "
        "'ratio of bests' divides the fastest of each, 'median ratio' is the median of the per-repeat ratios "
        "(target <= 1.10). Peak RSS is the process's maximum.",
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
