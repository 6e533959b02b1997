"""A test kit for authors of noise plugins: one base class, a full pytest suite.

Subclass :class:`NoisePluginSuite` in your plugin's tests under a name pytest collects (``Test...``) and say
which noise to check::

    # tests/test_my_noise.py
    import my_plugin
    from smoothcore.testing import NoisePluginSuite

    class TestMyNoise(NoisePluginSuite):
        noise_name = "my-noise"      # the name your plugin registers
        sigma = 0.5                  # a scale at which the toy classifiers get certified radii
        plugin = my_plugin           # registered for the tests when its entry point is not loaded

Every ``test_*`` method then runs against your noise:

- it is registered, builds a :class:`smoothcore.Noise` whose declared capabilities are consistent (see
  :mod:`smoothcore.noises`), records JSON parameters naming it, has a known norm;
- ``sample`` keeps shape, dtype (float32 and float64) and device (the CPU, and CUDA when available), does not
  modify its input, and is a function of the generator: the same seed gives the same draws, another seed
  others;
- bad scales (``sigma`` 0, negative, NaN, infinite) and a bad ``dim`` raise :class:`smoothcore.ConfigError`,
  inputs outside ``[0, 1]`` raise :class:`smoothcore.DataError`;
- noises that declare ``monte_carlo_certificate``: ``radius`` is 0 at ``p_lower = 1/2``, never positive below
  it, non-decreasing above it, and returns a float, a numpy array or a tensor for the same input kind;
- exact noises: ``draws(x, start, stop)`` has shape ``(batch, stop - start, *image)`` and agrees with full
  enumeration, training draws (``sample``) follow the enumerated distribution (a chi-square test), and the
  exact certificate from counts predicts the top class with a radius that shrinks as the margin does;
- the audit (:mod:`smoothcore.audit`) finds no perturbation inside the certified radii that changes the
  smoothed prediction of two toy classifiers (one that reads a single pixel, one that thresholds the mean
  brightness), and they get some radius > 0, so the audit checks something.

Checks that do not apply to the noise (the exact ones for a Monte-Carlo noise, the radius for an exact noise
without one) are reported as skipped, with the reason.

Class attributes tune the suite: ``sigma``/``lambd``/``params`` (how the noise is built), ``image_shape``,
``bad_sigmas``, ``dtypes``, ``devices`` (default: the CPU, and ``cuda`` when available), ``seed_sensitive``,
``mc_n``/``mc_alpha`` (Monte-Carlo certification of the toys) and ``audit_config``.

Importing this module has no side effects: it does not import pytest, register plugins or touch global state.
Each test saves the loaded plugins, registers ``plugin`` only when ``noise_name`` is missing, and restores
them.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

import numpy as np
import torch
from torch import nn

from smoothcore.audit import AuditConfig, audit
from smoothcore.certify import SmoothedClassifier
from smoothcore.errors import ConfigError, DataError
from smoothcore.noises import ExactNoise, Noise, make_noise
from smoothcore.testing_objectives import ObjectivePluginSuite

__all__ = ["FirstPixelThreshold", "MeanThreshold", "NoisePluginSuite", "ObjectivePluginSuite", "toy_images"]


class FirstPixelThreshold(nn.Module):
    """Toy base classifier: class 1 when the first noisy pixel is above ``threshold``, else class 0."""

    def __init__(self, threshold: float = 0.5, steepness: float = 20.0) -> None:
        super().__init__()
        self.threshold, self.steepness = threshold, steepness

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        v = z.reshape(z.shape[0], -1)[:, 0]
        return torch.stack([self.threshold - v, v - self.threshold], dim=1) * self.steepness


class MeanThreshold(FirstPixelThreshold):
    """Toy base classifier: class 1 when the mean noisy pixel value is above ``threshold``, else class 0."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        v = z.reshape(z.shape[0], -1).mean(dim=1)
        return torch.stack([self.threshold - v, v - self.threshold], dim=1) * self.steepness


def toy_images(shape: tuple[int, ...], levels: list[int], *, seed: int = 0) -> torch.Tensor:
    """Images on the 1/255 grid whose first pixel and mean brightness sit at ``levels`` (grey levels
    0..255)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for level in levels:
        spread = torch.randint(-20, 21, shape, generator=g)
        img = (torch.full(shape, level) + spread).clamp(0, 255)
        img.view(-1)[0] = level
        out.append(img)
    return torch.stack(out).float() / 255.0


class NoisePluginSuite:
    """Base class of the plugin test suite (see the module docstring). Not collected by pytest itself: its
    name does not start with ``Test``."""

    noise_name: str = ""
    sigma: float | None = 0.5
    lambd: float | None = None
    params: dict[str, Any] = {}
    plugin: Any = None
    image_shape: tuple[int, ...] = (1, 4, 4)
    bad_sigmas: tuple[Any, ...] = (0.0, -0.5, float("nan"), float("inf"))
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)
    devices: tuple[str, ...] | None = None
    seed_sensitive: bool = True
    mc_n: int = 2000
    mc_alpha: float = 0.001
    audit_config: AuditConfig = AuditConfig(budget=200, n_search=128, n_test=1000, alpha=0.01)
    toy_levels: tuple[int, ...] = (25, 60, 195, 230)

    # -- fixtures without pytest: setup and teardown methods -------------------------------------------------
    def setup_method(self, method: Any = None) -> None:
        import smoothcore.plugins as plugins

        if not self.noise_name:
            raise AssertionError(f"{type(self).__name__} must set noise_name, the name the plugin registers")
        self._saved_components = plugins.snapshot()
        if self.plugin is not None and self.noise_name not in plugins.registry("noise"):
            plugins.use_plugins(self.plugin)

    def teardown_method(self, method: Any = None) -> None:
        import smoothcore.plugins as plugins

        plugins.restore(getattr(self, "_saved_components", None))

    # -- helpers ---------------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(np.prod(self.image_shape))

    def all_devices(self) -> tuple[str, ...]:
        if self.devices is not None:
            return tuple(self.devices)
        return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)

    def make(self, **overrides: Any) -> Noise:
        """The noise under test, built through the registry as ``smoothcore.noise`` builds it."""
        kwargs: dict[str, Any] = {
            "sigma": self.sigma,
            "lambd": self.lambd,
            "dim": self.dim,
            "seed": 0,
            "device": "cpu",
            **self.params,
        }
        kwargs.update(overrides)
        name = kwargs.pop("name", self.noise_name)
        return make_noise(name, **kwargs)

    def images(
        self, batch: int = 5, *, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
    ) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return (torch.randint(0, 256, (batch, *self.image_shape), generator=g).to(dtype) / 255.0).to(device)

    @staticmethod
    def generator(seed: int, device: str) -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(seed)
        return g

    @staticmethod
    def skip(reason: str) -> NoReturn:
        """Report the calling test as skipped (pytest is imported only here, when a test runs)."""
        import pytest

        pytest.skip(reason)

    # -- what every noise must do ----------------------------------------------------------------------------
    def test_is_registered_and_builds_a_noise(self) -> None:
        from smoothcore.plugins import registry

        assert self.noise_name in registry("noise"), f"no plugin registers the noise {self.noise_name!r}"
        noise = self.make()
        assert isinstance(noise, Noise), f"the factory built a {type(noise).__name__}, not a smoothcore Noise"
        params = noise.params()
        assert params.get("name") == self.noise_name, (
            f"params()['name'] must be {self.noise_name!r}, got {params.get('name')!r}"
        )
        json.dumps(params)  # recorded with every result: must be JSON
        assert noise.norm in ("l1", "l2", "linf"), f"unknown norm {noise.norm!r}"
        assert self.noise_name in repr(noise) or type(noise).__name__ in repr(noise)

    def test_sample_keeps_shape_dtype_and_device(self) -> None:
        for device in self.all_devices():
            noise = self.make(device=device)
            for dtype in self.dtypes:
                x = self.images(device=device, dtype=dtype)
                before = x.clone()
                y = noise.sample(x, self.generator(1, device))
                where = f"(device {device}, dtype {dtype})"
                assert isinstance(y, torch.Tensor) and y.shape == x.shape, f"sample changed the shape {where}"
                assert y.dtype == x.dtype, f"sample returned {y.dtype} {where}"
                assert y.device.type == torch.device(device).type, f"sample returned it on {y.device} {where}"
                assert bool(torch.isfinite(y).all()), f"sample returned NaN or Inf {where}"
                assert torch.equal(x, before), f"sample modified its input {where}"

    def test_same_generator_seed_gives_the_same_draws(self) -> None:
        for device in self.all_devices():
            noise = self.make(device=device)
            x = self.images(device=device)
            a = noise.sample(x, self.generator(7, device))
            b = noise.sample(x, self.generator(7, device))
            assert torch.equal(a, b), f"two generators with the same seed gave different draws on {device}"
            if self.seed_sensitive:
                c = noise.sample(x, self.generator(8, device))
                assert not torch.equal(a, c), f"another generator seed gave the same draws on {device}"

    def test_bad_scales_are_config_errors(self) -> None:
        for bad in self.bad_sigmas:
            try:
                self.make(sigma=bad, lambd=None)
            except ConfigError:
                continue
            raise AssertionError(f"sigma={bad!r} was accepted; the factory must raise smoothcore.ConfigError")
        for bad_dim in (0, -3, 2.5):
            try:
                self.make(dim=bad_dim)
            except ConfigError:
                continue
            raise AssertionError(f"dim={bad_dim!r} was accepted; it must raise smoothcore.ConfigError")

    def test_inputs_outside_the_unit_box_are_refused(self) -> None:
        noise = self.make()
        for value in (1.5, -0.5, float("nan")):
            bad = torch.full((1, *self.image_shape), value)
            try:
                noise.check_input(bad)
            except DataError:
                continue
            raise AssertionError(f"check_input accepted a pixel value {value}: it must raise DataError")

    # -- Monte-Carlo radius ----------------------------------------------------------------------------------
    def test_radius_is_zero_at_one_half_and_grows_with_p_lower(self) -> None:
        noise = self.make()
        if not noise.monte_carlo_certificate:
            self.skip(f"noise {self.noise_name!r} declares no Monte-Carlo radius (monte_carlo_certificate)")
        p = np.linspace(0.5, 0.999, 200)
        r = np.asarray(noise.radius(p), dtype=np.float64)
        assert r.shape == p.shape, f"radius of an array of shape {p.shape} has shape {r.shape}"
        assert np.all(np.isfinite(r)), "radius is not finite for p_lower in [1/2, 0.999]"
        assert abs(r[0]) <= 1e-9, f"radius(1/2) must be 0 (nothing certified at a coin flip), got {r[0]}"
        assert np.all(np.diff(r) >= -1e-12), "radius must not decrease as p_lower grows"
        assert r[-1] > 0, "radius(0.999) must be positive"
        below = np.asarray(noise.radius(np.linspace(0.0, 0.499, 50)), dtype=np.float64)
        assert not np.any(below > 0), "radius must never be positive below p_lower = 1/2"
        assert isinstance(noise.radius(0.8), float), "radius of a float must be a float"
        as_tensor = noise.radius(torch.tensor([0.6, 0.9], dtype=torch.float64))
        assert isinstance(as_tensor, torch.Tensor) and as_tensor.shape == (2,), "radius of a tensor: a tensor"

    # -- exact noises ----------------------------------------------------------------------------------------
    def test_draws_have_the_documented_shape_and_agree_with_enumeration(self) -> None:
        noise = self.make()
        if not noise.exact:
            self.skip(f"noise {self.noise_name!r} is not exact: it enumerates no draws")
        assert isinstance(noise, ExactNoise) and noise.num_draws >= 1
        x = self.images(batch=3)
        full = noise.draws(x, 0, noise.num_draws)
        shape = (3, noise.num_draws, *self.image_shape)
        assert full.shape == shape, f"draws(x, 0, K) has shape {tuple(full.shape)}, not {shape}"
        assert full.dtype == x.dtype and bool(torch.isfinite(full).all())
        mid = noise.num_draws // 2
        part = noise.draws(x, mid, noise.num_draws)
        assert torch.equal(part, full[:, mid:]), "draws(x, start, stop) must equal that slice of every draw"
        alone = noise.draws(x[1:2], 0, noise.num_draws)
        assert torch.equal(alone[0], full[1]), "an image's draws must not depend on the other images"

    def test_training_draws_follow_the_enumerated_distribution(self) -> None:
        from scipy.stats import chisquare

        noise = self.make()
        if not noise.exact:
            self.skip(f"noise {self.noise_name!r} is not exact: it has no enumerated distribution")
        x = self.images(batch=1)
        table = noise.draws(x, 0, noise.num_draws)[0].reshape(noise.num_draws, -1)
        distinct, which = torch.unique(table, dim=0, return_inverse=True)
        expected = torch.bincount(which, minlength=len(distinct)).double()
        n = int(min(200_000, max(4_000, 20 * noise.num_draws)))
        samples = noise.sample(x.expand(n, *self.image_shape), self.generator(3, "cpu")).reshape(n, -1)
        found = torch.full((n,), -1, dtype=torch.long)
        for i in range(0, n, 512):
            eq = (samples[i : i + 512, None, :] == distinct[None, :, :]).all(dim=2)
            hit = eq.any(dim=1)
            found[i : i + 512] = torch.where(hit, eq.float().argmax(dim=1), -1)
        missing = int((found < 0).sum())
        assert missing == 0, f"{missing} of {n} training draws are none of the enumerated draws"
        observed = torch.bincount(found, minlength=len(distinct)).double()
        if len(distinct) > 1:
            pvalue = chisquare(observed.numpy(), (expected / expected.sum() * n).numpy()).pvalue
            assert pvalue > 1e-6, (
                f"training draws do not follow the enumerated distribution (chi-square p = {pvalue:.2g})"
            )

    def test_exact_certificate_predicts_the_top_class_and_shrinks_with_the_margin(self) -> None:
        from smoothcore.certify import certify_counts

        noise = self.make()
        if not noise.exact:
            self.skip(f"noise {self.noise_name!r} is not exact: it has no exact certificate")
        k = noise.num_draws
        splits = list(range(0, k // 2 + 1, max(1, k // 40)))
        counts = torch.tensor([[k - j, j, 0] for j in splits])
        prediction, radius = certify_counts(noise, counts)
        assert prediction.tolist() == [0] * len(splits), "the exact certificate must predict the top class"
        r = radius.double().nan_to_num(-1.0).numpy()
        assert np.all(np.diff(r) <= 1e-12), "the radius must not grow as the runner-up catches up"
        assert r[0] > 0, "all draws on one class must certify a positive radius"

    # -- the audit -------------------------------------------------------------------------------------------
    def test_audit_finds_no_violation_on_toy_classifiers(self) -> None:
        noise = self.make()
        x = toy_images(self.image_shape, list(self.toy_levels))
        for model in (FirstPixelThreshold(), MeanThreshold()):
            smoothed = SmoothedClassifier(model, noise, 2, max_batch=4096)
            report = audit(smoothed, x, n0=64, n=self.mc_n, alpha=self.mc_alpha, config=self.audit_config)
            name = type(model).__name__
            assert any(im.radius > 0 for im in report.images), (
                f"no positive radius on the {name} toy: the audit checks nothing; choose a sigma at which "
                "these toys are certified"
            )
            assert not report.violations, "\n".join(
                f"{name}: image {im.index} certified to radius {im.radius:.4g} for class {im.prediction}, "
                f"but {im.violation_search} found a perturbation of norm {im.violation_norm:.4g} -> class "
                f"{im.violation_class}: {im.evidence}"
                for im in report.violations
            )
            for im in report.images if noise.exact else ():  # exact flips are recomputed, never estimated
                tight = math.isfinite(im.tightness) and im.tightness > 1.0
                assert not tight, f"{name}: a flip inside the radius that is not a violation: {im}"
