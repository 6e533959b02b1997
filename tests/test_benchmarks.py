"""The benchmark scripts run (at smoke sizes), so they cannot rot between GPU sessions."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_device_script_runs_every_gpu_benchmark_path_at_smoke_size(tmp_path):
    # benchmarks/device.sh is what a session with a lent GPU runs; here it runs the same code paths at tiny sizes
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device.sh"), "--smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert (
        "DSSN sigma 0.02 (17 draws), 2 images" in out
        and "SSN n=40" in out
        and "train 1 epoch cnn DSSN" in out
    )
    assert out.count("done: benchmark ") == 3  # each row is printed as soon as it is measured
    assert "train 1 epoch cnn DSSN" in (tmp_path / "gpu.log").read_text()
    assert (tmp_path / "RESULTS.md").read_text() == (
        ROOT / "benchmarks" / "RESULTS.md"
    ).read_text()  # smoke writes nothing


def test_memory_benchmark_runs_and_memory_does_not_follow_the_draw_count(monkeypatch, capsys):
    from benchmarks import memory

    monkeypatch.setattr(sys, "argv", ["memory", "--images", "1", "--repeats", "1", "--no-write"])
    memory.main()
    out = capsys.readouterr().out
    assert "| 3.500 | 3091 |" in out and "| 0.250 | 220 |" in out


def test_a_dssn_row_that_runs_out_of_its_time_budget_says_how_far_it_got():
    import torch
    from torch import nn

    from benchmarks import gpu

    model = nn.Sequential(nn.Flatten(), nn.Linear(3072, 10)).eval()
    row = gpu.bench_dssn(model, torch.device("cpu"), 1000, "fp32", False, 1.0, sigma=0.02, budget_s=0.0)
    # 17 draws, forward batches of 1024: 60 images per batch, 8 batches per call -> one call of 480 images
    assert "480 of 1000 images (stopped at 0 s)" in row["benchmark"]
    assert row["forward passes/s"] == 480 * 17 / row["seconds"]
