"""torch.distributed plumbing shared by sharded certification and DDP training.

Launch with ``torchrun --nproc_per_node N -m smoothcore.cli ...``: the same command line works with or without
torchrun. Without the torchrun environment everything runs as a single process (rank 0 of 1).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from smoothcore.errors import SmoothcoreError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def from_env() -> DistInfo:
    """Join the process group torchrun describes (gloo on CPU, NCCL on GPUs); a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend_for(local_rank))
    return DistInfo(rank, world, local_rank)


def backend_for(local_rank: int) -> str:
    """gloo on CPU-only machines; with GPUs, NCCL for CUDA tensors and gloo for CPU ones (the small host-side
    reductions of losses and counts), so that collectives work whatever device a tensor is on.
    ``SMOOTHCORE_DIST_BACKEND=gloo`` forces gloo."""
    if not torch.cuda.is_available() or os.environ.get("SMOOTHCORE_DIST_BACKEND", "") == "gloo":
        return "gloo"
    torch.cuda.set_device(local_rank)
    return "cpu:gloo,cuda:nccl"


def device_for(device: str, info: DistInfo) -> str:
    """Each rank takes its own GPU when the user asked for ``cuda``."""
    if info.active and device in ("cuda", "auto") and torch.cuda.is_available():
        return f"cuda:{info.local_rank}"
    return device


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()


def all_agree(info: DistInfo, ok: bool) -> bool:
    """Whether every rank says ``ok`` (a collective: every rank must call it)."""
    if not info.active:
        return ok
    flag = torch.tensor([1 if ok else 0])
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def all_reduce_sum(info: DistInfo, *values: float) -> tuple[float, ...]:
    """The sums of ``values`` over every rank (a collective: every rank must call it)."""
    if not info.active:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return tuple(t.tolist())


def run_on_main(info: DistInfo, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 and hand its result (or its SmoothcoreError) to every rank."""
    if not info.active:
        return fn()
    box: list[Any] = [None]
    if info.main:
        try:
            box[0] = ("ok", fn())
        except SmoothcoreError as exc:
            box[0] = ("error", exc)
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return value


def shard_apply(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, full: int, info: DistInfo
) -> torch.Tensor:
    """Apply a random transform to this rank's rows ``x`` of a global batch of ``full`` rows, drawing the randomness
    of the whole batch: every rank consumes its generator exactly as a single process would."""
    if not info.active:
        return fn(x)
    whole = torch.zeros((full, *x.shape[1:]), dtype=x.dtype, device=x.device)
    whole[info.rank :: info.world] = x
    return fn(whole)[info.rank :: info.world]
