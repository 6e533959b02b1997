"""What ``smoothcore plugins`` shows: every plugin and what it registers, and which certificate applies to which noise.

Computing it means importing every plugin (and so torch) and building every noise, about 9 s on a 2-core machine.
When only the built-in plugins are installed (no third-party entry point is allowed) and none are loaded yet in
this process (a notebook's ``use_plugins`` adds its own), the listing is read from
``smoothcore_plugins/listing.json`` instead, which is this module's output for the built-ins, written by
``python -m smoothcore.plugin_listing --write``; ``tests/test_plugin_listing.py`` fails when the file no longer
equals what the built-ins register, so it cannot go stale unnoticed. With a third-party plugin installed the
listing is computed live. This module imports neither torch nor the plugins until it computes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def stored_path() -> Path:
    """Where the built-ins' listing ships: in the ``smoothcore_plugins`` package (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("smoothcore_plugins")
    assert spec is not None and spec.submodule_search_locations, "smoothcore_plugins is part of smoothcore"
    return Path(next(iter(spec.submodule_search_locations))) / "listing.json"


def live() -> dict[str, Any]:
    """The listing of the plugins loaded now (imports them all and builds every noise)."""
    from smoothcore.catalog import PROBE_SIGMA, certificate_coverage
    from smoothcore.plugins import KINDS, components, plugin_summary

    comps = components()
    coverage, failed = certificate_coverage()
    return {
        "plugins": plugin_summary(),
        "components": {
            kind: {e.name: {"plugin": e.plugin, "description": e.description} for e in comps[kind]}
            for kind in KINDS
        },
        "certificates": [
            {"certificate": c.name, "kind": c.kind, "applies to": c.noises, "plugin": c.plugin}
            for c in coverage
        ],
        "not probed": {"sigma": PROBE_SIGMA, "noises": dict(sorted(failed.items()))},
    }


def listing() -> tuple[dict[str, Any], bool]:
    """The listing, and whether it was read from the stored file (only built-in plugins) or computed live."""
    from smoothcore.plugins import snapshot, third_party_plugins

    path = stored_path()
    # plugins already loaded in this process (perhaps with use_plugins) are listed as they are
    if snapshot() is None and not third_party_plugins() and path.is_file():
        return json.loads(path.read_text()), True
    return live(), False


def write(path: Path | None = None) -> Path:
    """Store the built-ins' listing (third-party plugins left out)."""
    import os

    os.environ["SMOOTHCORE_LOAD_PLUGINS"] = ""
    path = path or stored_path()
    path.write_text(json.dumps(live(), indent=1, sort_keys=True) + "\n")
    return path


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python -m smoothcore.plugin_listing --write")
    print(f"wrote {write()}")
