"""MemNet (Tai et al. 2017) as in denoised-smoothing: BN -> ReLU -> conv units, memory blocks with gate units."""

from __future__ import annotations

import torch
from torch import nn

from smoothcore.errors import ConfigError


class BNReLUConv(nn.Sequential):
    """``bn`` -> ``relu`` -> ``conv`` (no bias)."""

    def __init__(self, in_channels: int, channels: int, k: int = 3, s: int = 1, p: int = 1) -> None:
        super().__init__()
        self.add_module("bn", nn.BatchNorm2d(in_channels))
        self.add_module("relu", nn.ReLU(inplace=False))
        self.add_module("conv", nn.Conv2d(in_channels, channels, k, s, p, bias=False))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.relu_conv1 = BNReLUConv(channels, channels)
        self.relu_conv2 = BNReLUConv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_conv2(self.relu_conv1(x)) + x


class MemoryBlock(nn.Module):
    """Block ``index`` (1-based): ``recursive_unit`` of residual blocks and a 1x1 ``gate_unit`` over the residual
    outputs followed by the long-term memory (feature extractor and earlier gates)."""

    def __init__(self, channels: int, num_resblock: int, index: int) -> None:
        super().__init__()
        self.recursive_unit = nn.ModuleList([ResidualBlock(channels) for _ in range(num_resblock)])
        self.gate_unit = BNReLUConv((num_resblock + index) * channels, channels, 1, 1, 0)

    def forward(self, x: torch.Tensor, long_term: list[torch.Tensor]) -> torch.Tensor:
        short_term = []
        for block in self.recursive_unit:
            x = block(x)
            short_term.append(x)
        gate = self.gate_unit(torch.cat(short_term + long_term, dim=1))
        long_term.append(gate)
        return gate


class MemNet(nn.Module):
    """``reconstructor(memory blocks(feature_extractor(x))) + x``."""

    def __init__(
        self, in_channels: int = 3, channels: int = 64, num_memblock: int = 3, num_resblock: int = 6
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ConfigError(f"MemNet takes 1- or 3-channel images, got in_channels={in_channels}")
        self.in_channels = in_channels
        self.feature_extractor = BNReLUConv(in_channels, channels)
        self.reconstructor = BNReLUConv(channels, in_channels)
        self.dense_memory = nn.ModuleList(
            [MemoryBlock(channels, num_resblock, i + 1) for i in range(num_memblock)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.feature_extractor(x)
        long_term = [out]
        for block in self.dense_memory:
            out = block(out, long_term)
        return self.reconstructor(out) + x
