"""Loading and saving denoisers (denoised-smoothing ``checkpoint.pth.tar`` and smoothcore's own format)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from smoothcore.checkpoints import DENOISER_FORMAT, load_file, load_state_strict, strip_prefix
from smoothcore.devices import resolve_device
from smoothcore.errors import CheckpointError, ConfigError
from smoothcore.models import build_denoiser

# denoised-smoothing architecture names -> (smoothcore denoiser, its parameters)
DENOISED_SMOOTHING_DENOISERS: dict[str, tuple[str, dict[str, Any]]] = {
    "cifar_dncnn": ("dncnn", {}),
    "cifar_dncnn_wide": ("dncnn-wide", {}),
    "imagenet_dncnn": ("dncnn", {}),
    "memnet": ("memnet", {}),
    "imagenet_memnet": ("memnet", {}),
}


def denoiser_checkpoint(
    model: nn.Module,
    *,
    arch: str,
    params: dict[str, Any],
    in_channels: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "format": DENOISER_FORMAT,
        "version": 1,
        "arch": arch,
        "arch_params": dict(params),
        "in_channels": in_channels,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **(extra or {}),
    }


def _infer_in_channels(state: dict[str, Any]) -> int:
    for key in ("dncnn.0.weight", "feature_extractor.conv.weight"):
        if key in state and isinstance(state[key], torch.Tensor) and state[key].dim() == 4:
            return int(state[key].shape[1])
    raise CheckpointError("cannot tell the denoiser's image channels: its first convolution is missing")


def _infer_dncnn(state: dict[str, Any]) -> dict[str, Any]:
    convs = sorted(
        int(k.split(".")[1])
        for k in state
        if k.startswith("dncnn.") and k.endswith(".weight") and state[k].dim() == 4
    )
    return {"depth": len(convs), "channels": int(state["dncnn.0.weight"].shape[0])} if convs else {}


def load_denoiser(
    path: str | Path, *, trust: bool = False, device: str | torch.device = "cpu", return_info: bool = False
):
    """An eval-mode denoiser (noisy ``[0, 1]`` images -> denoised ones) with an ``in_channels`` attribute."""
    path = Path(path)
    device = resolve_device(device)
    obj = load_file(path, trust=trust)
    if not isinstance(obj, dict) or "state_dict" not in obj or "arch" not in obj:
        keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path} is not a denoiser checkpoint (top level: {keys})",
            hint="expected denoised-smoothing's checkpoint.pth.tar ({arch, state_dict}) or smoothcore's denoiser.pt",
        )
    state = obj["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: state_dict is not a mapping")
    state = strip_prefix({k: v for k, v in state.items() if isinstance(k, str)}, "module.")
    arch = str(obj["arch"])
    if obj.get("format") == DENOISER_FORMAT:
        name, params, in_channels = arch, dict(obj.get("arch_params") or {}), int(obj["in_channels"])
    elif arch in DENOISED_SMOOTHING_DENOISERS:
        name, params = DENOISED_SMOOTHING_DENOISERS[arch]
        params = dict(params)
        in_channels = _infer_in_channels(state)
        if name.startswith("dncnn"):
            params.update(_infer_dncnn(state))
    else:
        from smoothcore.loading import DENOISED_SMOOTHING_ARCHS

        if arch in DENOISED_SMOOTHING_ARCHS:
            raise CheckpointError(f"{path} is a classifier ({arch}), not a denoiser")
        raise CheckpointError(
            f"{path}: unknown denoiser architecture {arch!r}; known: {', '.join(sorted(DENOISED_SMOOTHING_DENOISERS))}"
            " (and smoothcore's own denoiser checkpoints)"
        )
    model = build_denoiser(name, in_channels=in_channels, **params)
    load_state_strict(model, state, str(path))
    model.in_channels = in_channels
    model = model.to(device).eval()
    info = {"arch": arch, "denoiser": name, "params": params, "in_channels": in_channels, "path": str(path)}
    return (model, info) if return_info else model


def load_frozen_denoiser(
    path: str | Path | None, in_channels: int, device: torch.device, *, trust: bool = False
) -> nn.Module | None:
    """The denoiser at ``path`` (None: no denoiser) for ``in_channels``-channel images, frozen (no gradients) and in
    eval mode: what a classifier is trained or certified behind."""
    if path is None:
        return None
    den = load_denoiser(path, device=device, trust=trust)
    if den.in_channels != in_channels:
        raise ConfigError(
            f"the denoiser {path} takes {den.in_channels}-channel images but the data has {in_channels} channels"
        )
    for p in den.parameters():
        p.requires_grad_(False)
    return den.eval()
