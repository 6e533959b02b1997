"""Evaluate a radius formula on a float, numpy array or tensor and return the same kind."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def apply(p_lower, formula: Callable[[np.ndarray], np.ndarray]):
    if isinstance(p_lower, torch.Tensor):
        out = formula(p_lower.detach().cpu().double().numpy())
        return torch.as_tensor(out, dtype=torch.float64)
    arr = np.asarray(p_lower, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = formula(arr)
    return float(out) if np.ndim(out) == 0 else out
