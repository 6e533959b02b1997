"""Configuration files for commands: ``--config FILE`` (TOML, or JSON) whose keys are exactly the command's long
option names, and ``--print-config``, which prints the effective configuration as such a file. Options given on the
command line override the file's values (the file fills click's ``default_map``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def option_names(command: click.Command) -> dict[str, click.Option]:
    """Each option of ``command`` by its long name without dashes (``max-batch``); the config file's keys."""
    names: dict[str, click.Option] = {}
    for param in command.params:
        if isinstance(param, click.Option) and param.name not in ("config", "print_config", "help"):
            longs = [o for o in param.opts if o.startswith("--")]
            if longs:
                names[longs[0][2:]] = param
    return names


def read_config(path: Path, command: click.Command) -> dict[str, Any]:
    """The file's values by parameter name; unknown keys are refused, naming the valid ones."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--config") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import tomllib

            data = tomllib.loads(text)
    except (ValueError, ImportError) as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise click.BadParameter(
            f"{path} is not a readable config file: {exc}", param_hint="--config"
        ) from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path}: a config file is a table of options", param_hint="--config")
    known = option_names(command)
    by_name = {key.replace("_", "-"): value for key, value in data.items()}
    unknown = sorted(set(by_name) - set(known))
    if unknown:
        raise click.BadParameter(
            f"{path}: {', '.join(unknown)} {'is not an option' if len(unknown) == 1 else 'are not options'} of "
            f"`{command.name}`; its options: {', '.join(sorted(known))}",
            param_hint="--config",
        )
    return {known[key].name: value for key, value in by_name.items()}


def _load(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.default_map = {**(ctx.default_map or {}), **read_config(Path(value), ctx.command)}


def to_toml(values: dict[str, Any]) -> str:
    """``key = value`` lines for strings, numbers, booleans and lists of them (None: left out)."""

    def literal(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(literal(x) for x in v) + "]"
        return json.dumps(str(v))  # a TOML basic string is a JSON string

    return "".join(f"{key} = {literal(v)}\n" for key, v in values.items() if v is not None)


class ConfigCommand(click.Command):
    """A command with ``--config FILE`` and ``--print-config``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(
            click.Option(
                ["--config"],
                type=click.Path(dir_okay=False),
                is_eager=True,
                expose_value=False,
                callback=_load,
                help="Read options from this TOML (or .json) file, keys = the long option names; options given "
                "here override it.",
            )
        )
        self.params.append(
            click.Option(
                ["--print-config"],
                is_flag=True,
                help="Print the effective configuration as a file for --config, and do nothing else.",
            )
        )

    def invoke(self, ctx: click.Context) -> Any:
        if ctx.params.pop("print_config", False):
            values = {  # in the order of --help, whatever order they were given in
                name: ctx.params[param.name]
                for name, param in option_names(self).items()
                if param.name in ctx.params
            }
            click.echo(
                to_toml({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}), nl=False
            )
            return None
        return super().invoke(ctx)
