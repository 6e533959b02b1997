"""The kit for plugin authors (smoothcore.testing) and a third-party plugin package, end to end.

The kit passes on every built-in noise and fails on broken ones; the example package
examples/smoothcore-pareto, installed into a temporary folder as a user would install it, is found through its
entry point and used by the command line (train, certify, audit) and passes its own kit-based tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from smoothcore import hookimpl
from smoothcore.testing import NoisePluginSuite
from smoothcore_plugins.splitting import DerandomizedSplittingNoise
from smoothcore_plugins.uniform import UniformNoise
from tests.conftest import find_uv

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "smoothcore-pareto"


# -- the kit passes on the built-in noises -------------------------------------------------------------------
class TestKitOnDssn(NoisePluginSuite):
    noise_name = "dssn"


class TestKitOnSsn(NoisePluginSuite):
    noise_name = "ssn"


class TestKitOnUniform(NoisePluginSuite):
    noise_name = "uniform"


class TestKitOnLaplace(NoisePluginSuite):
    noise_name = "laplace"


class TestKitOnGaussian(NoisePluginSuite):
    noise_name = "gaussian"


# -- the kit fails on broken noises --------------------------------------------------------------------------
class InflatedUniform(UniformNoise):
    """Claims four times the uniform radius: unsound."""

    def radius(self, p_lower):
        return 4 * super().radius(p_lower)


class UnseededUniform(UniformNoise):
    """Ignores the generator: draws cannot be reproduced."""

    def sample(self, x, generator=None):
        return super().sample(x, None)


class CarelessUniform(UniformNoise):
    """Accepts any scale without checking it."""

    def __init__(self, *, sigma=None, lambd=None, dim, seed=0, device="cpu"):
        super().__init__(sigma=1.0, dim=dim, seed=seed, device=device)
        self.lambd = sigma


class HalfDssn(DerandomizedSplittingNoise):
    """Trains on the first half of its draws only: training and certification disagree."""

    def sample(self, x, generator=None):
        k = torch.randint(self.levels // 2, (x.shape[0],), generator=generator, device=x.device)
        s = self.offsets(k, x.device)
        return self._split(x.reshape(x.shape[0], -1), s).reshape(x.shape).to(x.dtype)


class Float32Uniform(UniformNoise):
    """Returns float32 whatever the input's dtype."""

    def sample(self, x, generator=None):
        return super().sample(x, generator).float()


class ExactOnlyDssn(DerandomizedSplittingNoise):
    """DSSN without its Monte-Carlo radius: certified by its exact certificate only."""

    monte_carlo_certificate = False


def suite_for(cls) -> NoisePluginSuite:
    """The kit on ``cls``, registered as ``mutant`` by a plugin of its own."""
    mod = types.ModuleType(f"mutant_{cls.__name__}")
    mod.register_noises = hookimpl(lambda register: register("mutant", cls))
    suite = type("Suite", (NoisePluginSuite,), {"noise_name": "mutant", "plugin": mod})()
    suite.setup_method()
    return suite


@pytest.mark.parametrize(
    "cls,test,message",
    [
        (InflatedUniform, "test_audit_finds_no_violation_on_toy_classifiers", "found a perturbation of norm"),
        (UnseededUniform, "test_same_generator_seed_gives_the_same_draws", "same seed gave different draws"),
        (CarelessUniform, "test_bad_scales_are_config_errors", "sigma=0.0 was accepted"),
        (HalfDssn, "test_training_draws_follow_the_enumerated_distribution", "do not follow the enumerated"),
        (Float32Uniform, "test_sample_keeps_shape_dtype_and_device", "sample returned torch.float32"),
    ],
)
def test_the_kit_fails_a_broken_noise_and_says_why(cls, test, message):
    suite = suite_for(cls)
    try:
        with pytest.raises(AssertionError, match=message):
            getattr(suite, test)()
    finally:
        suite.teardown_method()


@pytest.mark.parametrize(
    "cls,test,reason",
    [
        (UniformNoise, "test_draws_have_the_documented_shape_and_agree_with_enumeration", "is not exact"),
        (UniformNoise, "test_training_draws_follow_the_enumerated_distribution", "is not exact"),
        (
            UniformNoise,
            "test_exact_certificate_predicts_the_top_class_and_shrinks_with_the_margin",
            "not exact",
        ),
        (ExactOnlyDssn, "test_radius_is_zero_at_one_half_and_grows_with_p_lower", "no Monte-Carlo radius"),
    ],
)
def test_a_kit_check_that_does_not_apply_is_reported_as_skipped_not_passed(cls, test, reason):
    suite = suite_for(cls)
    try:
        with pytest.raises(pytest.skip.Exception, match=f"noise 'mutant' .*{reason}"):
            getattr(suite, test)()
    finally:
        suite.teardown_method()


# -- a third-party package, installed ------------------------------------------------------------------------
def install(source: Path, target: Path) -> None:
    """Install ``source`` into the folder ``target`` without network access: uv with the environment's own
    setuptools (no build isolation, no dependencies)."""
    uv = find_uv()
    cmd = [
        uv,
        "pip",
        "install",
        "--offline",
        "--no-deps",
        "--no-build-isolation",
        "--quiet",
        "--python",
        sys.executable,
        "--target",
        str(target),
        str(source),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, f"installing {source.name} failed:\n{out.stdout}\n{out.stderr}"


@pytest.fixture(scope="module")
def pareto_site(tmp_path_factory) -> tuple[Path, Path]:
    """The example package copied (its tests too) and installed into a site folder of its own."""
    base = tmp_path_factory.mktemp("pareto")
    source = base / "smoothcore-pareto"
    skip = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__")
    shutil.copytree(EXAMPLE, source, ignore=skip)
    site = base / "site"
    install(source, site)
    return site, source


# One fresh interpreter with the installed package on its path runs the command line the way a user
# would (through click's runner, to start Python once): first it checks that importing the kit changes
# nothing, then it loads the plugin through its entry point under each SMOOTHCORE_LOAD_PLUGINS setting, lists
# the plugins, trains, certifies and audits with the plugin's noise, and finally runs the package's own
# (kit-based) tests against the installed copy. It writes what it saw as JSON; the tests below read it.
DRIVER = r"""
import json, os, sys, time
t0 = time.perf_counter()
data_dir, out, report, source = sys.argv[1:5]
seen = {"seconds": {}}
import smoothcore.plugins as plugins
import smoothcore.testing
seen["kit_imported_pytest"] = "pytest" in sys.modules
seen["kit_loaded_plugins"] = plugins._components is not None
seen["seconds"]["import"] = time.perf_counter() - t0
seen["loaded"] = []
for value in ("pareto", "", None):
    if value is None:
        os.environ.pop("SMOOTHCORE_LOAD_PLUGINS", None)
    else:
        os.environ["SMOOTHCORE_LOAD_PLUGINS"] = value
    seen["loaded"].append("pareto" in plugins.use_plugins()["noise"])
os.environ["SMOOTHCORE_LOAD_PLUGINS"] = "pareto"
plugins.reset()
from click.testing import CliRunner
from smoothcore.cli import cli
def invoke(name, *args):
    t = time.perf_counter()
    r = CliRunner().invoke(cli, list(args))
    seen["seconds"][name] = time.perf_counter() - t
    seen[name] = {"code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr,
                  "error": None if isinstance(r.exception, (SystemExit, type(None))) else repr(r.exception)}
invoke("plugins", "plugins", "--json")
invoke("train", "train-classifier", "--data-dir", data_dir, "--noise", "pareto", "--sigma", "0.5",
       "--epochs", "1", "--train-limit", "64", "--eval-limit", "32", "--batch-size", "32", "--out", out)
invoke("certify", "certify", out, "--data-dir", data_dir, "--limit", "4", "--n0", "16", "--n", "300",
       "--alpha", "0.01")
invoke("audit", "audit", out, "--data-dir", data_dir, "--limit", "2", "--budget", "100", "--n-test", "500")
import contextlib, io, pytest
buffer = io.StringIO()
with contextlib.redirect_stdout(buffer):
    code = pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", source,
                        "-c", os.path.join(source, "pyproject.toml"), os.path.join(source, "tests")])
seen["pytest"] = {"code": int(code), "output": buffer.getvalue()[-4000:]}
seen["seconds"]["total"] = time.perf_counter() - t0
with open(report, "w") as f:
    json.dump(seen, f)
"""


def run(args: list[str], site: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("SMOOTHCORE_LOAD_PLUGINS", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=site, timeout=600
    )


@pytest.fixture(scope="module")
def driven(pareto_site, tmp_path_factory) -> tuple[dict, Path]:
    from tests.conftest import write_idx

    site, source = pareto_site
    base = tmp_path_factory.mktemp("driven")
    data = base / "tiny-fmnist"
    data.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 64), ("t10k", 32)):
        write_idx(data / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(data / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    script, report, out = base / "driver.py", base / "seen.json", base / "run"
    script.write_text(DRIVER)
    result = run([str(script), str(data), str(out), str(report), str(source)], site)
    assert result.returncode == 0 and report.is_file(), result.stdout[-2000:] + result.stderr[-4000:]
    seen = json.loads(report.read_text())
    print("driver seconds:", {k: round(v, 1) for k, v in seen["seconds"].items()})
    return seen, out


def test_importing_the_kit_imports_no_pytest_and_loads_no_plugins(driven):
    seen, _ = driven
    assert seen["kit_imported_pytest"] is False and seen["kit_loaded_plugins"] is False


def test_the_installed_plugin_is_found_through_its_entry_point(pareto_site, driven):
    site, _ = pareto_site
    seen, _ = driven
    assert (site / "smoothcore_pareto" / "__init__.py").is_file()
    assert seen["loaded"] == [True, False, True], "SMOOTHCORE_LOAD_PLUGINS = pareto, empty, unset"
    assert seen["plugins"]["code"] == 0, seen["plugins"]
    data = json.loads(seen["plugins"]["stdout"])
    assert data["components"]["noise"]["pareto"]["plugin"] == "pareto"
    row = next(r for r in data["plugins"] if r["plugin"] == "pareto")
    assert row["module"] == "smoothcore_pareto" and not row["builtin"] and row["noise"] == ["pareto"]


def test_the_command_line_trains_certifies_and_audits_with_the_plugin_noise(driven):
    seen, out = driven
    for step in ("train", "certify", "audit"):
        assert seen[step]["error"] is None, f"{step}: {seen[step]['error']}"
    assert seen["train"]["code"] == 0, seen["train"]["stderr"]
    assert "ParetoNoise(sigma=0.5" in seen["train"]["stderr"] and (out / "checkpoint.pt").is_file()
    assert json.loads((out / "config.json").read_text())["noise"] == "pareto"
    assert seen["certify"]["code"] == 0, seen["certify"]["stderr"]
    table = pd.read_csv(out / "certify_pareto_sigma0.5_n300_alpha0.01.csv")
    assert len(table) == 4 and set(table["norm"]) == {"l1"} and set(table["certificate"]) == {"standard"}
    meta = json.loads((out / "certify_pareto_sigma0.5_n300_alpha0.01.json").read_text())
    assert meta["noise"] == {"name": "pareto", "sigma": 0.5, "tail": 3.0, "scale": 0.5, "seed": 0}
    audit = seen["audit"]
    if (table["prediction"] == -1).all():
        assert audit["code"] == 2 and "no certified" in audit["stderr"]
    else:
        assert audit["code"] == 0, audit["stdout"] + audit["stderr"]
        assert "Monte-Carlo noise: a violation is" in audit["stdout"]
        assert (out / "audit_pareto_sigma0.5_n300_alpha0.01.csv").is_file()


def test_the_plugin_passes_its_own_kit_based_tests(driven):
    seen, _ = driven
    assert seen["pytest"]["code"] == 0, seen["pytest"]["output"]
    assert " passed" in seen["pytest"]["output"] and "failed" not in seen["pytest"]["output"]
