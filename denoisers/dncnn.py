"""DnCNN (Zhang et al. 2017) as in denoised-smoothing: one ``nn.Sequential`` named ``dncnn``, residual output."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import init

from smoothcore.errors import ConfigError


class DnCNN(nn.Module):
    """``x - dncnn(x)``. ``dncnn``: conv (in -> C, bias), ReLU, ``depth - 2`` x [conv (no bias), BatchNorm2d(C,
    eps=1e-4, momentum=0.95), ReLU], conv (C -> in, no bias). Orthogonal initialisation."""

    def __init__(self, in_channels: int = 3, depth: int = 17, channels: int = 64) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ConfigError(f"DnCNN takes 1- or 3-channel images, got in_channels={in_channels}")
        if depth < 3:
            raise ConfigError(f"DnCNN depth must be at least 3, got {depth}")
        if channels < 1:
            raise ConfigError(f"DnCNN channels must be positive, got {channels}")
        self.in_channels = in_channels
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=True),
            nn.ReLU(inplace=True),
        ]
        for _ in range(depth - 2):
            layers += [
                nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels, eps=1e-4, momentum=0.95),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(channels, in_channels, 3, padding=1, bias=False))
        self.dncnn = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init.orthogonal_(m.weight)
                if m.bias is not None:
                    init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                init.constant_(m.weight, 1)
                init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.dncnn(x)
