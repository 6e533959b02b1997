"""Argument checks shared by the Python API: what counts as an integer, a list of radii, a list of indices.

numpy scalars are accepted where Python numbers are (``dim=np.prod(x.shape[1:])`` is a common way to compute a
size); ``bool`` is not an integer here, and a string is not a list of numbers.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

from smoothcore.errors import ConfigError


def _is_bool(value: Any) -> bool:
    """A Python or numpy bool (numpy is not imported for it: a numpy bool's type is numpy.bool_/numpy.bool)."""
    return isinstance(value, bool) or (
        type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool")
    )


def is_int(value: Any) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not _is_bool(value)


def _as_list(value: Any, what: str) -> list:
    if isinstance(value, (str, bytes)) or isinstance(value, numbers.Number):
        raise ConfigError(f"{what} must be a list of numbers, got {value!r}", hint=f"e.g. {what}=[0.5, 1.0]")
    if type(value).__module__.startswith("torch"):  # a tensor (torch is imported only by whoever made it)
        return value.detach().cpu().reshape(-1).tolist()
    try:
        return list(value)
    except TypeError:
        raise ConfigError(f"{what} must be a list of numbers, got {type(value).__name__}") from None


def check_radii(radii: Any) -> list[float]:
    """A non-empty list of finite, non-negative radii, as floats."""
    values = _as_list(radii, "radii")
    if not values or any(
        not isinstance(r, numbers.Real) or _is_bool(r) or not math.isfinite(r) or r < 0 for r in values
    ):
        raise ConfigError(f"radii must be a non-empty list of finite, non-negative numbers, got {radii!r}")
    return [float(r) for r in values]


def check_indices(indices: Any, count: int) -> list[int]:
    """``count`` integer dataset indices (non-negative), as ints."""
    values = _as_list(indices, "indices")
    if len(values) != count:
        raise ConfigError(f"got {len(values)} indices for {count} images")
    bad = [i for i in values if not is_int(i) or i < 0]
    if bad:
        raise ConfigError(f"indices must be non-negative integers (dataset positions), got {bad[0]!r}")
    return [int(i) for i in values]


def check_params(what: str, params: Any, reserved: tuple[str, ...] = ()) -> None:
    """Further parameters of a component (``--noise-param``, ``--model-param``, recipe mappings): a mapping from
    names to JSON values, recorded with the run. ``reserved``: the names the framework passes itself."""
    if not isinstance(params, dict) or not all(isinstance(k, str) and k for k in params):
        raise ConfigError(f"{what} must be a mapping from parameter names to values, got {params!r}")
    taken = [k for k in params if k in reserved or k.startswith("_")]
    if taken:
        raise ConfigError(
            f"{what}: {taken[0]!r} is not a further parameter: smoothcore sets {', '.join(reserved)} itself",
            hint="use the option of its own (--sigma, --lambda, --noise-seed, --device, ...)",
        )
    for key, value in params.items():
        values = value if isinstance(value, list) else [value]
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
            raise ConfigError(f"{what}: {key} = {value!r} is not a number, flag, text or list of them")


def split_list(text: str, cast: Callable[[str], Any] = str, what: str = "the list") -> list:
    """``"a, b,c"`` as ``[cast("a"), cast("b"), cast("c")]``: the comma lists of the command line and of recipes
    (spaces and empty items are dropped)."""
    try:
        return [cast(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        kind = {int: "integers", float: "numbers"}.get(cast, "values")
        raise ConfigError(f"{what} must be comma-separated {kind}, got {text!r}") from None
