"""The benchmark scripts run (at smoke sizes), so they cannot rot between GPU sessions."""

import sys

from benchmarks import gpu


def test_gpu_benchmark_runs_every_path_at_smoke_size(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["gpu", "--smoke", "--no-write"])
    gpu.main()
    out = capsys.readouterr().out
    assert "DSSN sigma 0.02 (17 draws), 2 images" in out and "SSN n=40" in out and "train 1 epoch cnn DSSN" in out
