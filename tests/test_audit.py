"""The auditor: it catches planted wrong certificates, never breaks sound ones, and measures tightness."""

from __future__ import annotations

import json
import math
import types

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import smoothcore
from smoothcore import ConfigError, DataError, ExperimentError, SmoothedClassifier, hookimpl
from smoothcore.audit import AuditConfig, audit, audit_claims, audit_experiment, margin_of, steps_within
from smoothcore.certificates import EXACT, MONTE_CARLO, Certificate, Certified, get_certificate
from smoothcore.cli import cli
from smoothcore.plugins import use_plugins
from smoothcore.testing import FirstPixelThreshold
from tests.conftest import quantised


class FirstPixel(FirstPixelThreshold):
    """Class 1 when the first noisy pixel is above ``threshold``, else class 0. Under DSSN with lambda >= 1/2
    and a threshold of 1/2, class 1 wins exactly the draws whose offset lies below the pixel: every grey level
    the pixel moves changes one draw's class, so the DSSN union bound is exactly tight. Under uniform noise of
    half-width lambda, ``P(class 0) = (threshold - x_0 + lambda) / (2 lambda)`` (clipped), known exactly."""

    def __init__(self, threshold: float = 0.5, steepness: float = 10.0) -> None:
        super().__init__(threshold, steepness)


class Inflated(Certificate):
    """A deliberately wrong certificate: a genuine one's prediction with its radius multiplied by
    ``factor``."""

    def __init__(self, name: str, base: str, factor: float, kind: str) -> None:
        self.name, self.base, self.factor, self.kind = name, base, factor, kind

    def applies_to(self, noise) -> bool:
        return get_certificate(self.base).applies_to(noise)

    def certify(self, noise, stats) -> Certified:
        out = get_certificate(self.base).certify(noise, stats)
        return Certified(out.prediction, out.radius * self.factor, out.norm, p_lower=out.p_lower)


def planted_plugin() -> types.ModuleType:
    mod = types.ModuleType("planted_certificates")

    def register_certificates(register):
        register("double-exact", lambda: Inflated("double-exact", "exact", 2.0, EXACT))
        register("triple-standard", lambda: Inflated("triple-standard", "standard", 3.0, MONTE_CARLO))

    mod.register_certificates = hookimpl(register_certificates)
    return mod


@pytest.fixture
def planted():
    use_plugins(planted_plugin())


def first_pixel_images(values: list[int]) -> torch.Tensor:
    """Quantised 4x4 images whose first pixel holds the grey levels ``values``."""
    x = quantised((len(values), 1, 4, 4), seed=3)
    x[:, 0, 0, 0] = torch.tensor(values, dtype=torch.float32) / 255
    return x


def dssn_toy() -> tuple[SmoothedClassifier, torch.Tensor]:
    noise = smoothcore.noise("dssn", sigma=0.5, dim=16, seed=0)  # 441 draws, lambda > 1/2
    x = first_pixel_images([100, 200, 30, 150, 240])
    return SmoothedClassifier(FirstPixel(), noise, 2, max_batch=4096), x


CONFIG = AuditConfig(budget=400)


# -- exact noise ---------------------------------------------------------------------------------------------
def test_a_planted_double_dssn_radius_is_caught_with_a_checkable_counterexample(planted):
    smoothed, x = dssn_toy()
    report = audit(smoothed, x, certificate="double-exact", config=CONFIG)
    assert len(report.images) == len(x) and report.exact
    for i, im in enumerate(report.images):
        assert im.violation, f"image {i}: a radius twice the tight DSSN radius must be broken"
        assert im.violation_class != im.prediction and "exact counts" in im.evidence
        delta = im.perturbation
        assert delta.abs().sum().item() <= im.radius + 1e-9 and im.violation_norm <= im.radius + 1e-9
        moved = x[i : i + 1].double() + delta.unsqueeze(0)
        assert moved.min() >= 0 and moved.max() <= 1
        steps = moved * 255
        assert torch.allclose(steps, steps.round(), atol=1e-6), "counterexamples stay on the 1/255 grid"
        again = smoothed.certify((steps.round() / 255).float())  # an independent recomputation
        assert int(again.prediction[0]) != im.prediction
        assert im.tightness > 1.0


def test_the_exact_certificate_is_never_broken_and_the_flip_just_past_it_is_found():
    """The genuine DSSN certificate survives every search; the smallest flip found is radius + 1/255, the true
    smallest flip of this classifier, so the reported tightness is r / (r + 1/255)."""
    smoothed, x = dssn_toy()
    report = audit(smoothed, x, config=CONFIG)
    assert not report.violations
    for im in report.images:
        assert im.radius > 0 and im.steps == round(im.radius * 255)
        assert all(m >= 0 for m in im.margins.values())
        assert im.margins["greedy"] <= 1.0 / 441 + 1e-12, "the greedy search reaches the certificate's edge"
        assert im.smallest_flip == pytest.approx(im.radius + 1 / 255)
        assert im.tightness == pytest.approx(im.radius / (im.radius + 1 / 255))
    frame = report.frame()
    assert list(frame["violation"]) == [False] * len(x) and "margin_gradient" in frame.columns


def test_a_prediction_that_is_wrong_at_the_image_itself_is_a_violation_of_norm_zero(planted):
    smoothed, x = dssn_toy()
    truth = smoothed.certify(x[:2])
    cfg = AuditConfig(budget=50, tightness=False)
    report = audit_claims(smoothed, x[:2], 1 - truth.prediction, torch.zeros(2), config=cfg)
    assert len(report.violations) == 2
    assert all(im.violation_norm == 0 and im.violation_search == "clean" for im in report.images)


def test_sound_dssn_certificates_of_a_random_network_are_not_broken():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    smoothed = SmoothedClassifier(net, smoothcore.noise("dssn", sigma=0.3, dim=48, seed=2), 4, max_batch=4096)
    x = quantised((4, 3, 4, 4), seed=9)
    report = audit(smoothed, x, config=AuditConfig(budget=300))
    assert len(report.images) == 4 and not report.violations
    flips = [im for im in report.images if math.isfinite(im.smallest_flip)]
    assert flips and all(im.smallest_flip > im.radius for im in flips)
    for im in flips:  # the reported flip is real
        moved = ((x[[im.index]].double() + im.flip) * 255).round() / 255
        assert int(smoothed.certify(moved.float()).prediction[0]) != im.prediction


# -- Monte-Carlo noise ---------------------------------------------------------------------------------------
def uniform_toy() -> tuple[SmoothedClassifier, torch.Tensor, float]:
    """Uniform noise of half-width 1/2 and a threshold at 0.6 on the first pixel: the smoothed prediction is
    class 0 exactly while x_0 < 0.6, so the true smallest flip of an image is 0.6 - x_0."""
    noise = smoothcore.noise("uniform", lambd=0.5, dim=16)
    x = torch.full((4, 1, 4, 4), 0.3)
    x[:, 0, 0, 0] = torch.tensor([0.2, 0.25, 0.3, 0.35])
    return SmoothedClassifier(FirstPixel(0.6, 1000.0), noise, 2, max_batch=4096), x, 0.6


def p_class0(x0: float, threshold: float = 0.6, lambd: float = 0.5) -> float:
    return min(1.0, max(0.0, (threshold - x0 + lambd) / (2 * lambd)))


def test_a_uniform_radius_inflated_three_times_is_caught_by_the_statistical_test(planted):
    smoothed, x, threshold = uniform_toy()
    report = audit(smoothed, x, certificate="triple-standard", n=2000, config=CONFIG)
    assert not report.exact and "Clopper-Pearson" in report.statement
    assert "alpha / (C * M)" in report.statement
    assert len(report.violations) == len(x)
    for i, im in enumerate(report.images):
        assert im.violation_norm < im.radius and "upper" in im.evidence
        moved = float(x[i, 0, 0, 0]) + float(im.perturbation[0, 0, 0])
        assert p_class0(moved) < 0.5, "the reported perturbation really flips the smoothed classifier"


@pytest.mark.parametrize("certificate", ["standard", "two-sided", "box"])
def test_sound_monte_carlo_certificates_are_not_flagged(certificate):
    smoothed, x, threshold = uniform_toy()
    report = audit(smoothed, x, certificate=certificate, n=2000, config=CONFIG)
    assert len(report.images) == len(x) and not report.violations
    for i, im in enumerate(report.images):
        true_flip = threshold - float(x[i, 0, 0, 0])
        assert im.radius <= true_flip
        # a flip confirmed by a test on fresh draws lies beyond the true edge; shrinking gets close to it
        assert true_flip - 1e-6 <= im.smallest_flip <= 1.35 * true_flip
        assert 0 < im.tightness < 1


def test_the_smallest_flip_of_a_monte_carlo_audit_is_confirmed_at_a_family_wise_level(monkeypatch):
    """Each Monte-Carlo confirmation of the smallest flip tests the pilot's rival at alpha / CONFIRMATIONS, and an
    image gets at most CONFIRMATIONS of them, so a reported smallest flip errs with probability at most alpha."""
    import smoothcore.audit as audit_module

    levels, original = [], audit_module.pair_test

    def recording(k_top, k_rival, level):
        levels.append(level)
        return original(k_top, k_rival, level)

    monkeypatch.setattr(audit_module, "pair_test", recording)
    smoothed, x, _ = uniform_toy()
    report = audit(smoothed, x, n=2000, config=CONFIG)
    assert levels and set(levels) == {CONFIG.alpha / audit_module.CONFIRMATIONS}
    assert all(math.isfinite(im.smallest_flip) for im in report.images)
    levels.clear()
    # fewer allowed: fewer made, each at a stricter level
    monkeypatch.setattr(audit_module, "CONFIRMATIONS", 2)
    report = audit(smoothed, x, n=2000, config=CONFIG)
    assert 0 < len(levels) <= 2 * len(report.images) and set(levels) == {CONFIG.alpha / 2}


def test_claims_that_are_exactly_tight_are_not_flagged_though_the_searches_reach_the_edge():
    """Claims with the true radius: the searches get to points where p_A is a hair above 1/2, where the
    search's own estimate often flips, but the test on fresh draws at level alpha / (C M) does not reject."""
    smoothed, x, threshold = uniform_toy()
    x = x.repeat(3, 1, 1, 1)
    radius = [threshold - float(v) for v in x[:, 0, 0, 0]]
    cfg = AuditConfig(budget=400, alpha=0.05, tightness=False)
    report = audit_claims(smoothed, x, [0] * len(x), radius, config=cfg)
    assert not report.violations
    assert any(min(im.margins.values()) < 0 for im in report.images), "some tests ran at estimated flips"


# -- units ---------------------------------------------------------------------------------------------------
def test_margins_follow_the_tie_rule_and_budgets_follow_the_radius_convention():
    counts = torch.tensor([[5, 5, 0], [4, 5, 1], [6, 5, 0]])
    assert margin_of(counts, 0).tolist() == [0, -1, 1]  # class 0 keeps ties against higher classes
    assert margin_of(counts, 1).tolist() == [-1, 0, -2]  # class 1 loses ties against class 0, keeps 5 > 4
    assert steps_within(10 / 255, 255, inclusive=True) == 10
    assert steps_within(10 / 255, 255, inclusive=False) == 9
    assert steps_within(10.4 / 255, 255, inclusive=False) == 10
    assert steps_within(float("nan"), 255, inclusive=True) == 0


def test_bad_requests_are_config_or_data_errors():
    smoothed, x = dssn_toy()
    with pytest.raises(ConfigError, match="searches"):
        audit_claims(smoothed, x[:1], [0], [0.1], config=AuditConfig(searches=("annealing",)))
    with pytest.raises(ConfigError, match="budget"):
        audit_claims(smoothed, x[:1], [0], [0.1], config=AuditConfig(budget=0))
    with pytest.raises(ConfigError, match="alpha"):
        audit_claims(smoothed, x[:1], [0], [0.1], config=AuditConfig(alpha=0.7))
    with pytest.raises(DataError, match="1/255"):
        audit_claims(smoothed, x[:1] + 0.001, [0], [0.1])
    with pytest.raises(ConfigError, match="one prediction"):
        audit_claims(smoothed, x[:2], [0], [0.1])


def test_abstentions_claim_nothing_and_are_skipped():
    smoothed, x = dssn_toy()
    nan = float("nan")
    report = audit_claims(smoothed, x[:3], [-1, 0, 0], [nan, 0.0, nan], config=AuditConfig(budget=50))
    assert [im.index for im in report.images] == [1]


# -- experiment folders and the command line -----------------------------------------------------------------
def certified_copy(run_copy, fashion_dir, **kwargs):
    from smoothcore.runner import CertifyConfig, certify_experiment

    cfg = CertifyConfig(data_dir=str(fashion_dir), skip=997, limit=3, **kwargs)
    return certify_experiment(run_copy, cfg)


def test_the_audit_command_audits_a_trained_experiment(run_copy, fashion_dir):
    table = certified_copy(run_copy, fashion_dir)
    result = CliRunner().invoke(
        cli,
        ["audit", str(run_copy), "--data-dir", str(fashion_dir), "--limit", "2", "--budget", "150"]
        + ["--attack-budget", "2000"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "images audited" in out and "violations found" in out and "median tightness" in out
    assert "exact noise: a violation is" in out
    audited = __import__("pandas").read_csv(run_copy / "audit_dssn_sigma0.25.csv")
    certified = table[table["prediction"] != -1].head(2)
    assert audited["index"].tolist() == certified["index"].tolist()
    assert audited["radius"].tolist() == pytest.approx(certified["radius"].tolist())
    assert not audited["violation"].any()
    assert (audited[["margin_random", "margin_greedy", "margin_gradient"]] >= 0).all().all()
    # the cost bound of smoothcore.audit: base draws, 3 searches + 1.5 beyond + 1 to shrink budgets, at most two
    # draws-worth of candidates of overshoot in each of the 5 phases, and up to 4 recomputations over all draws;
    # each of the 2 attacks twice (inside the radius, beyond it): its budget, one round over all draws of overshoot
    # (3 per draw: a gradient) and its shrinking (20 draws-worth), and one more recomputation to confirm each
    draws, budget, attack = 220, 150, 2000
    searches = draws + 5.5 * budget + 5 * 2 * draws + 4 * draws
    attacks = 2 * 2 * (attack + 3 * draws + 20 * draws + draws)
    assert (audited["forward_passes"] <= searches + attacks).all()
    summary = json.loads((run_copy / "audit_dssn_sigma0.25.json").read_text())
    assert summary["summary"]["images"] == 2 and summary["config"]["budget"] == 150


def fails(*args, match: str) -> None:
    import re

    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert re.search(match, result.output, re.S), result.output


def test_the_audit_command_explains_what_it_cannot_do(run_copy, fashion_dir, tmp_path):
    fails("audit", tmp_path / "nothing", match="not an experiment folder")
    fails("audit", run_copy, match=r"no result tables \(certify_<tag>.csv\).*smoothcore certify")
    certified_copy(run_copy, fashion_dir)
    certified_copy(run_copy, fashion_dir, tag="again")
    fails("audit", run_copy, "--data-dir", fashion_dir, match="several result tables.*--tag")
    fails("audit", run_copy, "--tag", "missing", match="no result table certify_missing.csv")
    fails("audit", run_copy, "--tag", "again", "--searches", "random,annealing", match="searches must be")
    meta = run_copy / "certify_again.json"
    meta.write_text(json.dumps(dict(json.loads(meta.read_text()), classifier_sha256="0" * 64)))
    fails("audit", run_copy, "--tag", "again", "--data-dir", fashion_dir, match="classifier changed")


def test_audit_experiment_returns_the_report_and_writes_the_table(run_copy, fashion_dir):
    certified_copy(run_copy, fashion_dir)
    cfg = AuditConfig(budget=60, tightness=False)
    result = audit_experiment(run_copy, limit=1, config=cfg, data_dir=str(fashion_dir))
    assert result.tag == "dssn_sigma0.25" and result.output.is_file() and len(result.report.images) == 1
    # a table certified with --lambda rebuilds the same noise (the draw count depends on lambda's last bits)
    certified_copy(run_copy, fashion_dir, noise="dssn", lambd=0.4330127018922193, tag="by-lambda")
    again = audit_experiment(run_copy, tag="by-lambda", limit=1, config=cfg, data_dir=str(fashion_dir))
    assert again.report.images[0].radius == result.report.images[0].radius
    with pytest.raises(ConfigError, match="limit"):
        audit_experiment(run_copy, limit=0, data_dir=str(fashion_dir))
    with pytest.raises(ExperimentError, match="no result table"):
        audit_experiment(run_copy, tag="nope", data_dir=str(fashion_dir))
