"""Peak memory against the number of draws: exact DSSN certification of 224x224 RGB images at sigma 0.25 (220 draws)
and 3.5 (3,091 draws) under the same ``--max-batch``, each in a fresh process (peak RSS on the CPU; peak allocated
memory as well on a GPU). Issue 5's requirement: sigma 3.5 runs within the budget of sigma 0.25.

    uv run python -m benchmarks.memory [--max-batch 64] [--images 2] [--repeats 3] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from benchmarks.common import record

CHILD = r"""
import json, resource, sys, time, torch
import smoothcore
sigma, max_batch, images = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
                            torch.nn.Flatten(), torch.nn.Linear(128, 10)).to(device).eval()
noise = smoothcore.noise("dssn", sigma=sigma, dim=3 * 224 * 224, device=device)
x = torch.randint(0, 256, (images, 3, 224, 224), generator=torch.Generator().manual_seed(1)).float() / 255
smoothed = smoothcore.SmoothedClassifier(model, noise, 10, max_batch=max_batch, device=device)
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
t0 = time.perf_counter()
result = smoothed.certify(x)
seconds = time.perf_counter() - t0
out = {"draws": noise.num_draws, "forward passes": result.forward_passes, "seconds": seconds,
       "peak RSS MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "RSS before certify MiB": rss_before}
if device.type == "cuda":
    out["peak GPU MiB"] = torch.cuda.max_memory_allocated() / 2**20
print(json.dumps(out))
"""


def measure(sigma: float, max_batch: int, images: int, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(sigma), str(max_batch), str(images)],
            check=True,
            capture_output=True,
            text=True,
        )
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    peaks = sorted(r["peak RSS MiB"] for r in runs)
    row = {
        "sigma": sigma,
        **runs[0],
        "peak RSS MiB": peaks[len(peaks) // 2],
        "peak RSS range MiB": f"{peaks[0]:,.0f}-{peaks[-1]:,.0f}",
    }
    row["seconds"] = sorted(r["seconds"] for r in runs)[len(runs) // 2]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument(
        "--repeats", type=int, default=3, help="fresh processes per sigma (the median is reported)"
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows = [measure(sigma, args.max_batch, args.images, args.repeats) for sigma in (0.25, 3.5)]
    growth = rows[1]["peak RSS MiB"] - rows[0]["peak RSS MiB"]
    record(
        f"Peak memory against the number of DSSN draws (224x224x3, max batch {args.max_batch})",
        rows,
        f"{args.images} images per run, {args.repeats} fresh processes per sigma (median and range of the peak RSS, "
        f"median time). The median peak RSS changes by {growth:+.1f} MiB from "
        f"{rows[0]['draws']} to {rows[1]['draws']} draws ({rows[1]['draws'] / rows[0]['draws']:.0f}x): the forward "
        "batches hold at most max batch noisy images whatever the draw count.",
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
