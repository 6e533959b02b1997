"""Safe loading of checkpoints, and the checkpoint layouts smoothcore understands.

Checkpoints are untrusted input: they load with ``torch.load(weights_only=True)`` (tensors and plain
containers only; a pickle cannot run code), or from safetensors files. A legacy pickle that needs arbitrary
objects loads only when the caller passes ``trust=True`` (CLI: ``--trust-checkpoint``), with a warning.

Layouts:
- smoothcore classifier: ``{"format": "smoothcore.classifier", "model", "model_params", "dataset",
  "num_classes", "in_channels", "image_size", "mean", "std", "state_dict"}`` (state dict keys ``norm.*``, ``net.*``);
- the reference implementation's ``model_ckpt.torch``: a plain state dict ``model.module.<net keys>`` plus
  ``norm.module.mu`` and ``norm.module.log_sig``;
- denoised-smoothing's ``checkpoint.pth.tar``: ``{"epoch", "arch", "state_dict", "optimizer"}`` with keys
  ``1.<net keys>`` (``Sequential(normalize, net)``), possibly with ``module.`` prefixes.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smoothcore.errors import CheckpointError

CLASSIFIER_FORMAT = "smoothcore.classifier"
DENOISER_FORMAT = "smoothcore.denoiser"


class UntrustedCheckpointWarning(UserWarning):
    pass


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_file(path: str | Path, *, trust: bool = False) -> Any:
    """Read a checkpoint file safely (see module docstring); raises CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist" + (" (it is a folder)" if path.is_dir() else "")
        )
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    _check_container(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise CheckpointError(
                f"{path} is truncated or corrupt, or not a PyTorch checkpoint: {_first_line(exc)}"
            ) from None
        # a pickle the safe loader refuses: Python objects beyond tensors, or a legacy pickle format
        if not trust:
            raise CheckpointError(
                f"{path} cannot be loaded safely: it holds Python objects beyond tensors and plain containers (or is a "
                f"legacy pickle), and loading it could run code ({_unsupported(exc)})",
                hint="if you trust where this file comes from, pass --trust-checkpoint (Python: trust=True)",
            ) from None
    except (
        Exception
    ) as exc:  # torch.load raises many kinds of errors on damaged files; none is the user's bug
        raise CheckpointError(
            f"{path} is truncated or corrupt, or not a PyTorch checkpoint: {_first_line(exc)}"
        ) from None
    warnings.warn(
        f"loading {path} as a full pickle because trust=True: it can run arbitrary code",
        UntrustedCheckpointWarning,
        stacklevel=2,
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(
            f"{path} could not be loaded even as a trusted pickle: {_first_line(exc)}"
        ) from None


def _check_container(path: Path) -> None:
    """A PyTorch checkpoint is a zip archive (torch >= 1.6), a pickle (protocol 2 or later: older torch.save), or an
    uncompressed tar archive (torch < 0.4); anything else (a text file, an image) is named as such, rather than
    suggesting that trusting it could help. Only magic bytes are read: nothing is parsed here."""
    with open(path, "rb") as f:
        head = f.read(262)
    if head[:2] == b"PK" or head[:1] == b"\x80" or head[257:262] == b"ustar":
        return
    what = "it is empty" if not head else "neither a zip archive, a pickle nor a tar archive"
    raise CheckpointError(f"{path} is not a PyTorch checkpoint ({what})")


def _unsupported(exc: BaseException) -> str:
    text = str(exc)
    at = text.find("Unsupported")
    return text[at:].splitlines()[0][:200] if at >= 0 else "not a tensor checkpoint"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _load_safetensors(path: Path) -> dict[str, Any]:
    try:
        from safetensors import safe_open
    except ImportError:
        raise CheckpointError(
            f"{path} is a safetensors file; install the safetensors package to read it"
        ) from None
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = f.metadata() or {}
    except Exception as exc:  # any damage to the file is the file's problem, reported as such
        raise CheckpointError(f"{path} is not a valid safetensors file: {_first_line(exc)}") from None
    if "smoothcore" in meta:
        try:
            header = json.loads(meta["smoothcore"])
        except json.JSONDecodeError:
            raise CheckpointError(f"{path}: its smoothcore metadata is not valid JSON") from None
        header["state_dict"] = tensors
        return header
    return tensors


def save_safetensors(obj: dict[str, Any], path: str | Path) -> None:
    """Write a smoothcore checkpoint dict as safetensors (state dict as tensors, the rest as JSON metadata)."""
    from safetensors.torch import save_file

    header = {k: v for k, v in obj.items() if k != "state_dict"}
    save_file(
        {k: v.contiguous() for k, v in obj["state_dict"].items()},
        str(path),
        metadata={"smoothcore": json.dumps(header)},
    )


def strip_prefix(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def load_state_strict(model: nn.Module, state: dict[str, Any], source: str) -> None:
    """Load ``state`` into ``model``; a mismatch is a CheckpointError that names the keys."""
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{source}: the state dict is not a mapping of names to tensors")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    not_tensor = [k for k in state if k in expected and not isinstance(state[k], torch.Tensor)]
    if missing or unexpected or wrong_shape or not_tensor:
        parts = []
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes", wrong_shape),
            ("not tensors", not_tensor),
        ):
            if keys:
                more = f" (+{len(keys) - 8} more)" if len(keys) > 8 else ""
                parts.append(f"{label}: {', '.join(keys[:8])}{more}")
        raise CheckpointError(
            f"{source} does not fit the model: " + "; ".join(parts),
            hint="check --model / --dataset, or that the file is the checkpoint you meant",
        )
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{source}: parameter {k} contains NaN or Inf")
    model.load_state_dict(state, strict=True)
