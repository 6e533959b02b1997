"""Scale-out with torch.distributed, two CPU processes with the gloo backend (launched by torchrun)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pandas as pd

from smoothcore.results import load_results
from smoothcore.runner import CertifyConfig, certify_experiment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, nproc: int = 2, timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",
        "-m",
        "smoothcore.cli",
        *args,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", SMOOTHCORE_LOAD_PLUGINS="")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


COMPARED = ["index", "label", "prediction", "correct", "radius", "p_lower", "counts", "forward_passes"]


def test_sharded_certification_merges_into_the_single_process_table(run_copy, fashion_dir):
    # Monte-Carlo is the demanding case (exact DSSN rows are deterministic anyway): per-image random streams
    for noise_args, tag in ((["--noise", "ssn", "--sigma", "0.25", "--n0", "8", "--N", "60"], "ssn"),):
        proc = torchrun(
            "certify",
            str(run_copy),
            *noise_args,
            "--data-dir",
            str(fashion_dir),
            "--skip",
            "97",
            "--limit",
            "9",
            "--tag",
            f"{tag}-sharded",
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        sharded = load_results(run_copy / f"certify_{tag}-sharded.csv")
        extra = {"n0": 8, "n": 60, "sigma": 0.25} if tag == "ssn" else {}
        single = certify_experiment(
            run_copy,
            CertifyConfig(
                noise=tag, skip=97, limit=9, data_dir=str(fashion_dir), tag=f"{tag}-single", **extra
            ),
        )
        assert len(sharded) == 9
        pd.testing.assert_frame_equal(sharded[COMPARED], single[COMPARED])
        assert not list(run_copy.glob(f".certify_{tag}-sharded.rank*"))  # shards are merged away
    # resuming the sharded table with other parameters is refused by every rank (none is left waiting)
    args = ["certify", str(run_copy), "--data-dir", str(fashion_dir), "--skip", "97", "--limit", "9"]
    proc = torchrun(*args, *noise_args[:-1], "70", "--tag", "ssn-sharded", "--resume", timeout=120)
    assert (
        proc.returncode != 0
        and "changed parameters for certify_ssn-sharded.csv: n: was 60, now 70" in proc.stderr
    )
    assert load_results(run_copy / "certify_ssn-sharded.csv").equals(sharded)


def test_ddp_training_matches_a_single_process_on_the_same_data_order(tiny_idx_dir, tmp_path):
    """Two gloo processes, each on half of every batch, end with the weights of one process on whole batches, up to
    floating-point reduction order (tolerance 1e-5). Batch norm is off: SyncBatchNorm needs GPUs."""
    import torch

    from smoothcore.checkpoints import load_file
    from smoothcore.train import TrainConfig, train_classifier

    common = [
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        str(tiny_idx_dir),
        "--model",
        "cnn",
        "--model-param",
        "batch_norm=false",
        "--noise",
        "ssn",
        "--sigma",
        "0.3",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--eval-limit",
        "16",
        "--seed",
        "5",
    ]
    proc = torchrun("train-classifier", *common, "--out", str(tmp_path / "ddp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = TrainConfig(
        dataset="fashion-mnist",
        data_dir=str(tiny_idx_dir),
        model="cnn",
        model_params={"batch_norm": False},
        noise="ssn",
        sigma=0.3,
        epochs=1,
        batch_size=16,
        eval_limit=16,
        seed=5,
    )
    train_classifier(cfg, tmp_path / "single")
    ddp = load_file(tmp_path / "ddp" / "checkpoint.pt")["state_dict"]
    single = load_file(tmp_path / "single" / "checkpoint.pt")["state_dict"]
    assert ddp.keys() == single.keys()
    for k in single:
        assert torch.allclose(ddp[k], single[k], atol=1e-5, rtol=0), k
    moved = sum(
        float((single[k] - load_file(tmp_path / "ddp" / "checkpoint.pt")["state_dict"][k]).abs().max())
        for k in single
    )
    assert moved < 1e-4


def test_a_sharded_random_transform_gives_each_rank_its_rows_of_the_single_process_result():
    """shard_apply draws the randomness of the whole global batch on every rank: rank r's rows r::world come out as
    a single process transforming the whole batch would have them."""
    import torch

    from smoothcore.distributed import DistInfo, shard_apply

    def add_noise(z: torch.Tensor) -> torch.Tensor:
        return z + torch.rand(z.shape, generator=torch.Generator().manual_seed(0))

    batch = torch.arange(10.0).view(5, 2)
    single = shard_apply(add_noise, batch, 5, DistInfo())
    assert torch.equal(single, add_noise(batch))
    for rank in range(2):
        rows = shard_apply(add_noise, batch[rank::2], 5, DistInfo(rank=rank, world=2))
        assert torch.equal(rows, single[rank::2])
