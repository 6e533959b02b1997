"""GPU benchmarks of issue 5, on CIFAR-shaped 8-bit images generated with a fixed seed (no dataset needed):

1. DSSN sigma 1.0 (883 draws) over 10,000 images with WRN-40-2 (target <= 60 s on one H100; reference 1,182 s);
2. SSN with 100,000 draws per image (target <= 1.0 s per image);
3. one CIFAR-10-sized training epoch (50,000 images) of WRN-40-2 under DSSN noise (target <= 10 s);
4. achieved TFLOP/s of the model against the card's measured bf16 matmul ceiling.

    python -m benchmarks.gpu                 # on the GPU machine
    python -m benchmarks.gpu --smoke         # tiny sizes on the CPU: checks the script runs (used by the tests)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import smoothcore
from benchmarks.common import record
from smoothcore.data import DatasetSource, ImageTensorDataset, random_crop_flip
from smoothcore.engine import auto_max_batch
from smoothcore.models import build_classifier
from smoothcore_plugins.datasets import CIFAR10_MEAN, CIFAR10_STD


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cifar_like(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8), torch.randint(
        0, 10, (n,), generator=g
    )


def wrn(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return (
        build_classifier(
            "wrn40", num_classes=10, in_channels=3, image_size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD
        )
        .to(device)
        .eval()
    )


def matmul_ceiling(device: torch.device, size: int) -> float:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 2
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - t0) / 1e12


def forward_flops(model: torch.nn.Module, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.rand(1, 3, 32, 32, device=device))
    return float(counter.get_total_flops())


def bench_dssn(
    model,
    device,
    n_images: int,
    precision: str,
    channels_last: bool,
    flops: float,
    sigma: float = 1.0,
    budget_s: float = float("inf"),
    compile: bool = False,
) -> dict:
    """Exact DSSN certification of ``n_images``; stops early (and says so in the row) once ``budget_s`` seconds
    are spent, so that a slow configuration cannot eat the device time of the rows after it."""
    noise = smoothcore.noise("dssn", sigma=sigma, dim=3072, device=device)
    max_batch = auto_max_batch(model, (3, 32, 32), device, cpu_default=1024)
    smoothed = smoothcore.SmoothedClassifier(
        model,
        noise,
        10,
        max_batch=max_batch,
        device=device,
        precision=precision,
        channels_last=channels_last,
        compile=compile,
    )
    images, _ = cifar_like(n_images)
    x = images.to(device).float() / 255.0
    per_call = max(1, max_batch // noise.num_draws) * 8
    smoothed.certify(x[:per_call])  # warm-up (and compilation)
    sync(device)
    t0 = time.perf_counter()
    done = 0
    for i in range(0, n_images, per_call):
        smoothed.certify(x[i : i + per_call])
        done = min(n_images, i + per_call)
        if time.perf_counter() - t0 > budget_s:
            break
    sync(device)
    seconds = time.perf_counter() - t0
    passes = done * noise.num_draws
    counted = (
        f"{done} images" if done == n_images else f"{done} of {n_images} images (stopped at {budget_s:g} s)"
    )
    return {
        "benchmark": f"DSSN sigma {sigma:g} ({noise.num_draws} draws), {counted}, {precision}"
        f"{' channels-last' if channels_last else ''}{' compiled' if compile else ''}",
        "seconds": seconds,
        "per image ms": 1000 * seconds / done,
        "forward passes/s": passes / seconds,
        "model TFLOP/s": flops * passes / seconds / 1e12,
        "max batch": max_batch,
    }


def bench_ssn(model, device, n_images: int, n: int, precision: str, flops: float) -> dict:
    noise = smoothcore.noise("ssn", sigma=0.5, dim=3072, device=device)
    max_batch = auto_max_batch(model, (3, 32, 32), device, cpu_default=1024)
    smoothed = smoothcore.SmoothedClassifier(
        model, noise, 10, max_batch=max_batch, device=device, precision=precision
    )
    images, _ = cifar_like(n_images, seed=1)
    x = images.to(device).float() / 255.0
    smoothed.certify(x[:1], n0=64, n=min(n, 4096))
    sync(device)
    t0 = time.perf_counter()
    for i in range(n_images):
        smoothed.certify(x[i : i + 1], n0=64, n=n, indices=[i])
    sync(device)
    seconds = time.perf_counter() - t0
    passes = n_images * (n + 64)
    return {
        "benchmark": f"SSN n={n:,}, {n_images} images, {precision}",
        "seconds": seconds,
        "per image ms": 1000 * seconds / n_images,
        "forward passes/s": passes / seconds,
        "model TFLOP/s": flops * passes / seconds / 1e12,
        "max batch": max_batch,
    }


def bench_train_epoch(
    device,
    n_images: int,
    batch_size: int,
    precision: str,
    channels_last: bool,
    flops: float,
    model_name: str = "wrn40",
) -> dict:
    from smoothcore.hookspecs import hookimpl
    from smoothcore.plugins import use_plugins
    from smoothcore.train import TrainConfig, Trainer

    images, labels = cifar_like(n_images, seed=2)

    class SyntheticCifar:
        @staticmethod
        @hookimpl
        def register_datasets(register):
            def factory():
                return DatasetSource(
                    "synthetic-cifar",
                    10,
                    (3, 32, 32),
                    CIFAR10_MEAN,
                    CIFAR10_STD,
                    lambda split, d: ImageTensorDataset(images, labels),
                    augment=random_crop_flip,
                )

            register("synthetic-cifar", factory)

    use_plugins(SyntheticCifar)
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(
            dataset="synthetic-cifar",
            model=model_name,
            noise="dssn",
            sigma=1.0,
            epochs=1,
            batch_size=batch_size,
            eval_limit=batch_size,
            device=str(device),
            precision=precision,
            channels_last=channels_last,
        )
        # warm-up (cuDNN autotuning, allocator): a short run first, then the timed epoch
        Trainer(
            TrainConfig(**{**cfg.to_dict(), "train_limit": min(n_images, 20 * batch_size)}),
            Path(out) / "warm",
        ).run()
        sync(device)
        trainer = Trainer(cfg, Path(out) / "timed")
        t0 = time.perf_counter()
        log = trainer.run()
        sync(device)
        total = time.perf_counter() - t0
    seconds = float(
        log["seconds"].iloc[0]
    )  # the epoch itself (with its small evaluation), not the checkpoint writing
    return {
        "benchmark": f"train 1 epoch {model_name} DSSN, {n_images} images, batch {batch_size}, {precision}"
        f" (whole run with saving {total:.1f} s)",
        "seconds": seconds,
        "per image ms": 1000 * seconds / n_images,
        "forward passes/s": n_images / seconds,
        "model TFLOP/s": 3 * flops * n_images / seconds / 1e12,
        "max batch": batch_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (runs on the CPU)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--dssn-budget",
        type=float,
        default=240.0,
        help="most seconds per DSSN row (the row says where it stopped)",
    )
    parser.add_argument("--fp32", action="store_true", help="also DSSN in fp32 (TF32), no channels-last")
    parser.add_argument("--compile", action="store_true", help="also DSSN with torch.compile")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = wrn(device)
    flops = forward_flops(model, device)
    small = args.smoke
    ceiling = matmul_ceiling(device, 256 if small else 8192)
    precision = "bf16" if device.type == "cuda" else "fp32"
    print(
        f"device {device}{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}, "
        f"ceiling {ceiling:.1f} TFLOP/s, WRN-40-2 {flops / 1e9:.3f} GFLOP/image",
        flush=True,
    )
    cuda = device.type == "cuda"
    if small:  # every code path, at sizes a CPU finishes in seconds: a few draws, a few images, the small CNN
        plan = [
            lambda: bench_dssn(model, device, 2, precision, False, flops, sigma=0.02),
            lambda: bench_ssn(model, device, 1, 40, precision, flops),
            lambda: bench_train_epoch(device, 32, 16, precision, False, flops, model_name="cnn"),
        ]
    else:
        plan = [
            lambda: bench_dssn(model, device, 10_000, precision, cuda, flops, budget_s=args.dssn_budget),
            lambda: bench_ssn(model, device, 5, 100_000, precision, flops),
            lambda: bench_train_epoch(device, 50_000, 256, precision, cuda, flops),
        ]
        if cuda and args.fp32:
            plan.append(
                lambda: bench_dssn(model, device, 10_000, "fp32", False, flops, budget_s=args.dssn_budget)
            )
        if cuda and args.compile:
            plan.append(
                lambda: bench_dssn(
                    model, device, 10_000, precision, True, flops, budget_s=args.dssn_budget, compile=True
                )
            )
    rows = []
    # each row is printed as it finishes, so that a run cut short still shows what it measured; a row that fails
    # (torch.compile on an untried stack, say) is reported and the others still run
    for step in plan:
        try:
            row = step()
        except Exception as exc:
            print(f"failed: {type(exc).__name__}: {exc}", flush=True)
            continue
        row["% of ceiling"] = 100.0 * row["model TFLOP/s"] / ceiling
        print(
            "done: "
            + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
            flush=True,
        )
        rows.append(row)
    if not rows:
        raise SystemExit("no benchmark finished")
    record(
        "GPU benchmarks (CIFAR-shaped synthetic images, WRN-40-2)" + (" [smoke]" if small else ""),
        rows,
        f"WRN-40-2 forward: {flops / 1e9:.3f} GFLOP per image. Measured matmul ceiling: {ceiling:.1f} TFLOP/s "
        f"({'bf16' if device.type == 'cuda' else 'fp32'}). Targets: DSSN 10k images <= 60 s; SSN 100k draws <= 1 s/image; "
        "training epoch <= 10 s.",
        write=not (args.no_write or small),
    )


if __name__ == "__main__":
    main()
