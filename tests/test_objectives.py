"""Training objectives: each loss against a hand computation on tiny inputs, the plugin kit on the built-ins and on
broken objectives, the configuration's two spellings of stability training, and resume with every objective."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

from smoothcore import ConfigError, hookimpl
from smoothcore.checkpoints import load_file
from smoothcore.noises import make_noise
from smoothcore.objectives import TrainingObjective, make_objective
from smoothcore.testing_objectives import ObjectivePluginSuite
from smoothcore.train import TrainConfig, Trainer, train_classifier
from smoothcore_plugins.objectives import consistency_loss, macer_loss, radius_surrogate
from tests.test_train import Crash, tiny_config


def softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


# -- the losses by hand ----------------------------------------------------------------------------------------
def test_consistency_loss_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 2, 4)) * 2
    y = [1, 3, 0]
    lbd, eta = 10.0, 0.5
    want = 0.0
    for i in range(3):
        p = [softmax(logits[i, j]) for j in range(2)]
        p_bar = (p[0] + p[1]) / 2
        ce = -(math.log(p[0][y[i]]) + math.log(p[1][y[i]])) / 2
        kl = sum(sum(p_bar[c] * math.log(p_bar[c] / p[j][c]) for c in range(4)) for j in range(2)) / 2
        entropy = -sum(p_bar[c] * math.log(p_bar[c]) for c in range(4))
        want += ce + lbd * kl + eta * entropy
    got = consistency_loss(torch.tensor(logits, dtype=torch.float64), torch.tensor(y), lbd, eta)
    assert float(got) == pytest.approx(want, rel=1e-9)


def test_consistency_of_identical_copies_is_cross_entropy_plus_entropy():
    logits = torch.randn(5, 1, 3).repeat(1, 3, 1)
    y = torch.tensor([0, 1, 2, 0, 1])
    ce = torch.nn.functional.cross_entropy(logits[:, 0], y, reduction="sum")
    p = logits[:, 0].softmax(1)
    entropy = -(p * p.log()).sum()
    assert float(consistency_loss(logits, y, 10.0, 0.5)) == pytest.approx(float(ce + 0.5 * entropy), rel=1e-5)


@pytest.mark.parametrize("form", ["top2", "one-sided", "probit"])
def test_macer_loss_matches_a_hand_computation(form):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 3, 3))
    y = [0, 1, 2, 1]
    beta, gamma, weight, scale = 4.0, 1.0 if form != "probit" else 8.0, 2.0, 0.7
    from statistics import NormalDist

    want = 0.0
    for i in range(4):
        soft = np.mean([softmax(logits[i, j]) for j in range(3)], axis=0)
        want += -math.log(soft[y[i]] + 1e-10)
        hard = np.mean([softmax(beta * logits[i, j]) for j in range(3)], axis=0)
        order = np.argsort(-hard)
        if order[0] != y[i]:
            continue
        p_a, p_b = hard[order[0]], hard[order[1]]
        margin = {
            "top2": p_a - p_b,
            "one-sided": 2 * p_a - 1,
            "probit": NormalDist().inv_cdf(p_a) - NormalDist().inv_cdf(p_b),
        }[form]
        if margin <= gamma:
            want += weight * scale * (gamma - margin)
    got = macer_loss(
        torch.tensor(logits, dtype=torch.float64),
        torch.tensor(y),
        form=form,
        scale=scale,
        beta=beta,
        gamma=gamma,
        weight=weight,
    )
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_macer_radius_term_is_the_certificate_of_each_noise():
    """The surrogate's scale times its margin is the noise's own radius formula at the same probabilities."""
    dssn = make_noise("dssn", sigma=0.5, dim=4)
    form, scale = radius_surrogate(dssn)
    assert form == "top2" and scale == pytest.approx(dssn.levels / 510)
    c_a, c_b = 300, 100  # exact certificate floor((c_a - c_b) / 2) / 255 versus (levels / 510) (p_a - p_b)
    assert scale * (c_a - c_b) / dssn.levels == pytest.approx(((c_a - c_b) / 2) / 255)
    for name in ("uniform", "ssn"):
        noise = make_noise(name, sigma=0.5, dim=4)
        form, scale = radius_surrogate(noise)
        assert form == "one-sided" and scale * (2 * 0.8 - 1) == pytest.approx(noise.radius(0.8))
    gauss = make_noise("gaussian", sigma=0.5, dim=4)
    assert radius_surrogate(gauss) == ("probit", 0.25)
    with pytest.raises(ConfigError, match="no radius surrogate for noise 'laplace'"):
        radius_surrogate(make_noise("laplace", sigma=0.5, dim=4))


def test_macer_default_weight_is_one_per_unit_of_margin():
    noise = make_noise("ssn", sigma=1.0, dim=4)
    objective = make_objective("macer", noise=noise)
    assert objective.weight * objective.scale == pytest.approx(1.0)
    assert objective.params() == {"draws": 16, "beta": 16.0, "gamma": 1.0, "weight": objective.weight}


# -- the kit ----------------------------------------------------------------------------------------------------
class TestKitOnPlain(ObjectivePluginSuite):
    objective_name = "plain"


class TestKitOnStability(ObjectivePluginSuite):
    objective_name = "stability"


class TestKitOnConsistency(ObjectivePluginSuite):
    objective_name = "consistency"
    params = {"m": 3}


class TestKitOnMacer(ObjectivePluginSuite):
    objective_name = "macer"
    params = {"draws": 4, "beta": 2.0}


class MeanCrossEntropy(TrainingObjective):
    """Averages over the batch instead of summing."""

    def __init__(self, *, noise):
        self.noise = noise

    def loss(self, forward, noisy, x, y):
        logits = forward(noisy(x))
        return torch.nn.functional.cross_entropy(logits, y), logits


class GlobalNoise(MeanCrossEntropy):
    """Draws its own noise from the global generator."""

    def loss(self, forward, noisy, x, y):
        logits = forward(x + 0.1 * torch.rand_like(x))
        return torch.nn.functional.cross_entropy(logits, y, reduction="sum"), logits


def broken_plugin(name, cls):
    @hookimpl
    def register_training_objectives(register):
        register(name, cls)

    return types.SimpleNamespace(
        __name__=f"broken_{name}", register_training_objectives=register_training_objectives
    )


@pytest.mark.parametrize(
    ("cls", "check", "message"),
    [
        (MeanCrossEntropy, "test_loss_is_summed_over_rows", "not the sum of its halves"),
        (GlobalNoise, "test_draws_only_through_noisy_and_as_declared", "global torch generator"),
    ],
)
def test_the_kit_fails_broken_objectives(cls, check, message):
    suite = type(
        "Suite", (ObjectivePluginSuite,), {"objective_name": "broken", "plugin": broken_plugin("broken", cls)}
    )()
    suite.setup_method()
    try:
        with pytest.raises(AssertionError, match=message):
            getattr(suite, check)()
    finally:
        suite.teardown_method()


# -- configuration ----------------------------------------------------------------------------------------------
def test_stability_flag_and_objective_are_the_same_training(tiny_idx_dir, tmp_path):
    a = tiny_config(tiny_idx_dir, epochs=1, stability=True)
    b = tiny_config(tiny_idx_dir, epochs=1, objective="stability")
    train_classifier(a, tmp_path / "a")
    train_classifier(b, tmp_path / "b")
    assert a.to_dict() == b.to_dict()
    assert a.objective == "stability" and a.objective_params == {"weight": 6.0}
    wa = load_file(tmp_path / "a" / "checkpoint.pt")
    wb = load_file(tmp_path / "b" / "checkpoint.pt")
    assert wa["objective"] == {"name": "stability", "weight": 6.0}
    assert all(torch.equal(wa["state_dict"][k], wb["state_dict"][k]) for k in wa["state_dict"])


def test_a_run_recorded_before_objectives_resumes_as_stability(tiny_idx_dir, tmp_path):
    import json

    cfg = tiny_config(tiny_idx_dir, epochs=2, stability=True)
    with pytest.raises(Crash):
        Trainer(cfg, tmp_path / "run").run(on_epoch=lambda row: (_ for _ in ()).throw(Crash()))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    for key in ("objective", "objective_params"):
        del config[key]  # as an earlier version wrote it
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    log = Trainer(tiny_config(tiny_idx_dir, epochs=2, stability=True), tmp_path / "run").run(resume=True)
    assert log["epoch"].tolist() == [1, 2]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"objective": "nope"}, "unknown objective 'nope'"),
        ({"objective": "macer", "objective_params": {"draws": 0}}, "draws must be a positive integer"),
        ({"objective": "consistency", "objective_params": {"lbd": -1}}, "lbd must be a finite number >= 0"),
        ({"objective": "consistency", "objective_params": {"mm": 2}}, "takes no parameter 'mm'"),
        ({"objective": "macer", "noise": "laplace", "sigma": 0.5}, "no radius surrogate"),
        ({"objective": "consistency", "noise": "none", "sigma": None}, "given with --noise none"),
        ({"objective": "macer", "stability": True}, "--stability and --objective macer"),
    ],
)
def test_bad_objectives_are_config_errors_before_anything_is_written(
    tiny_idx_dir, tmp_path, overrides, message
):
    with pytest.raises(ConfigError, match=message):
        Trainer(tiny_config(tiny_idx_dir, **overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# -- training ---------------------------------------------------------------------------------------------------
OBJECTIVES = {
    "consistency": {"m": 2},
    "macer": {"draws": 2, "beta": 4.0},
}


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_resumed_training_with_each_objective_matches_an_uninterrupted_run(tiny_idx_dir, tmp_path, objective):
    def cfg() -> TrainConfig:
        return tiny_config(
            tiny_idx_dir, epochs=2, objective=objective, objective_params=OBJECTIVES[objective]
        )

    train_classifier(cfg(), tmp_path / "straight")

    def crash_after_first(row):
        if row["epoch"] == 1:
            raise Crash

    with pytest.raises(Crash):
        Trainer(cfg(), tmp_path / "resumed").run(on_epoch=crash_after_first)
    Trainer(cfg(), tmp_path / "resumed").run(resume=True)
    a = load_file(tmp_path / "straight" / "checkpoint.pt")["state_dict"]
    b = load_file(tmp_path / "resumed" / "checkpoint.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("objective", ["consistency", "macer"])
def test_each_objective_learns_real_data(fashion_dir, tmp_path, objective):
    """One epoch on 3,000 real Fashion-MNIST images under DSSN noise beats chance by far."""
    cfg = tiny_config(
        fashion_dir,
        epochs=1,
        train_limit=3000,
        eval_limit=500,
        batch_size=64,
        lr=0.05,
        sigma=0.5,
        objective=objective,
        objective_params={"macer": {"draws": 4}}.get(objective, {}),
    )
    log = train_classifier(cfg, tmp_path / "run")
    assert log["test_noisy_acc"].iloc[-1] > 0.5


def test_objectives_train_behind_a_denoiser(tiny_idx_dir, tmp_path):
    from smoothcore_denoisers.training import DenoiserConfig, train_denoiser

    train_denoiser(
        DenoiserConfig(
            dataset="fashion-mnist",
            data_dir=str(tiny_idx_dir),
            arch="dncnn",
            arch_params={"depth": 3, "channels": 8},
            eval_limit=16,
            noise="dssn",
            sigma=0.25,
            epochs=1,
            batch_size=16,
        ),
        tmp_path / "den",
    )
    log = train_classifier(
        tiny_config(
            tiny_idx_dir,
            epochs=1,
            objective="consistency",
            denoiser=str(tmp_path / "den" / "denoiser.pt"),
        ),
        tmp_path / "run",
    )
    assert np.isfinite(log["train_loss"]).all()


def test_the_documented_example_objective_passes_the_kit():
    """docs/plugins.md's example objective, executed as written, passes every check of the kit."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    code = text.split("## Training objectives")[1].split("```python")[1].split("```")[0]
    namespace: dict = {}
    exec(code, namespace)
    plugin = types.SimpleNamespace(
        __name__="doc_example", register_training_objectives=namespace["register_training_objectives"]
    )
    suite_cls = type("Suite", (ObjectivePluginSuite,), {"objective_name": "smoothed-ce", "plugin": plugin})
    checks = [name for name in dir(suite_cls) if name.startswith("test_")]
    assert len(checks) == 5
    for name in checks:
        suite = suite_cls()
        suite.setup_method()
        try:
            getattr(suite, name)()
        finally:
            suite.teardown_method()
