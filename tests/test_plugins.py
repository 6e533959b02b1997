"""The plugin core: hooks, registry, entry points."""

from __future__ import annotations

import importlib.metadata
import types

import pytest
import torch

import smoothcore
from smoothcore import PluginError, UnknownNameError, hookimpl
from smoothcore.noises import Noise
from smoothcore.plugins import DEFAULT_PLUGINS, components, plugin_summary, registry, use_plugins


class ShiftNoise(Noise):
    """A toy third-party noise: a constant shift (deterministic)."""

    monte_carlo_certificate = True

    def __init__(self, *, sigma=None, lambd=None, dim, seed=0, device="cpu"):
        super().__init__(dim=dim, seed=seed, device=device)
        self.sigma = sigma

    def sample(self, x, generator=None):
        return x + self.sigma

    def radius(self, p_lower):
        return p_lower - 0.5


def plugin_module(name: str, **hooks) -> types.ModuleType:
    mod = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(mod, hook_name, hookimpl(fn))
    return mod


def test_builtin_plugins_register_every_kind():
    comps = components()
    assert {"uniform", "ssn", "dssn", "gaussian", "laplace"} <= set(comps["noise"].names())
    assert {"standard", "exact"} <= set(comps["certificate"].names())
    assert {"cnn", "wrn40", "wrn40-compat", "resnet110", "resnet50", "torchvision"} <= set(
        comps["classifier"].names()
    )
    assert {"fashion-mnist", "cifar10", "imagenet"} <= set(comps["dataset"].names())
    assert registry("noise").get("dssn").plugin == "smoothcore_plugins.splitting"


def test_a_third_party_plugin_registers_through_the_same_hook():
    def register_noises(register):
        register("shift", ShiftNoise, description="constant shift")

    use_plugins(plugin_module("acme_noise", register_noises=register_noises))
    noise = smoothcore.noise("shift", sigma=0.25, dim=4)
    assert torch.equal(noise.sample(torch.zeros(1, 4)), torch.full((1, 4), 0.25))
    assert registry("noise").get("shift").plugin == "acme_noise"
    row = next(r for r in plugin_summary() if r["plugin"] == "acme_noise")
    assert row["noise"] == ["shift"] and not row["builtin"]


def test_a_noise_is_named_by_the_name_it_was_registered_under():
    """The registered name is written once: the noise, its params() and its results all read it from there."""

    def register_noises(register):
        register("shift", ShiftNoise)
        register("shift-again", ShiftNoise)

    use_plugins(plugin_module("acme_noise", register_noises=register_noises))
    for name in ("shift", "shift-again"):
        noise = smoothcore.noise(name, sigma=0.25, dim=4)
        assert noise.name == name and noise.params()["name"] == name


def test_a_certificate_is_named_by_the_name_it_was_registered_under():
    from smoothcore.certificates import get_certificate
    from smoothcore_plugins.certificates import StandardCertificate

    def register_certificates(register):
        register("standard-again", StandardCertificate)

    use_plugins(plugin_module("acme_certs", register_certificates=register_certificates))
    assert get_certificate("standard-again").name == "standard-again"
    assert get_certificate("standard").name == "standard"


def test_a_noise_that_declares_no_certificate_is_an_error_saying_what_to_declare():
    """A plugin written before capabilities were declared: it implements radius but does not say so."""

    class Undeclared(ShiftNoise):
        monte_carlo_certificate = False

    def register_noises(register):
        register("undeclared", Undeclared)

    use_plugins(plugin_module("acme_old", register_noises=register_noises))
    with pytest.raises(
        PluginError, match="plugin 'acme_old' built noise 'undeclared', which declares no"
    ) as err:
        smoothcore.noise("undeclared", sigma=0.25, dim=4)
    assert "monte_carlo_certificate = True" in str(err.value)


def test_early_decisions_are_declared_by_exact_noises_only():
    class Early(ShiftNoise):
        early_decisions = True

    def register_noises(register):
        register("early", Early)

    use_plugins(plugin_module("acme_early", register_noises=register_noises))
    with pytest.raises(PluginError, match="declares early_decisions but is not an ExactNoise"):
        smoothcore.noise("early", sigma=0.25, dim=4)


def test_the_capabilities_of_the_built_in_noises_are_declared():
    declared = {
        name: (n.monte_carlo_certificate, n.exact, n.early_decisions, n.input_grid)
        for name in ("uniform", "ssn", "dssn", "gaussian", "laplace")
        for n in [smoothcore.noise(name, sigma=0.5, dim=4)]
    }
    assert declared == {
        "uniform": (True, False, False, None),
        "ssn": (True, False, False, None),
        "dssn": (True, True, True, 255),
        "gaussian": (True, False, False, None),
        "laplace": (True, False, False, None),
    }


def test_two_plugins_registering_one_name_is_an_error_naming_both():
    def register_noises(register):
        register("ssn", ShiftNoise)

    with pytest.raises(
        PluginError, match="smoothcore_plugins.splitting.*impostor|impostor.*smoothcore_plugins.splitting"
    ):
        use_plugins(plugin_module("impostor", register_noises=register_noises))


def test_a_plugin_that_raises_is_named():
    def register_noises(register):
        raise RuntimeError("boom")

    with pytest.raises(PluginError, match="broken_plugin.*boom"):
        use_plugins(plugin_module("broken_plugin", register_noises=register_noises))


def test_a_plugin_factory_returning_garbage_is_named():
    def register_noises(register):
        register("garbage", lambda **kw: 42)

    use_plugins(plugin_module("garbage_plugin", register_noises=register_noises))
    with pytest.raises(PluginError, match="garbage_plugin.*not a smoothcore Noise"):
        smoothcore.noise("garbage", sigma=1.0, dim=4)


@pytest.mark.parametrize("bad", ["", "Upper", "has space", "../x", 3])
def test_invalid_component_names_are_refused(bad):
    def register_noises(register):
        register(bad, ShiftNoise)

    with pytest.raises(PluginError, match="invalid name"):
        use_plugins(plugin_module("bad_names", register_noises=register_noises))


def test_unknown_names_list_what_exists_and_suggest_the_closest():
    with pytest.raises(UnknownNameError) as err:
        registry("classifier").get("wrn41")
    assert (
        "available:" in str(err.value)
        and "wrn40" in str(err.value)
        and "did you mean 'wrn40'" in str(err.value)
    )


class FakeEntryPoint:
    def __init__(self, name, obj=None, fail=False):
        self.name, self.value, self._obj, self._fail = name, f"{name}:plugin", obj, fail

    def load(self):
        if self._fail:
            raise ImportError("no module named acme")
        return self._obj


def test_entry_points_load_and_can_be_restricted(monkeypatch):
    def register_noises(register):
        register("shift", ShiftNoise)

    eps = [FakeEntryPoint("acme", plugin_module("acme", register_noises=register_noises))]
    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda group: eps if group == "smoothcore" else []
    )
    monkeypatch.delenv("SMOOTHCORE_LOAD_PLUGINS", raising=False)
    assert "shift" in use_plugins()["noise"]
    monkeypatch.setenv("SMOOTHCORE_LOAD_PLUGINS", "")
    assert "shift" not in use_plugins()["noise"]
    monkeypatch.setenv("SMOOTHCORE_LOAD_PLUGINS", "acme")
    assert "shift" in use_plugins()["noise"]
    monkeypatch.setenv("SMOOTHCORE_LOAD_PLUGINS", "acme,acme-typo")
    with pytest.raises(PluginError, match="(?s)not installed: acme-typo.*installed entry points.*acme"):
        use_plugins()


def test_commands_a_plugin_adds_are_listed_with_it():
    import click

    def register_commands(cli):
        @cli.command("hello")
        def hello():
            click.echo("hi")

    use_plugins(plugin_module("acme_cli", register_commands=register_commands))
    row = next(r for r in plugin_summary() if r["plugin"] == "acme_cli")
    assert row["command"] == ["hello"]


def test_an_entry_point_that_fails_to_import_is_named(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [FakeEntryPoint("acme", fail=True)])
    monkeypatch.delenv("SMOOTHCORE_LOAD_PLUGINS", raising=False)
    with pytest.raises(PluginError, match="acme.*failed to import"):
        use_plugins()


def test_builtins_load_without_entry_point_metadata(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])
    comps = use_plugins()
    assert {name for name, _ in comps.manager.list_name_plugin()} >= set(DEFAULT_PLUGINS)


class Misbehaving(ShiftNoise):
    """A third-party noise that goes wrong the way ``how`` says."""

    how = "raise"

    def sample(self, x, generator=None):
        if self.how == "raise":
            raise RuntimeError("kaboom")
        if self.how == "shape":
            return x[:1]
        return torch.full_like(x, float("nan"))


@pytest.mark.parametrize(
    "how,match",
    [
        ("raise", "failed to draw: RuntimeError: kaboom"),
        ("shape", "returned draws of shape"),
        ("nan", "NaN or infinite draws"),
    ],
)
@pytest.mark.parametrize("plugin", ["acme_broken", "smoothcore_plugins.acme"])
def test_a_noise_plugin_that_raises_or_returns_garbage_is_named_when_certifying(how, match, plugin):
    """Also under a name that looks built-in: only a noise's own finite_draws claim skips the draw check."""

    def register_noises(register):
        register("misbehaving", type(f"Misbehaving_{how}", (Misbehaving,), {"how": how}))

    use_plugins(plugin_module(plugin, register_noises=register_noises))
    noise = smoothcore.noise("misbehaving", sigma=0.1, dim=4)
    smoothed = smoothcore.SmoothedClassifier(torch.nn.Linear(4, 2), noise, 2)
    with pytest.raises(PluginError, match=f"noise 'misbehaving' \\(plugin '{plugin}'\\).*{match}"):
        smoothed.certify(torch.full((2, 4), 0.5), n0=4, n=20)


def test_a_certificate_plugin_returning_garbage_is_named():
    from smoothcore.certificates import Certificate, Certified

    class Sloppy(Certificate):
        name, kind = "sloppy", "monte-carlo"

        def applies_to(self, noise):
            return True

        def certify(self, noise, stats):
            n = stats.counts.shape[0]
            return Certified(torch.zeros(n + 2, dtype=torch.long), torch.ones(1, dtype=torch.float64), "l1")

    def register_certificates(register):
        register("sloppy", Sloppy)

    use_plugins(plugin_module("acme_certs", register_certificates=register_certificates))
    smoothed = smoothcore.SmoothedClassifier(
        torch.nn.Linear(4, 2), smoothcore.noise("uniform", sigma=0.1, dim=4), 2
    )
    with pytest.raises(
        PluginError,
        match="certificate 'sloppy' \\(plugin 'acme_certs'\\) returned prediction of shape \\(5,\\) for 3 images",
    ):
        smoothed.certify(torch.full((3, 4), 0.5), n0=4, n=20, certificate="sloppy")


def test_a_certificate_plugin_that_raises_in_applies_to_or_predicts_unknown_classes_is_named():
    from smoothcore.certificates import Certificate, Certified

    class Broken(Certificate):
        name, kind = "broken", "monte-carlo"

        def applies_to(self, noise):
            raise RuntimeError("kaboom")

        def certify(self, noise, stats):
            raise AssertionError("never reached")

    class Inventive(Certificate):
        name, kind = "inventive", "monte-carlo"

        def applies_to(self, noise):
            return True

        def certify(self, noise, stats):
            n = stats.counts.shape[0]
            return Certified(torch.full((n,), 7), torch.ones(n, dtype=torch.float64), "l1")

    def register_certificates(register):
        register("broken", Broken)
        register("inventive", Inventive)

    use_plugins(plugin_module("acme_odd", register_certificates=register_certificates))
    smoothed = smoothcore.SmoothedClassifier(
        torch.nn.Linear(4, 2), smoothcore.noise("uniform", sigma=0.1, dim=4), 2
    )
    x = torch.full((2, 4), 0.5)
    with pytest.raises(
        PluginError,
        match="certificate 'broken' \\(plugin 'acme_odd'\\) failed in applies_to: RuntimeError: kaboom",
    ):
        smoothed.certify(x, n0=4, n=20, certificate="broken")
    with pytest.raises(PluginError, match="predictions outside -1..1"):
        smoothed.certify(x, n0=4, n=20, certificate="inventive")


class NaNModel(torch.nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 3), float("nan"))


@pytest.mark.parametrize("name", ["dssn", "ssn"])
def test_a_classifier_with_nan_logits_gets_no_certificate(name):
    """argmax of NaN logits is class 0: without the check, such a model would be 'certified' with a large radius."""
    smoothed = smoothcore.SmoothedClassifier(NaNModel(), smoothcore.noise(name, sigma=0.5, dim=4), 3)
    with pytest.raises(smoothcore.ConfigError, match="NaN or infinite logits"):
        smoothed.certify(torch.full((2, 1, 2, 2), 128 / 255), n0=4, n=50)


def test_parameters_of_the_wrong_kind_are_named_before_the_factory_runs():
    import numpy as np

    from smoothcore import ConfigError

    cnn = registry("classifier").get("cnn")
    shape = {"num_classes": 10, "in_channels": 1, "image_size": 28}
    for key, value, wanted in (
        ("width", "abc", "an integer"),
        ("width", 2.5, "an integer"),
        ("width", True, "an integer"),
        ("batch_norm", 1, "true or false"),
    ):
        with pytest.raises(ConfigError, match=f"parameter '{key}' takes {wanted}, got {value!r}"):
            cnn.build(**shape, **{key: value})
    # numpy scalars are numbers and flags too (values computed with numpy reach factories from Python)
    assert cnn.build(**shape, width=np.int64(8), batch_norm=np.bool_(False)) is not None


def test_a_misspelt_hook_or_a_hook_with_other_arguments_is_an_error_naming_the_plugin():
    def register_noise(register):  # the hook is register_noises
        register("shift", ShiftNoise)

    with pytest.raises(
        PluginError, match="plugin 'typo_plugin' does not fit smoothcore's hooks.*register_noise"
    ):
        use_plugins(plugin_module("typo_plugin", register_noise=register_noise))

    def register_noises(reg):  # the hook's argument is `register`
        reg("shift", ShiftNoise)

    with pytest.raises(PluginError, match="plugin 'wrong_args' does not fit smoothcore's hooks"):
        use_plugins(plugin_module("wrong_args", register_noises=register_noises))


def test_use_plugins_skips_a_module_that_is_already_registered():
    """A notebook that installed its plugin (loaded by the entry point) and also passes the module."""

    def register_noises(register):
        register("shift", ShiftNoise)

    mod = plugin_module("twice", register_noises=register_noises)
    assert "shift" in use_plugins(mod, mod)["noise"]


def test_a_noise_factory_without_the_framework_arguments_is_the_plugins_fault():
    class Narrow(ShiftNoise):
        def __init__(self, *, sigma, dim):
            super().__init__(sigma=sigma, dim=dim)

    def register_noises(register):
        register("narrow", Narrow)

    use_plugins(plugin_module("acme_narrow", register_noises=register_noises))
    with pytest.raises(
        PluginError,
        match=r"plugin 'acme_narrow' registered noise 'narrow' with a factory that does not take 'lambd'",
    ):
        smoothcore.noise("narrow", sigma=0.5, dim=4)
