"""Runs that survive faults: real processes killed with SIGKILL at random points, and a disk quota that fills up.
The final tables and weights equal those of uninterrupted runs."""

from __future__ import annotations

import contextlib
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from smoothcore.checkpoints import load_file
from smoothcore.results import load_results
from smoothcore.runner import CertifyConfig, certify_experiment
from smoothcore.train import TrainConfig, train_classifier

COMPARED = ["index", "label", "prediction", "correct", "radius", "p_lower", "counts", "forward_passes"]


def smoothcore_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "smoothcore.cli", *args]


def env() -> dict[str, str]:
    return dict(os.environ, SMOOTHCORE_LOAD_PLUGINS="", OMP_NUM_THREADS="1")


@contextlib.contextmanager
def single_thread():
    """As in the subprocesses (OMP_NUM_THREADS=1): the same kernels, so results compare bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def kill_repeatedly(
    args: list[str], watch: Path, kills: int, rng: random.Random, *, grow_by=lambda: 1, timeout: float = 240
) -> int:
    """Run ``args`` (adding --resume once ``watch`` exists), SIGKILL it at a random moment after ``watch`` has grown,
    ``kills`` times; then let it finish. Returns how many kills landed mid-run."""
    landed = 0
    deadline = time.time() + timeout
    for attempt in range(kills + 1):
        cmd = args + (["--resume"] if watch.exists() else [])
        proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if attempt == kills:
            _, err = proc.communicate(timeout=max(10, deadline - time.time()))
            assert proc.returncode == 0, err.decode()[-2000:]
            return landed
        start_size = watch.stat().st_size if watch.exists() else 0
        while proc.poll() is None and time.time() < deadline:
            if watch.exists() and watch.stat().st_size > start_size:
                time.sleep(rng.uniform(0.0, 0.4))
                break
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            landed += 1
        else:
            assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
            return landed
    return landed


def test_certification_killed_repeatedly_ends_with_the_uninterrupted_table(run_copy, fashion_dir):
    rng = random.Random(7)
    args = smoothcore_cmd(
        "certify",
        str(run_copy),
        "--noise",
        "ssn",
        "--sigma",
        "0.25",
        "--n0",
        "8",
        "--n",
        "200",
        "--data-dir",
        str(fashion_dir),
        "--skip",
        "41",
        "--limit",
        "24",
        "--max-batch",
        "64",
        "--tag",
        "killed",
    )
    table_path = run_copy / "certify_killed.csv"
    landed = kill_repeatedly(args, table_path, kills=2, rng=rng)
    assert landed >= 1
    killed = load_results(table_path)
    with single_thread():
        clean = certify_experiment(
            run_copy,
            CertifyConfig(
                noise="ssn",
                sigma=0.25,
                n0=8,
                n=200,
                data_dir=str(fashion_dir),
                skip=41,
                limit=24,
                max_batch=64,
                tag="clean",
            ),
        )
    pd.testing.assert_frame_equal(killed[COMPARED], clean[COMPARED])
    assert killed["index"].is_unique


def test_training_killed_repeatedly_ends_with_the_uninterrupted_weights(tiny_idx_dir, tmp_path):
    rng = random.Random(3)
    common = [
        "--data-dir",
        str(tiny_idx_dir),
        "--noise",
        "dssn",
        "--sigma",
        "0.25",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--eval-limit",
        "8",
        "--seed",
        "2",
        "--save-every-steps",
        "1",
    ]
    args = smoothcore_cmd("train-classifier", *common, "--out", str(tmp_path / "killed"))
    assert kill_repeatedly(args, tmp_path / "killed" / "train_state.pt", kills=2, rng=rng) >= 1
    cfg = TrainConfig(
        dataset="fashion-mnist",
        data_dir=str(tiny_idx_dir),
        noise="dssn",
        sigma=0.25,
        epochs=3,
        batch_size=8,
        eval_limit=8,
        seed=2,
    )
    with single_thread():
        train_classifier(cfg, tmp_path / "clean")
    a = load_file(tmp_path / "killed" / "checkpoint.pt")["state_dict"]
    b = load_file(tmp_path / "clean" / "checkpoint.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    log = pd.read_csv(tmp_path / "killed" / "train_log.csv")
    assert log["epoch"].tolist() == [1, 2, 3]


def test_a_full_disk_stops_certification_cleanly_and_resume_completes_it(run_copy, fashion_dir):
    """The result table may not grow past a file-size quota (RLIMIT_FSIZE): the run stops with a clear error,
    keeps every finished image, and --resume without the quota ends with the uninterrupted table."""
    args = smoothcore_cmd(
        "certify",
        str(run_copy),
        "--data-dir",
        str(fashion_dir),
        "--skip",
        "53",
        "--limit",
        "30",
        "--max-batch",
        "512",
        "--tag",
        "quota",
    )

    def quota():
        resource.setrlimit(resource.RLIMIT_FSIZE, (2500, 2500))

    proc = subprocess.run(args, env=env(), capture_output=True, text=True, preexec_fn=quota, timeout=240)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (
        "could not write results" in proc.stderr
        and "File too large" in proc.stderr
        and "Traceback" not in proc.stderr
    )
    kept = load_results(run_copy / "certify_quota.csv")
    assert 0 < len(kept) < 30
    proc = subprocess.run(args + ["--resume"], env=env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    resumed = load_results(run_copy / "certify_quota.csv")
    with single_thread():
        clean = certify_experiment(
            run_copy,
            CertifyConfig(data_dir=str(fashion_dir), skip=53, limit=30, max_batch=512, tag="noquota"),
        )
    pd.testing.assert_frame_equal(resumed[COMPARED], clean[COMPARED])


def test_a_failed_checkpoint_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    from smoothcore import ExperimentError
    from smoothcore.fileio import atomic_torch_save

    path = tmp_path / "checkpoint.pt"
    atomic_torch_save(path, {"w": torch.ones(3)})

    def failing_save(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    try:
        atomic_torch_save(path, {"w": torch.zeros(3)})
    except ExperimentError as exc:
        assert "No space left on device" in str(exc)
    else:
        raise AssertionError("the failed write was not reported")
    monkeypatch.undo()
    assert torch.equal(load_file(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


def test_a_checkpoint_that_does_not_fit_under_the_quota_is_a_clean_error(tmp_path):
    """torch.save reports a full disk as a RuntimeError of its zip writer, not an OSError."""
    code = (
        "import resource, signal, torch\n"
        "from smoothcore.fileio import atomic_torch_save\n"
        "from smoothcore.errors import ExperimentError\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
        f"try:\n    atomic_torch_save({str(tmp_path / 'big.pt')!r}, {{'w': torch.zeros(1_000_000)}})\n"
        "except ExperimentError as exc:\n    print('clean:', exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "clean: could not write" in proc.stdout, proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def test_files_written_atomically_follow_the_umask_like_any_other(tmp_path):
    """Checkpoints and JSON files in a shared folder must be as readable as the CSVs beside them."""
    from smoothcore.fileio import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_sigterm_and_ctrl_c_end_a_certification_with_how_to_resume(run_copy, fashion_dir):
    """A scheduler's SIGTERM (preemption) and Ctrl-C keep the finished images and say how to go on; the exit
    status is 128 + the signal, as shells report it."""
    table = run_copy / "certify_sig.csv"
    for signum in (signal.SIGTERM, signal.SIGINT):
        args = ["certify", str(run_copy), "--data-dir", str(fashion_dir), "--limit", "400", "--tag", "sig"]
        proc = subprocess.Popen(
            smoothcore_cmd(*args, *(["--resume"] if table.exists() else [])),
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the process alone, not the test runner
        )
        deadline = time.time() + 120
        start = len(load_results(table)) if table.exists() else 0
        while (not table.exists() or len(load_results(table)) < start + 2) and time.time() < deadline:
            time.sleep(0.2)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signum, err[-2000:]
        assert f"Interrupted ({signal.Signals(signum).name})" in err and "--resume" in err
        assert "Traceback" not in err and "Aborted" not in err
        assert 0 < len(load_results(table)) < 400
