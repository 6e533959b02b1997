"""Denoiser architectures (import name ``smoothcore_denoisers``) and the denoiser-training workflow.

DnCNN and MemNet follow denoised-smoothing (Salman et al. 2020) module for module, so its published
``checkpoint.pth.tar`` denoisers load by parameter name (SPEC.md, "Denoiser layouts").
"""

from smoothcore_denoisers.dncnn import DnCNN
from smoothcore_denoisers.memnet import MemNet

__all__ = ["DnCNN", "MemNet"]
