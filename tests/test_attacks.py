"""Attacks on the smoothed classifier: each finds the true smallest flip of toy classifiers where it can be computed,
no flip is reported that verification does not confirm, the audit catches inflated radii with them, and the
command line writes the per-image table and the certified-versus-empirical table."""

from __future__ import annotations

import math
import types

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from smoothcore import ConfigError, hookimpl, plugins
from smoothcore.attack_run import robustness_table
from smoothcore.attacks import (
    SHRINK,
    TESTS,
    Attack,
    AttackConfig,
    AttackTarget,
    attack_image,
    attack_images,
    attacks_for,
    choose_rival,
    make_attack,
    verified_flip,
    verify,
)
from smoothcore.audit import audit_claims
from smoothcore.audit_search import AuditConfig, steps_within
from smoothcore.certify import SmoothedClassifier
from smoothcore.noises import make_noise
from smoothcore.testing import FirstPixelThreshold, MeanThreshold
from smoothcore_plugins.attacks import ApgdL1, project_l1_box, shrink_on_counts

SHAPE = (1, 4, 4)


def image(first: int, rest: int = 128) -> torch.Tensor:
    x = torch.full((1, *SHAPE), rest / 255.0)
    x.view(-1)[0] = first / 255.0
    return x


def dssn_first_pixel() -> SmoothedClassifier:
    return SmoothedClassifier(FirstPixelThreshold(), make_noise("dssn", sigma=0.5, dim=16), 2)


def true_smallest_flip(smoothed: SmoothedClassifier, first: int) -> float:
    """Brute force over the first pixel's 256 grey levels (the toy reads nothing else): the nearest level whose
    exact counts predict another class."""
    levels = torch.stack([image(v)[0] for v in range(256)])
    counts, _ = smoothed.engine.exact_counts(smoothed.noise, levels)
    pred = counts.argmax(1)
    flips = [abs(v - first) for v in range(256) if pred[v] != pred[first]]
    return min(flips) / 255.0


# -- DSSN: the exact structure ---------------------------------------------------------------------------------
@pytest.mark.parametrize("first", [180, 230, 40])
def test_dssn_counts_finds_the_true_smallest_flip_of_a_one_pixel_classifier(first):
    smoothed = dssn_first_pixel()
    truth = true_smallest_flip(smoothed, first)
    x = image(first)
    top = int(smoothed.predict(x).prediction[0])
    result = attack_image(
        smoothed, x, top, attacks=[make_attack("dssn-counts")], cfg=AttackConfig(budget=20_000)
    )
    assert result.attack == "dssn-counts"
    assert result.flip_norm == pytest.approx(truth, abs=1e-9)
    assert result.x_adv is not None and (result.x_adv * 255 - (result.x_adv * 255).round()).abs().max() < 1e-4


def test_the_dssn_certificate_of_the_one_pixel_classifier_is_one_step_short_of_the_flip():
    """At grey level 230 the counts are 230 (class 1) vs 211 of 441: radius floor((230 - 211 - 1) / 2) / 255 = 9/255,
    and the attack flips at 10/255: the certificate is as tight as its integer rounding allows."""
    smoothed = dssn_first_pixel()
    x = image(230)
    cert = smoothed.certify(x)
    assert float(cert.radius[0]) == pytest.approx(9 / 255)
    result = attack_image(smoothed, x, 1, attacks=[make_attack("dssn-counts")], cfg=AttackConfig())
    assert result.flip_norm == pytest.approx(10 / 255)


def test_dssn_counts_respects_max_norm():
    smoothed = dssn_first_pixel()
    x = image(180)  # flips at 41/255
    target = AttackTarget(smoothed, x, 0)
    assert make_attack("dssn-counts").run(target, max_norm=40 / 255, stop=20_000) is None
    found = make_attack("dssn-counts").run(AttackTarget(smoothed, x, 0), max_norm=41 / 255, stop=20_000)
    assert found is not None and float((found - x).abs().sum()) == pytest.approx(41 / 255)


def loose_flip(first: int, truth_steps: int) -> torch.Tensor:
    """A flip of the one-pixel toy from a grey level it predicts class 0 at (class 1 needs a brighter first pixel)
    that overshoots: the first pixel moved 20 steps further than needed, and 30 steps spent on a pixel the toy never
    reads."""
    loose = image(first)
    loose.view(-1)[0] = (first + truth_steps + 20) / 255.0
    loose.view(-1)[5] = (128 + 30) / 255.0
    return loose


@pytest.mark.parametrize("first", [180, 20])
def test_shrinking_on_exact_counts_reaches_the_true_smallest_flip(first):
    smoothed = dssn_first_pixel()
    truth = round(true_smallest_flip(smoothed, first) * 255)
    x = image(first)
    top = int(smoothed.predict(x).prediction[0])
    target = AttackTarget(smoothed, x, top)
    steps = (loose_flip(first, truth).reshape(-1) * 255).round().long() - target.x_steps
    out = shrink_on_counts(target, steps, 20_000)
    assert int(out.abs().sum()) == truth and int(out[5]) == 0
    assert target.forward > 0  # the oracle's passes are counted


def test_apgd_on_an_exact_noise_shrinks_its_flip_on_the_exact_counts(monkeypatch):
    """With ``polish`` > 0, APGD's flip (here a loose one, planted) is shrunk on exact counts with the passes it kept
    back; with ``polish=0`` it is returned as found."""
    smoothed = dssn_first_pixel()
    truth = round(true_smallest_flip(smoothed, 180) * 255)
    monkeypatch.setattr(ApgdL1, "_search", lambda self, target, stop: loose_flip(180, truth))
    for polish, expected in ((0.45, truth), (0.0, truth + 50)):
        found = ApgdL1(polish=polish).run(AttackTarget(smoothed, image(180), 0), max_norm=None, stop=20_000)
        assert round(float((found - image(180)).abs().sum()) * 255) == expected


def test_passes_an_attack_leaves_unused_go_to_the_next():
    smoothed = dssn_first_pixel()
    given = []

    class Idle(Attack):
        def run(self, target, *, max_norm, stop):
            given.append(stop - target.forward)
            return None

    attack_image(smoothed, image(180), 0, attacks=[Idle(), Idle()], cfg=AttackConfig(budget=1_000))
    assert given == [1_000, 2_000]


# -- Monte-Carlo noise: L1-APGD -----------------------------------------------------------------------------------
def test_apgd_finds_the_smallest_flip_of_a_mean_threshold_under_uniform_noise():
    """Under symmetric noise the smoothed mean-threshold classifier flips exactly when the pixel sum crosses d/2, so
    the smallest L1 flip is |sum(x) - 8|. The verified flip cannot be smaller (the test on fresh draws must reject
    p_A >= 1/2) and should not be much larger."""
    smoothed = SmoothedClassifier(MeanThreshold(), make_noise("uniform", sigma=0.5, dim=16), 2)
    x = image(60, 60)
    truth = abs(float(x.sum()) - 8.0)
    result = attack_image(smoothed, x, 0, attacks=[make_attack("apgd-l1")], cfg=AttackConfig(budget=30_000))
    assert math.isfinite(result.flip_norm)
    assert truth - 1e-6 <= result.flip_norm <= 1.25 * truth
    assert result.evidence.startswith(f"n={AttackConfig().n_test}")


@pytest.mark.parametrize("name", ["apgd-l1", "fmn-l1"])
def test_within_a_ball_a_strong_flip_inside_it_and_nothing_when_the_ball_is_too_small(name):
    """Inside a ball of 1.5 times the true smallest flip of the mean-threshold classifier, the attack's flip stays in
    the ball and is far enough past the edge for the auditor's strict test; inside 0.8 times it, nothing verifies."""
    smoothed = SmoothedClassifier(MeanThreshold(), make_noise("uniform", sigma=0.5, dim=16), 2)
    x = image(60, 60)
    truth = abs(float(x.sum()) - 8.0)
    target = AttackTarget(smoothed, x, 0)
    found = make_attack(name).run(target, max_norm=1.5 * truth, stop=20_000)
    assert found is not None and target.l1(found) <= 1.5 * truth + 1e-6
    # a test as strict as the audit's (Bonferroni over 100 tests)
    assert verify(target, found, alpha=0.01, tries=100).flips
    small = make_attack(name).run(AttackTarget(smoothed, x, 0), max_norm=0.8 * truth, stop=20_000)
    assert small is None or not verify(target, small, key=1).flips


@pytest.mark.parametrize("first", [60, 200])
def test_fmn_finds_the_smallest_flip_of_a_mean_threshold_under_uniform_noise(first):
    """As for APGD above: the verified flip lies between the true smallest flip |sum(x) - 8| and 1.25 times it, from
    below the threshold (every pixel at 60) and from above it (every pixel at 200: the flip moves pixels down)."""
    smoothed = SmoothedClassifier(MeanThreshold(), make_noise("uniform", sigma=0.5, dim=16), 2)
    x = image(first, first)
    top = int(smoothed.predict(x).prediction[0])
    truth = abs(float(x.sum()) - 8.0)
    result = attack_image(smoothed, x, top, attacks=[make_attack("fmn-l1")], cfg=AttackConfig(budget=20_000))
    assert result.attack == "fmn-l1" and truth - 1e-6 <= result.flip_norm <= 1.25 * truth
    assert 0.0 <= float(result.x_adv.min()) and float(result.x_adv.max()) <= 1.0
    # the budget (the pilot and two tests included), then at most the rest of the verification's tests
    assert result.forward_passes <= 20_000 + (TESTS - 2) * AttackConfig().n_test


def test_monte_carlo_noises_get_fmn_by_default_and_apgd_when_named():
    uniform, dssn = make_noise("uniform", sigma=0.5, dim=16), make_noise("dssn", sigma=0.5, dim=16)
    assert [a.name for a in attacks_for(uniform)] == ["fmn-l1"]
    assert {a.name for a in attacks_for(dssn)} == {"apgd-l1", "dssn-counts"}
    assert [a.name for a in attacks_for(uniform, ["apgd-l1"])] == ["apgd-l1"]
    with pytest.raises(ConfigError, match="does not apply"):
        attacks_for(dssn, ["fmn-l1"])


def test_project_l1_box_is_the_projection():
    torch.manual_seed(0)
    z = torch.randn(50)
    low, high = -torch.rand(50), torch.rand(50)
    p = project_l1_box(z, low, high, 2.0)
    assert float(p.abs().sum()) <= 2.0 + 1e-6 and bool(((p >= low - 1e-9) & (p <= high + 1e-9)).all())
    # no point of the set is closer: compare with random feasible points
    for _ in range(200):
        q = project_l1_box(torch.randn(50) * 3, low, high, 2.0)
        assert float((z - p).norm()) <= float((z - q).norm()) + 1e-6
    inside = torch.zeros(50)
    inside[0] = 0.5 * float(high[0])
    assert torch.equal(project_l1_box(inside, low, high, 2.0), inside)


# -- nothing unverified is reported ---------------------------------------------------------------------------
class Liar(Attack):
    """Claims a flip at a perturbation that changes nothing (or, off the grid, cannot be certified)."""

    def __init__(self, *, offgrid: bool = False):
        self.offgrid = offgrid

    def run(self, target, *, max_norm, stop):
        x = target.x.clone()
        x.view(-1)[5] = x.view(-1)[5] + (0.3 / 255 if self.offgrid else 3 / 255)
        return x


@pytest.mark.parametrize("offgrid", [False, True])
def test_claimed_flips_that_do_not_verify_are_not_reported(offgrid):
    smoothed = dssn_first_pixel()
    result = attack_image(smoothed, image(180), 0, attacks=[Liar(offgrid=offgrid)], cfg=AttackConfig())
    assert math.isnan(result.flip_norm) and result.attack == ""
    verdict = verify(
        AttackTarget(smoothed, image(180), 0),
        Liar(offgrid=offgrid).run(AttackTarget(smoothed, image(180), 0), max_norm=None, stop=0),
    )
    assert not verdict.flips
    assert ("grid" in verdict.evidence) == offgrid


def test_a_monte_carlo_liar_is_refused_by_the_test_on_fresh_draws():
    smoothed = SmoothedClassifier(MeanThreshold(), make_noise("uniform", sigma=0.5, dim=16), 2)
    result = attack_image(smoothed, image(60, 60), 0, attacks=[Liar()], cfg=AttackConfig())
    assert math.isnan(result.flip_norm)


def test_monte_carlo_verification_holds_its_level_when_the_rival_ties():
    """At the image of mean 1/2 the smoothed mean-threshold classifier has p_0 = p_1 = 1/2 exactly: A = 0 is still a
    top class, so every verified flip there is an error. The paired test at alpha = 0.2 must err at most a fifth of
    the time (a point estimate would err about half the time): 60 or more of 200 errors has probability < 1e-3."""
    smoothed = SmoothedClassifier(MeanThreshold(), make_noise("uniform", sigma=0.5, dim=16), 2)
    target = AttackTarget(smoothed, torch.full((1, *SHAPE), 0.5), 0)
    verdicts = [verify(target, target.x, n_test=200, alpha=0.2, key=k, rival=1) for k in range(200)]
    assert sum(v.flips for v in verdicts) < 60
    assert all(v.rival == 1 and "rival chosen on other draws" in v.evidence for v in verdicts)


def test_monte_carlo_verification_confirms_a_clear_flip_against_the_rival_the_pilot_chooses():
    smoothed = SmoothedClassifier(MeanThreshold(), make_noise("uniform", sigma=0.5, dim=16), 2)
    target = AttackTarget(smoothed, image(60, 60), 0)
    beyond = torch.full((1, *SHAPE), 0.6)  # mean 0.6: p_1 is about 0.9
    assert choose_rival(target, beyond, n=64, key=0) == 1
    found = verified_flip(target, beyond, AttackConfig(), key=0, tries=TESTS)
    assert found is not None and torch.equal(found[0], beyond)  # the unscaled candidate, first on the ladder
    assert found[1].flips and found[1].rival == 1
    assert verified_flip(target, image(60, 60), AttackConfig(), key=1, tries=TESTS) is None


def counting_verify(monkeypatch) -> list[float]:
    """Patch the verification to record the level of every test it makes."""
    import smoothcore.attacks as attacks

    levels, real = [], attacks.verify

    def counted(target, x_adv, **kw):
        levels.append(kw["alpha"] / kw["tries"])
        return real(target, x_adv, **kw)

    monkeypatch.setattr(attacks, "verify", counted)
    return levels


def test_a_verified_flip_is_scaled_down_while_it_verifies_and_the_budget_allows(monkeypatch):
    """Far past the edge (mean 0.75, the edge is at mean 1/2) every smaller try verifies: with the passes for them
    the flip comes back at the smallest scale, after at most TESTS tests, each at alpha / tries; without them it
    comes back unscaled."""
    levels = counting_verify(monkeypatch)
    smoothed = SmoothedClassifier(MeanThreshold(), make_noise("uniform", sigma=0.5, dim=16), 2)
    target = AttackTarget(smoothed, image(60, 60), 0)
    beyond = torch.full((1, *SHAPE), 0.75)
    cfg = AttackConfig()
    found = verified_flip(target, beyond, cfg, key=0, tries=TESTS, stop=target.forward + 100_000)
    smallest = target.x + min(SHRINK) * (beyond - target.x)
    assert found is not None and found[1].flips and torch.allclose(found[0], smallest)
    assert len(levels) == TESTS and set(levels) == {cfg.alpha / TESTS}
    levels.clear()
    found = verified_flip(target, beyond, cfg, key=1, tries=TESTS, stop=target.forward + cfg.n_test - 1)
    assert found is not None and torch.equal(found[0], beyond) and len(levels) == 1


def test_scaling_down_stops_before_the_edge():
    """Just past the edge (mean 0.56; scaled by 0.8 the mean is below 1/2, where A = 0 wins): the flip returned
    is smaller than the candidate but still a real one."""
    smoothed = SmoothedClassifier(MeanThreshold(), make_noise("uniform", sigma=0.5, dim=16), 2)
    target = AttackTarget(smoothed, image(60, 60), 0)
    beyond = torch.full((1, *SHAPE), 0.56)
    found = verified_flip(target, beyond, AttackConfig(), key=0, tries=TESTS, stop=target.forward + 100_000)
    assert found is not None
    mean = float(found[0].mean())
    assert 0.5 < mean < 0.56 - 1e-6


def test_attacks_are_plugins():
    @hookimpl
    def register_attacks(register):
        register("liar", Liar)

    saved = plugins.snapshot()
    try:
        plugins.use_plugins(types.SimpleNamespace(__name__="liar_plugin", register_attacks=register_attacks))
        assert {"apgd-l1", "dssn-counts", "liar"} <= set(plugins.registry("attack").names())
        smoothed = dssn_first_pixel()
        results = attack_images(smoothed, image(180), [0], config=AttackConfig(attacks=("liar",)))
        assert math.isnan(results[0].flip_norm)
    finally:
        plugins.restore(saved)
    assert not make_attack("apgd-l1").applies_to(make_noise("gaussian", sigma=0.5, dim=4))
    assert not make_attack("dssn-counts").applies_to(make_noise("ssn", sigma=0.5, dim=4))


# -- the audit uses the attacks ----------------------------------------------------------------------------------
def test_the_audit_catches_radii_inflated_to_one_and_a_half_times_the_smallest_flip():
    smoothed = dssn_first_pixel()
    levels = [180, 40, 120]
    x = torch.cat([image(v) for v in levels])
    flips = [true_smallest_flip(smoothed, v) for v in levels]
    pred = smoothed.predict(x).prediction
    cfg = AuditConfig(searches=("random",), budget=50, tightness=False)
    report = audit_claims(smoothed, x, pred, [1.5 * f for f in flips], config=cfg)
    assert [im.violation for im in report.images] == [True, True, True]
    assert {im.violation_search for im in report.images} <= {"apgd-l1", "dssn-counts"}
    for name in ("apgd-l1", "dssn-counts"):  # each attack alone catches them
        alone = AuditConfig(searches=("random",), budget=50, tightness=False, attacks=(name,))
        report = audit_claims(smoothed, x, pred, [1.5 * f for f in flips], config=alone)
        assert [im.violation_search for im in report.images] == [name] * 3
    sound = smoothed.certify(x)
    report = audit_claims(smoothed, x, sound.prediction, sound.radius, config=cfg)
    assert not report.violations
    without = audit_claims(
        smoothed, x, pred, [1.5 * f for f in flips], config=AuditConfig(**{**cfg.__dict__, "attacks": ()})
    )
    assert len(without.violations) < 3  # the searches alone miss some: the attacks add power


# -- experiment folders and tables ----------------------------------------------------------------------------
class EdgeOfTheBall(Attack):
    """Moves every pixel up by the same amount, using the whole ball: off the 1/255 grid, on the ball's edge."""

    def run(self, target, *, max_norm, stop):
        if max_norm is None:
            return None
        return (target.x + max_norm / target.d).clamp(0, 1)


def test_the_audit_keeps_an_attack_flip_on_the_balls_edge_that_rounding_to_the_grid_would_push_out():
    """A Monte-Carlo attack's flip inside a radius is usually on the ball's edge and off the grid; rounding each pixel
    to the nearest grid step can leave the ball (here 16 pixels moved 19.75 steps each: 320 rounded, 4 more than the
    316 allowed), so the audit moves it towards the image instead (19 steps each) and still reports it."""
    smoothed = SmoothedClassifier(MeanThreshold(), make_noise("uniform", sigma=0.1, dim=16), 2)
    x = torch.full((1, *SHAPE), 125 / 255)
    radius = 316.5 / 255  # strictly inside: 316 steps
    assert steps_within(radius, 255, inclusive=False) == 316
    cfg = AuditConfig(searches=("random",), budget=1, tightness=False, attacks=("edge",))
    saved = plugins.snapshot()
    try:

        @hookimpl
        def register_attacks(register):
            register("edge", EdgeOfTheBall)

        plugins.use_plugins(types.SimpleNamespace(__name__="edge_plugin", register_attacks=register_attacks))
        report = audit_claims(smoothed, x, [0], [radius], config=cfg)
    finally:
        plugins.restore(saved)
    im = report.images[0]
    assert im.violation and im.violation_search == "edge"
    assert im.violation_norm == pytest.approx(304 / 255)


def test_robustness_table_counts_by_hand():
    certified = pd.DataFrame(
        {
            "index": [0, 1, 2, 3],
            "label": [1, 1, 0, 2],
            "prediction": [1, 1, 1, -1],
            "radius": [0.6, 0.2, 0.9, math.nan],
        }
    )
    attacked = pd.DataFrame({"index": [0, 1], "flip_norm": [2.0, math.nan]})
    table = robustness_table(certified, attacked, [0.25, 0.5, 2.0])
    # images 0..1 considered (the attack covered index <= 1): both correct
    assert table["certified"].tolist() == [50.0, 50.0, 0.0]
    assert table["empirical"].tolist() == [100.0, 100.0, 50.0]
    assert table["gap"].tolist() == [50.0, 50.0, 50.0]


def test_attack_command_writes_the_table_and_prints_certified_vs_empirical(run_copy):
    trained_run = run_copy
    from smoothcore.cli import cli

    none = CliRunner().invoke(cli, ["attack", str(trained_run)])
    assert none.exit_code != 0 and "certify it first" in none.output
    certified = CliRunner().invoke(cli, ["certify", str(trained_run), "--limit", "5", "--skip", "50"])
    assert certified.exit_code == 0, certified.output
    result = CliRunner().invoke(
        cli, ["attack", str(trained_run), "--limit", "3", "--budget", "3000", "--radii", "0.1,0.5"]
    )
    assert result.exit_code == 0, result.output
    assert "certified vs empirical" in result.output
    tables = list(trained_run.glob("attack_*.csv"))
    frame = pd.read_csv(tables[0])
    assert {"index", "flip_norm", "attack", "forward_passes", "evidence"} <= set(frame.columns)
    attacked = frame[frame["attacked"]]
    assert len(attacked) and (attacked["forward_passes"] > 0).all()
    # the wrong or abstaining images among the first 3 are listed, not attacked
    assert len(frame) == 3 and frame.loc[~frame["attacked"], "flip_norm"].isna().all()
    bad = CliRunner().invoke(cli, ["attack", str(trained_run), "--attacks", "nope"])
    assert bad.exit_code != 0 and "unknown attack 'nope'" in bad.output


def test_report_shows_certified_next_to_empirical_and_plots_both(run_copy):
    from smoothcore.cli import cli
    from smoothcore.report import load_runs, robustness_rows

    assert CliRunner().invoke(cli, ["certify", str(run_copy), "--limit", "4", "--skip", "50"]).exit_code == 0
    attacked = CliRunner().invoke(
        cli, ["attack", str(run_copy), "--budget", "2000", "--attacks", "dssn-counts"]
    )
    assert attacked.exit_code == 0, attacked.output
    result = CliRunner().invoke(
        cli, ["report", str(run_copy), "--radii", "0.1,1", "--plot", str(run_copy / "p.svg")]
    )
    assert result.exit_code == 0, result.output
    assert "empirical robust accuracy" in result.output
    rows = robustness_rows(load_runs([run_copy]), [0.1, 1.0])
    assert rows["bound"].tolist() == ["certified", "empirical", "gap"]
    # the upper bound is never below the lower bound, and the gap is their difference
    assert (rows.iloc[1, 3:].to_numpy(float) >= rows.iloc[0, 3:].to_numpy(float)).all()
    assert rows.iloc[2, 3:].to_numpy(float) == pytest.approx(
        rows.iloc[1, 3:].to_numpy(float) - rows.iloc[0, 3:].to_numpy(float)
    )
    assert "empirical (attack" in (run_copy / "p.svg").read_text()
    markdown = CliRunner().invoke(cli, ["report", str(run_copy), "--radii", "0.1,1", "--format", "markdown"])
    assert markdown.exit_code == 0, markdown.output
    assert "| fmnist-dssn/dssn_sigma0.25 | certified |" in markdown.output
    assert "| fmnist-dssn/dssn_sigma0.25 | empirical |" in markdown.output
