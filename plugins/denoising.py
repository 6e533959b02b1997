"""Built-in denoisers: DnCNN, wide DnCNN (128 channels) and MemNet (from ``smoothcore_denoisers``)."""

from __future__ import annotations

from smoothcore.hookspecs import hookimpl
from smoothcore_denoisers import DnCNN, MemNet


def dncnn(*, in_channels: int, depth: int = 17, channels: int = 64) -> DnCNN:
    return DnCNN(in_channels, depth, channels)


def dncnn_wide(*, in_channels: int, depth: int = 17, channels: int = 128) -> DnCNN:
    return DnCNN(in_channels, depth, channels)


def memnet(*, in_channels: int, channels: int = 64, num_memblock: int = 3, num_resblock: int = 6) -> MemNet:
    return MemNet(in_channels, channels, num_memblock, num_resblock)


@hookimpl
def register_denoisers(register) -> None:
    register(
        "dncnn",
        dncnn,
        description="DnCNN, 17 layers of 64 channels (denoised-smoothing cifar_dncnn / imagenet_dncnn)",
    )
    register(
        "dncnn-wide", dncnn_wide, description="DnCNN with 128 channels (denoised-smoothing cifar_dncnn_wide)"
    )
    register(
        "memnet",
        memnet,
        description="MemNet, 3 memory blocks of 6 residual blocks, 64 channels (memnet / imagenet_memnet)",
    )
