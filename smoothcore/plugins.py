"""The plugin manager: built-in plugin modules first, then third-party entry points, through the same hooks.

Built-in plugins are imported by module name (no installed entry-point metadata is needed, so an offline
``pip install --no-deps -e .`` works). Third-party plugins come from the ``smoothcore`` entry-point group. The
environment variable ``SMOOTHCORE_LOAD_PLUGINS`` restricts which third-party plugins load: a comma-separated list
of entry-point names, or an empty string for none (useful in tests and for reproducible runs).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import dataclass
from functools import partial
from typing import Any

import pluggy

from smoothcore import hookspecs
from smoothcore.errors import PluginError, SmoothcoreError
from smoothcore.registry import Registry

ENTRY_POINT_GROUP = "smoothcore"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "smoothcore_plugins.uniform",
    "smoothcore_plugins.splitting",
    "smoothcore_plugins.baselines",
    "smoothcore_plugins.certificates",
    "smoothcore_plugins.box",
    "smoothcore_plugins.classifiers",
    "smoothcore_plugins.datasets",
    "smoothcore_plugins.denoising",
    "smoothcore_plugins.objectives",
    "smoothcore_plugins.attacks",
)

KINDS: dict[str, str] = {
    "noise": "register_noises",
    "certificate": "register_certificates",
    "classifier": "register_classifiers",
    "denoiser": "register_denoisers",
    "dataset": "register_datasets",
    "objective": "register_training_objectives",
    "attack": "register_attacks",
}


@dataclass
class Components:
    """Everything the loaded plugins registered, one registry per kind."""

    manager: pluggy.PluginManager
    registries: dict[str, Registry]

    def __getitem__(self, kind: str) -> Registry:
        return self.registries[kind]


_components: Components | None = None


def _allowed_entry_points() -> set[str] | None:
    value = os.environ.get("SMOOTHCORE_LOAD_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def third_party_plugins() -> bool:
    """Whether an installed (and allowed: SMOOTHCORE_LOAD_PLUGINS) third-party plugin could add components or
    commands (found from entry-point metadata alone, without importing anything)."""
    allowed = _allowed_entry_points()
    names = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return bool(names if allowed is None else names & allowed)


def build_manager(extra_plugins: tuple[Any, ...] = ()) -> pluggy.PluginManager:
    """A plugin manager with the built-in plugins, the allowed entry points, and ``extra_plugins`` (objects or
    modules, registered under their ``__name__``)."""
    pm = pluggy.PluginManager("smoothcore")
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        module = importlib.import_module(module_name)
        pm.register(module, name=module_name)
    allowed = _allowed_entry_points()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and ep.name not in allowed:
            continue
        if pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party package must not take the tool down silently
            raise PluginError(
                f"plugin {ep.name!r} ({ep.value}) failed to import: {exc!r}",
                hint="fix or uninstall it; SMOOTHCORE_LOAD_PLUGINS='' runs smoothcore without third-party plugins",
            ) from exc
        _register(pm, plugin, ep.name)
    if allowed is not None:
        installed = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
        missing = sorted(allowed - installed)
        if missing:
            raise PluginError(
                f"SMOOTHCORE_LOAD_PLUGINS names plugins that are not installed: {', '.join(missing)}",
                hint=f"installed entry points in group {ENTRY_POINT_GROUP!r}: {', '.join(sorted(installed)) or '(none)'}",
            )
    for plugin in extra_plugins:
        if pm.is_registered(plugin):  # already loaded through its entry point
            continue
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        _register(pm, plugin, name)
    try:  # a @hookimpl whose name is no hook (a typo such as register_noise) would otherwise be ignored silently
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"plugin {pm.get_name(exc.plugin) or exc.plugin!r} does not fit smoothcore's hooks: {exc}",
            hint=f"the hooks are {', '.join(sorted(HOOKS))} (smoothcore/hookspecs.py)",
        ) from None
    return pm


HOOKS = (*KINDS.values(), "register_commands")


def _register(pm: pluggy.PluginManager, plugin: Any, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"plugin {name!r} does not fit smoothcore's hooks: {exc}",
            hint="each hook takes the argument named in smoothcore/hookspecs.py (register, or cli)",
        ) from None
    except ValueError as exc:  # the same module under another name, or another module under a taken name
        raise PluginError(f"plugin {name!r} could not be registered: {exc}") from None


def collect(pm: pluggy.PluginManager) -> Components:
    """Call every ``register_*`` hook of every plugin with a ``register`` callback bound to that plugin."""
    registries = {kind: Registry(kind) for kind in KINDS}
    for kind, hook_name in KINDS.items():
        hook = getattr(pm.hook, hook_name)
        for impl in reversed(hook.get_hookimpls()):  # registration order
            register = partial(registries[kind].add, plugin=impl.plugin_name)
            try:
                impl.function(register=register)
            except SmoothcoreError:
                raise
            except Exception as exc:
                raise PluginError(f"plugin {impl.plugin_name!r} raised in {hook_name}: {exc!r}") from exc
    return Components(pm, registries)


def components() -> Components:
    """The process-wide components, loaded on first use."""
    global _components
    if _components is None:
        _components = collect(build_manager())
    return _components


def use_plugins(*extra_plugins: Any) -> Components:
    """Reload the components with ``extra_plugins`` added (for tests and notebooks); returns them."""
    global _components
    _components = collect(build_manager(tuple(extra_plugins)))
    return _components


def snapshot() -> Components | None:
    """The loaded components (or None), to hand back to :func:`restore` after a temporary :func:`use_plugins`."""
    return _components


def restore(saved: Components | None) -> None:
    global _components
    _components = saved


def reset() -> None:
    """Forget the loaded components; the next use reloads them."""
    global _components
    _components = None


def registry(kind: str) -> Registry:
    return components()[kind]


def plugin_summary() -> list[dict[str, Any]]:
    """One row per plugin: its name, where it comes from, and what it registers, by kind."""
    comps = components()
    rows: dict[str, dict[str, Any]] = {}
    builtin = set(DEFAULT_PLUGINS)
    for name, plugin in comps.manager.list_name_plugin():
        rows[name] = {
            "plugin": name,
            "builtin": name in builtin,
            "module": getattr(plugin, "__name__", type(plugin).__name__),
            **{kind: [] for kind in KINDS},
        }
    for kind, reg in comps.registries.items():
        for entry in reg:
            rows.setdefault(
                entry.plugin,
                {"plugin": entry.plugin, "builtin": False, "module": "?", **{k: [] for k in KINDS}},
            )
            rows[entry.plugin][kind].append(entry.name)
    commands = plugin_commands()
    for name, row in rows.items():
        row["command"] = commands.get(name, [])
    return list(rows.values())


def plugin_commands() -> dict[str, list[str]]:
    """The CLI commands each plugin adds through ``register_commands`` (collected on a scratch click group)."""
    import click

    out: dict[str, list[str]] = {}
    for impl in components().manager.hook.register_commands.get_hookimpls():
        group = click.Group()
        try:
            impl.function(cli=group)
        except Exception as exc:
            raise PluginError(f"plugin {impl.plugin_name!r} raised in register_commands: {exc!r}") from exc
        out[impl.plugin_name] = sorted(group.commands)
    return out
