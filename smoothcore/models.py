"""Model plumbing shared by every classifier and denoiser: normalisation as the first layer, building a
registered classifier, and stacking a denoiser in front of a classifier."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from smoothcore.errors import ConfigError, PluginError


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; ``mean`` and ``std`` are buffers (saved with the model)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ConfigError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        if any(float(s) <= 0 for s in std):
            raise ConfigError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class NormalizedClassifier(nn.Module):
    """``net(normalize(x))``: a classifier from ``[0, 1]`` pixels to logits."""

    def __init__(self, norm: Normalize, net: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(x))


class Stacked(nn.Module):
    """``classifier(denoiser(x))``: denoised smoothing (Salman et al. 2020)."""

    def __init__(self, denoiser: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.denoiser(x))


def stack(denoiser: nn.Module | None, classifier: nn.Module) -> nn.Module:
    """The model a smoothed classifier evaluates: ``classifier`` alone, or ``classifier(denoiser(x))``."""
    return classifier if denoiser is None else Stacked(denoiser, classifier)


def split_name(name: str) -> tuple[str, str | None]:
    base, _, variant = str(name).partition(":")
    return base, (variant or None)


MODEL_ARGUMENTS = ("num_classes", "in_channels", "image_size", "mean", "std")  # what the framework passes


def build_classifier(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    **params: Any,
) -> NormalizedClassifier:
    """Build the registered classifier ``name`` (or ``name:variant``) behind the dataset's normalisation."""
    from smoothcore.plugins import registry

    base, variant = split_name(name)
    entry = registry("classifier").get(base)
    if variant is not None:
        if not entry.info.get("variants"):
            raise ConfigError(f"classifier {base!r} has no variants (got {name!r})")
        params["variant"] = variant
    if len(mean) != in_channels:
        raise ConfigError(f"normalisation has {len(mean)} channels but the data has {in_channels}")
    net = entry.build(
        _framework=("num_classes", "in_channels", "image_size"),
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        **params,
    )
    if not isinstance(net, nn.Module):
        raise PluginError(
            f"plugin {entry.plugin!r} built classifier {name!r} as {type(net).__name__}, not an nn.Module"
        )
    return NormalizedClassifier(Normalize(mean, std), net)


def build_denoiser(name: str, *, in_channels: int, **params: Any) -> nn.Module:
    from smoothcore.plugins import registry

    entry = registry("denoiser").get(name)
    net = entry.build(_framework=("in_channels",), in_channels=in_channels, **params)
    if not isinstance(net, nn.Module):
        raise PluginError(
            f"plugin {entry.plugin!r} built denoiser {name!r} as {type(net).__name__}, not an nn.Module"
        )
    return net
