"""Parameter types and options the commands share; option defaults come from the configuration dataclasses they
fill, never typed twice."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import click

from smoothcore.checks import check_radii, split_list
from smoothcore.errors import ConfigError


class CommaList(click.ParamType):
    """A comma-separated list (``0,0.5,1``), each item read by ``cast``; ``radii`` lists are also checked to be
    finite and non-negative."""

    name = "list"

    def __init__(self, cast: Callable[[str], Any] = str, what: str = "the list") -> None:
        self.cast, self.what = cast, what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            items = split_list(value, self.cast, self.what)
            return check_radii(items) if self.what == "radii" else items
        except ConfigError as exc:
            self.fail(exc.message, param, ctx)


RADII = CommaList(float, "radii")


class MaxBatch(click.ParamType):
    """``--max-batch``: a positive integer, or ``auto`` (the bound from the GPU's free memory, 1024 on the CPU, then the
    forward batch and layout a timed probe finds fastest: smoothcore.tuning)."""

    name = "auto|int"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            return value
        try:
            number = int(str(value))
        except ValueError:
            number = 0
        if number < 1:
            self.fail(f"must be a positive integer or 'auto', got {value!r}", param, ctx)
        return number


MAX_BATCH = MaxBatch()


class Opt(click.Option):
    """An option whose default is described in words (``show_default="..."``, shown as ``[default: ...]`` like every
    other default, without click's parentheses) and, with ``required_when``, one that is required only in some uses:
    its help shows ``[required ...]``; the command checks it, with a message that says why."""

    def __init__(self, *args: Any, required_when: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.required_when = required_when

    def get_help_extra(self, ctx: click.Context) -> Any:
        extra = super().get_help_extra(ctx)
        if isinstance(self.show_default, str):
            extra["default"] = self.show_default
        if self.required_when:
            extra["required"] = f"required {self.required_when}"
        return extra


def parse_params(items: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` options as a mapping; values read as booleans (true/false), integers, numbers, else text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}")
        if value.lower() in ("true", "false"):
            out[key] = value.lower() == "true"
            continue
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = value
    return out


def default(config: type, name: str) -> Any:
    """The default of the field ``name`` of the dataclass ``config``."""
    field = next(f for f in dataclasses.fields(config) if f.name == name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def option(config: type, name: str, *decls: str, **kwargs: Any) -> Callable:
    """``click.option(*decls)`` whose default is the default of ``config``'s field ``name`` (shown in --help)."""
    return click.option(*decls, default=default(config, name), show_default=True, **kwargs)


def data_dir_option(f: Callable) -> Callable:
    """--data-dir of the commands that read a dataset where it lives (certify's defaults to the training's)."""
    return click.option(
        "--data-dir",
        type=click.Path(),
        default=None,
        help="Where the dataset lives.",
        cls=Opt,
        show_default="the dataset's usual places",
    )(f)


def device_option(config: type) -> Callable[[Callable], Callable]:
    return option(config, "device", "--device", help="cpu, cuda, cuda:N, or auto (cuda when available).")


def noise_options(f: Callable | None = None, *, certify: bool = False) -> Callable:
    """--sigma, --lambda, --noise-seed and --noise-param: required (sigma or lambda under a noise) and defaulting
    as in training, or with ``certify`` defaulting to what the classifier was trained with."""

    def add(f: Callable) -> Callable:
        trained = "the training's"
        f = click.option(
            "--noise-param",
            multiple=True,
            help="Further parameter of the noise KEY=VALUE (a plugin's, e.g. tail=3).",
            cls=Opt,
            show_default=trained if certify else "none",
        )(f)
        f = click.option(
            "--noise-seed",
            type=int,
            default=None,
            help="Noise seed (DSSN template).",
            cls=Opt,
            show_default=trained if certify else "0",
        )(f)
        f = click.option(
            "--lambda",
            "lambd",
            type=float,
            default=None,
            help="Half-width lambda of uniform-family noise (instead of --sigma).",
        )(f)
        return click.option(
            "--sigma",
            type=float,
            default=None,
            help="Noise standard deviation (uniform family: lambda = sigma*sqrt(3)).",
            cls=Opt,
            show_default=trained if certify else None,
            required_when=None if certify else "under a noise, unless --lambda",
        )(f)

    return add if f is None else add(f)


def subset_options(config: type) -> Callable[[Callable], Callable]:
    """--train-limit and --eval-limit of the training commands (defaults from ``config``)."""

    def add(f: Callable) -> Callable:
        f = option(
            config,
            "eval_limit",
            "--eval-limit",
            type=int,
            help="Test images (evenly spread over the set) for the per-epoch validation.",
        )(f)
        return click.option(
            "--train-limit",
            type=int,
            default=None,
            help="Train on N training images only, evenly spread over the set.",
        )(f)

    return add


def max_batch_option(config: type) -> Callable:
    """--max-batch (``auto`` or a positive integer), its default ``config``'s."""
    return option(
        config,
        "max_batch",
        "--max-batch",
        type=MAX_BATCH,
        help="Most noisy images per forward pass, or 'auto': the batch (and layout) that run fastest here, from a "
        "short timed probe (on a GPU, bounded by its free memory).",
    )


def reopen_options(config: type) -> Callable[[Callable], Callable]:
    """The options of the commands that reopen a finished certification (audit, attack): --data-dir, --device,
    --max-batch and --trust-checkpoint (defaults from ``config``)."""

    def add(f: Callable) -> Callable:
        f = click.option(
            "--trust-checkpoint",
            is_flag=True,
            help="Allow loading legacy pickled checkpoints (can run code).",
        )(f)
        f = max_batch_option(config)(f)
        f = device_option(config)(f)
        return data_dir_option(f)

    return add
