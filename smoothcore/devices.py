"""Device names from users (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ...) checked against what this machine has."""

from __future__ import annotations

import torch

from smoothcore.errors import ConfigError


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that exists here; ``auto`` is ``cuda`` when PyTorch sees a GPU, else ``cpu``.
    An unknown name or a device this machine lacks is a ConfigError (PyTorch would fail later, deep in a call)."""
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {device!r} (cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {str(device)!r} requested but CUDA is not available here",
                hint="use the device 'cpu'",
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {str(device)!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type == "mps" and not (torch.backends.mps.is_built() and torch.backends.mps.is_available()):
        raise ConfigError(
            f"device {str(device)!r} requested but MPS is not available here", hint="use the device 'cpu'"
        )
    elif dev.type not in ("cpu", "cuda", "mps"):
        try:
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError) as exc:
            raise ConfigError(
                f"device {str(device)!r} is not usable here: {str(exc).splitlines()[0][:160]}"
            ) from None
    return dev
