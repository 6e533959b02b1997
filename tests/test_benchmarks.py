"""The benchmark scripts run (at smoke sizes), so they cannot rot between GPU sessions."""

import sys

from benchmarks import gpu


def test_gpu_benchmark_runs_every_path_at_smoke_size(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["gpu", "--smoke", "--no-write"])
    gpu.main()
    out = capsys.readouterr().out
    assert "DSSN sigma 0.02 (17 draws), 2 images" in out and "SSN n=40" in out and "train 1 epoch cnn DSSN" in out


def test_memory_benchmark_runs_and_memory_does_not_follow_the_draw_count(monkeypatch, capsys):
    from benchmarks import memory

    monkeypatch.setattr(sys, "argv", ["memory", "--images", "1", "--repeats", "1", "--no-write"])
    memory.main()
    out = capsys.readouterr().out
    assert "| 3.500 | 3091 |" in out and "| 0.250 | 220 |" in out
