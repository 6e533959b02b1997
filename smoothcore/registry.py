"""Names -> components, with the plugin that registered each one.

A registry is filled through the ``register`` callbacks that the plugin manager hands to each plugin's hooks.
Names are the API: an unknown name is an error that lists every known one, and a name registered twice is an
error that names both plugins.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from smoothcore.errors import ConfigError, PluginError, SmoothcoreError, UnknownNameError

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.:\-]*$")


@dataclass(frozen=True)
class Entry:
    """One registered component: ``factory(**params)`` builds it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    description: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def build(self, *, _framework: tuple[str, ...] = (), **params: Any) -> Any:
        """``factory(**params)``; parameters the factory does not take are a ConfigError naming them and the ones
        it accepts (user input such as ``--model-param foo=1`` reaches this point), except the ``_framework``
        parameters every factory of this kind must take: missing those is the plugin's fault (a PluginError)."""
        try:
            signature = inspect.signature(self.factory)
        except (TypeError, ValueError):  # builtins without a signature: let the call decide
            return self._call(params)
        try:
            signature.bind(**params)
        except TypeError as exc:
            accepted = [
                p.name
                for p in signature.parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
            unknown = [k for k in params if k not in accepted]
            var_keyword = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
            missing = [k for k in unknown if k in _framework]
            if missing and not var_keyword:
                raise PluginError(
                    f"plugin {self.plugin!r} registered {self.kind} {self.name!r} with a factory that does not "
                    f"take {', '.join(map(repr, missing))}",
                    hint=f"every {self.kind} factory takes {', '.join(_framework)} (see smoothcore/hookspecs.py)",
                ) from None
            if unknown and not var_keyword:
                raise ConfigError(
                    f"{self.kind} {self.name!r} takes no parameter {', '.join(map(repr, unknown))}",
                    hint=f"it accepts: {', '.join(accepted) or '(none)'}",
                ) from None
            raise ConfigError(f"{self.kind} {self.name!r}: {exc}") from None
        for key, value in params.items():
            param = signature.parameters.get(key)
            if param is not None:
                self._check_type(key, value, param.default)
        return self._call(params)

    def _check_type(self, key: str, value: Any, default: Any) -> None:
        """A value of the wrong kind for a parameter whose default is a flag or a number (text such as
        ``--model-param width=abc``) is named here, rather than failing deep inside the factory."""
        import numbers

        import numpy as np

        flag = isinstance(value, (bool, np.bool_))
        if isinstance(default, bool):
            ok, wanted = flag, "true or false"
        elif isinstance(default, int):
            ok, wanted = isinstance(value, numbers.Integral) and not flag, "an integer"
        elif isinstance(default, float):
            ok, wanted = isinstance(value, numbers.Real) and not flag, "a number"
        else:
            return
        if not ok:
            raise ConfigError(
                f"{self.kind} {self.name!r}: parameter {key!r} takes {wanted}, got {value!r}",
                hint=f"its default is {default!r}",
            )

    def _call(self, params: dict[str, Any]) -> Any:
        try:
            return self.factory(**params)
        except SmoothcoreError:
            raise
        except (
            Exception
        ) as exc:  # a value the factory cannot use, or a bug in the plugin: either way, name it
            shown = {k: v for k, v in params.items() if k not in ("device",)}
            raise PluginError(
                f"plugin {self.plugin!r} could not build {self.kind} {self.name!r} from {shown}: "
                f"{type(exc).__name__}: {exc}"
            ) from None


class Registry:
    """The components of one kind (noise, certificate, classifier, denoiser, dataset)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(
        self, name: str, factory: Callable[..., Any], *, plugin: str, description: str = "", **info: Any
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise PluginError(
                f"plugin {plugin!r} tried to register a {self.kind} with the invalid name {name!r}",
                hint="names are lower-case letters, digits and '_.:-', starting with a letter or digit",
            )
        if not callable(factory):
            raise PluginError(
                f"plugin {plugin!r} registered {self.kind} {name!r} with a factory that is not callable"
            )
        if name in self._entries:
            other = self._entries[name].plugin
            raise PluginError(
                f"{self.kind} {name!r} is registered twice: by plugin {other!r} and by plugin {plugin!r}"
            )
        self._entries[name] = Entry(self.kind, name, factory, plugin, description, dict(info))

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            known = ", ".join(sorted(self._entries)) or "(none)"
            close = difflib.get_close_matches(str(name), list(self._entries), n=1)
            hint = f"did you mean {close[0]!r}?" if close else None
            raise UnknownNameError(f"unknown {self.kind} {name!r}; available: {known}", hint=hint) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)
