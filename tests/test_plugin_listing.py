"""`smoothcore plugins` reads the built-ins' listing from smoothcore_plugins/listing.json, which must equal what the
built-in plugins register now; with a third-party plugin installed it computes the listing live."""

from __future__ import annotations

import json

from smoothcore import plugin_listing


def test_the_stored_listing_is_what_the_built_in_plugins_register(monkeypatch):
    monkeypatch.setenv("SMOOTHCORE_LOAD_PLUGINS", "")
    from smoothcore.plugins import reset, snapshot

    saved = snapshot()
    reset()
    try:
        computed = json.loads(json.dumps(plugin_listing.live(), sort_keys=True))
    finally:
        from smoothcore.plugins import restore

        restore(saved)
    stored = json.loads(plugin_listing.stored_path().read_text())
    assert stored == computed, "stale: run `python -m smoothcore.plugin_listing --write` and commit the file"
    names = {n for kind in stored["components"].values() for n in kind}
    assert {"dssn", "ssn", "uniform", "exact", "apgd-l1", "wrn40"} <= names


def test_the_listing_is_computed_live_when_a_third_party_plugin_could_add_to_it(monkeypatch):
    import smoothcore.plugins

    monkeypatch.setattr(smoothcore.plugins, "_components", None)  # nothing loaded yet in this process
    monkeypatch.setattr(smoothcore.plugins, "third_party_plugins", lambda: False)
    _, stored = plugin_listing.listing()
    assert stored
    monkeypatch.setattr(smoothcore.plugins, "third_party_plugins", lambda: True)
    found, stored = plugin_listing.listing()
    assert not stored and any(row["plugin"] == "smoothcore_plugins.splitting" for row in found["plugins"])
