"""Denoiser architectures (import name ``smoothcore_denoisers``) and the denoiser-training workflow.

DnCNN and MemNet follow denoised-smoothing (Salman et al. 2020) module for module, so its published
``checkpoint.pth.tar`` denoisers load by parameter name (SPEC.md, "Denoiser layouts").
"""

from typing import Any

__all__ = ["DnCNN", "MemNet"]


def __getattr__(name: str) -> Any:  # imported on first use: the command line reads the config without torch
    if name == "DnCNN":
        from smoothcore_denoisers.dncnn import DnCNN

        return DnCNN
    if name == "MemNet":
        from smoothcore_denoisers.memnet import MemNet

        return MemNet
    raise AttributeError(f"module 'smoothcore_denoisers' has no attribute {name!r}")
