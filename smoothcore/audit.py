"""Auditing certificates: search for perturbations inside certified radii that change the smoothed prediction.

A certificate claims that the smoothed classifier predicts ``A`` at every ``x' = x + delta`` with
``||delta||`` within ``radius``. The auditor searches for a counterexample and reports how tight the claim is.

The searches, and the grid they move on, are in :mod:`smoothcore.audit_search`.

What a violation means:

- **Exact noises** (DSSN): the search uses every draw, so its margins are exact; a candidate counts as a
  violation only after the counts over all draws are recomputed from scratch for ``x'``
  (:meth:`smoothcore.engine.Engine.exact_counts`, as certification does) and give a prediction other than
  ``A``, with ``||delta||_1 <= radius``. A violation is a deterministic counterexample; a sound certificate
  never has one.
- **Monte-Carlo noises**: the search estimates margins on ``n_search`` fixed draws (common random numbers).
  The best candidate of each search that seems to flip is then *tested* with ``n_test`` fresh draws,
  independent of everything else: it is a violation when, for some class ``c != A``, the one-sided
  Clopper-Pearson upper bound on ``p_A(x')`` lies below the one-sided lower bound on ``p_c(x')``, each bound
  at level ``alpha / (C * M)`` (``C`` classes, ``M = images * searches``, the most tests the audit can run).
  If ``A`` is the smoothed prediction at every tested ``x'`` (``p_A(x') >= p_c(x')`` for all ``c``), a
  rejection needs one of the ``C`` bounds of some test to fail, so the probability that the audit reports any
  violation at all is at most ``alpha`` (Bonferroni over classes and tests). Only perturbations strictly
  inside the radius are tested.

Other norms: a perturbation with ``||delta||_1 <= r`` also has ``||delta||_2 <= r`` and
``||delta||_inf <= r``, so the L1-bounded searches test L2 and L-infinity certificates too (a subset of their
ball).

Tightness: the auditor also searches beyond the radius and shrinks what it finds (scaling ``delta`` down by
bisection, then dropping pixels). ``smallest_flip`` is the smallest norm (in the certificate's norm) of a
perturbation found to change the prediction (exact: recomputed over all draws; Monte-Carlo: the paired test of
attack verification, :func:`smoothcore.stats.pair_test`: a rival ``B`` chosen on ``PILOT`` fresh draws, then on
``n_test`` other fresh draws the lower bound on ``p_B / (p_A + p_B)`` above 1/2 at level
``alpha / CONFIRMATIONS``, at most ``CONFIRMATIONS`` confirmations per image), and
``tightness = radius / smallest_flip``. Since the true smallest flip can only be smaller, ``tightness`` is a
lower bound on the true ratio (Monte-Carlo: unless a confirmation errs, which happens for an image with
probability at most ``alpha``, Bonferroni over its confirmations). For exact noises it exceeds 1 only with a
violation, and for DSSN it is at most ``radius / (radius + 1/255)`` when the certificate is sound.

Cost per image, in base-classifier evaluations: the base draws (all ``num_draws``, or ``n_search``); at most
``budget`` per search inside the radius, ``1.5 budget`` beyond it and ``max(budget, 6 n_search)`` to shrink
(exact: ``budget``), each plus at most one round of candidates; and confirmations of ``num_draws`` or
``n_test`` draws (one per search for violations; for the smallest flip one if exact, at most ``CONFIRMATIONS``
of ``PILOT + n_test`` if Monte-Carlo). A gradient over ``n`` draws counts ``3 n``; a candidate all of whose
noisy draws were already classified counts 1. Each attack (:mod:`smoothcore.attacks`; ``attacks``) runs twice,
inside the radius and beyond it, with ``attack_budget`` forward passes each (plus the round it stops in and its
own shrinking); its flips are confirmed as the searches' are.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from smoothcore.attacks import PILOT, AttackTarget, attacks_for
from smoothcore.audit_search import (
    NORMS,
    SEARCH_FUNCTIONS,
    SEARCHES,
    AuditConfig,
    Found,
    Oracle,
    margin_of,
    norm_of,
    shrink,
    steps_within,
)
from smoothcore.certificates import ABSTAIN
from smoothcore.certify import SmoothedClassifier
from smoothcore.errors import ConfigError, DataError, ExperimentError
from smoothcore.stats import pair_test, rival_test, strongest_rival
from smoothcore.streams import DrawStream

CONFIRMATIONS = 16  # Monte-Carlo confirmations of the smallest flip per image at most (each at alpha / 16)

EXACT_STATEMENT = (
    "exact noise: a violation is a perturbation on the 1/{grid} grid, kept in [0, 1]^d, with "
    "||delta||_1 <= radius, whose counts over every draw, recomputed from scratch, predict "
    "another class (deterministic, no statistics)"
)
MC_STATEMENT = (
    "Monte-Carlo noise: a violation is a perturbation strictly inside the radius at which, "
    "on {n_test} fresh draws, the one-sided Clopper-Pearson upper bound on p_A is below the "
    "lower bound on p_c for some other class c, each bound at level alpha / (C * M) = "
    "{alpha:g} / ({classes} * {tests}); if no audited prediction is broken, the chance that any "
    "violation is reported is at most alpha = {alpha:g}"
)


@dataclass
class ImageAudit:
    """The audit of one certified image. Norms are in the certificate's ``norm``; NaN where nothing was found.

    ``steps``: the L1 budget searched inside the radius, in grid steps. ``violation``: a confirmed
    perturbation inside the radius changes the prediction (see the module docstring), of norm
    ``violation_norm``, found by ``violation_search`` (``clean``: the image itself), predicting
    ``violation_class`` (``evidence`` says why). ``smallest_flip``: the smallest perturbation found that
    changes the prediction, anywhere; ``tightness = radius / smallest_flip``. ``margins``: per search, the
    smallest margin reached inside the radius, as a fraction of the draws (negative: a flip on the search's
    draws; searches after a violation do not run). ``perturbation`` and ``flip``: the violating and the
    smallest flipping ``delta`` themselves (shaped like the image, ``x + delta`` is the input), so anyone can
    check them. ``forward_passes``: base-classifier evaluations.
    """

    index: int
    prediction: int
    radius: float
    norm: str
    certificate: str
    label: int = -1
    steps: int = 0
    violation: bool = False
    violation_norm: float = math.nan
    violation_search: str = ""
    violation_class: int = ABSTAIN
    evidence: str = ""
    smallest_flip: float = math.nan
    flip_search: str = ""
    tightness: float = math.nan
    margins: dict[str, float] = field(default_factory=dict)
    forward_passes: int = 0
    seconds: float = 0.0
    perturbation: torch.Tensor | None = field(default=None, repr=False)
    flip: torch.Tensor | None = field(default=None, repr=False)

    def row(self) -> dict[str, Any]:
        """The table row: every field but the perturbations, one ``margin_<search>`` column per search."""
        hidden = ("margins", "perturbation", "flip")
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in hidden}
        row.update({f"margin_{name}": self.margins.get(name, math.nan) for name in SEARCHES})
        return row


@dataclass
class AuditReport:
    """Every audited image, the statement that defines a violation, and the configuration."""

    images: list[ImageAudit]
    statement: str
    config: AuditConfig
    exact: bool

    def frame(self) -> pd.DataFrame:
        columns = list(ImageAudit(0, 0, 0.0, "l1", "").row())
        return pd.DataFrame([im.row() for im in self.images], columns=columns)

    @property
    def violations(self) -> list[ImageAudit]:
        return [im for im in self.images if im.violation]

    def summary(self) -> dict[str, Any]:
        tight = np.array([im.tightness for im in self.images], dtype=np.float64)
        found = tight[~np.isnan(tight)]  # NaN: no flip found; inf: a flip at the image itself
        return {
            "images": len(self.images),
            "violations": len(self.violations),
            "flips_found": int(len(found)),
            "median_tightness": float(np.median(found)) if len(found) else math.nan,
            "min_tightness": float(found.min()) if len(found) else math.nan,
            "max_tightness": float(found.max()) if len(found) else math.nan,
            "forward_passes": int(sum(im.forward_passes for im in self.images)),
            "seconds": float(sum(im.seconds for im in self.images)),
        }


# -- one image -----------------------------------------------------------------------------------------------
class _ImageAuditor:
    def __init__(
        self,
        smoothed: SmoothedClassifier,
        x: torch.Tensor,
        claim: ImageAudit,
        cfg: AuditConfig,
        tests_total: int,
        attacks: list[Any],
    ) -> None:
        self.smoothed, self.claim, self.cfg, self.tests_total = smoothed, claim, cfg, tests_total
        self.oracle = Oracle(smoothed, x, claim.prediction, cfg, claim.index)
        self.exact = self.oracle.exact
        self.tests_done = 0
        self.attacks = attacks

    def rng(self, *keys: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, self.claim.index, *keys])

    def as_image(self, delta: torch.Tensor) -> torch.Tensor:
        """``x' - x`` for grid steps ``delta``, shaped like the image (float64, on the CPU)."""
        x = self.oracle.x.detach().cpu()
        return (self.oracle.images(delta.unsqueeze(0)).cpu().double() - x.double())[0]

    # verdicts on fresh evaluations
    def confirm_exact(self, delta: torch.Tensor) -> int:
        """The prediction at ``x + delta`` from counts over every draw, recomputed from scratch."""
        moved = self.oracle.images(delta.unsqueeze(0))
        counts, _ = self.smoothed.engine.exact_counts(self.smoothed.noise, moved)
        self.oracle.spent += self.oracle.num
        self.oracle.forward += self.oracle.num
        return int(counts.cpu().argmax(dim=1)[0])

    def fresh_counts(
        self, delta: torch.Tensor, key: int, *, n: int | None = None, role: int = 2
    ) -> torch.Tensor:
        n = self.cfg.n_test if n is None else n
        stream = DrawStream(self.cfg.seed, self.claim.index, role, key)
        moved = self.oracle.images(delta.unsqueeze(0))
        counts = self.smoothed.engine.sampled_counts(self.smoothed.noise, moved, n, [stream])
        self.oracle.spent += n
        self.oracle.forward += n
        return counts.cpu()[0]

    def test_mc(self, delta: torch.Tensor) -> tuple[bool, int, str]:
        """The Monte-Carlo violation test of the module docstring on fresh draws: does some class beat ``A``
        at ``x + delta``, each one-sided bound at level ``alpha / (C * M)``?"""
        self.tests_done += 1
        counts = self.fresh_counts(delta, self.tests_done)
        level = self.cfg.alpha / (len(counts) * self.tests_total)  # one-sided level of each bound
        return rival_test(counts.numpy(), self.claim.prediction, level)

    def flips(self, delta: torch.Tensor, key: int) -> bool:
        """Exact: the prediction recomputed over all draws is not ``A``. Monte-Carlo (the ``key``-th confirmation of
        the image, at most ``CONFIRMATIONS``): the rival that ``PILOT`` fresh draws choose beats ``A`` by the paired
        test on ``n_test`` other fresh draws, at level ``alpha / CONFIRMATIONS``."""
        if self.exact:
            return self.confirm_exact(delta) != self.claim.prediction
        if key > CONFIRMATIONS:
            return False
        top = self.claim.prediction
        rival = strongest_rival(self.fresh_counts(delta, key, n=PILOT, role=7).numpy(), top)
        counts = self.fresh_counts(delta, 1000 + key)
        return pair_test(int(counts[top]), int(counts[rival]), self.cfg.alpha / CONFIRMATIONS)[0]

    # the phases
    def run(self) -> ImageAudit:
        t0 = time.perf_counter()
        claim, cfg, oracle = self.claim, self.cfg, self.oracle
        claim.steps = steps_within(claim.radius, cfg.grid, inclusive=self.exact)
        flips: list[tuple[torch.Tensor, str]] = []
        zero = torch.zeros(oracle.d, dtype=torch.long)
        if self.exact and int(margin_of(oracle.base_counts.cpu(), claim.prediction)[0]) < 0:
            self.record_violation(zero, "clean", flips)
        for s, name in enumerate(cfg.searches):
            if claim.violation:
                break
            found = Found(zero.clone(), int(margin_of(oracle.base_counts.cpu(), claim.prediction)[0]))
            if claim.steps > 0:
                SEARCH_FUNCTIONS[name](oracle, claim.steps, cfg.budget, self.rng(10 + s), found)
            claim.margins[name] = found.best_margin / oracle.num
            if self.exact:
                candidate = found.smallest_flip()
            else:
                candidate = found.best if found.best_margin < 0 else None
            if candidate is not None:
                self.record_violation(candidate, name, flips)
        for attack in self.attacks:
            if claim.violation or claim.steps == 0:
                break
            # inside the radius: exact noises up to it (the certificate's claim is inclusive), else strictly inside
            max_norm = claim.steps / cfg.grid if claim.norm == "l1" else claim.radius
            delta = self.run_attack(attack, max_norm)
            if delta is not None and norm_of(delta, claim.norm, cfg.grid) <= claim.radius:
                self.record_violation(delta, attack.name, flips)
        if cfg.tightness:
            self.tightness(flips)
        claim.forward_passes = oracle.forward
        claim.seconds = round(time.perf_counter() - t0, 4)
        return claim

    def run_attack(self, attack: Any, max_norm: float | None) -> torch.Tensor | None:
        """The attack's flip within ``max_norm`` (L1) as grid steps, or None. Its forward passes count in the
        audit's."""
        target = AttackTarget(
            self.smoothed, self.oracle.x, self.claim.prediction, index=self.claim.index, seed=self.cfg.seed
        )
        x_adv = attack.run(target, max_norm=max_norm, stop=self.cfg.attack_budget)
        self.oracle.forward += target.forward
        if x_adv is None:
            return None
        moved = (x_adv.detach().cpu().double() - self.oracle.x.detach().cpu().double()).reshape(
            -1
        ) * self.cfg.grid
        # on the grid: whole steps, rounded, or towards the image where rounding would leave the ball (a
        # Monte-Carlo attack's flip sits on the ball's edge, off the grid); off it (continuous images): towards
        # the image
        towards = torch.trunc(moved + torch.sign(moved) * 1e-4).long()
        delta = torch.round(moved).long() if self.oracle.on_grid else towards
        if max_norm is not None and int(delta.abs().sum()) > round(max_norm * self.cfg.grid):
            delta = towards
        return torch.minimum(torch.maximum(delta, -self.oracle.down), self.oracle.up)

    def record_violation(self, delta: torch.Tensor, search: str, flips: list) -> None:
        claim = self.claim
        if self.exact:
            cls = self.confirm_exact(delta)
            ok = cls != claim.prediction
            evidence = f"exact counts over all {self.oracle.num} draws predict {cls}"
        else:
            ok, cls, evidence = self.test_mc(delta)
        if ok:
            claim.violation, claim.violation_search, claim.violation_class = True, search, cls
            claim.violation_norm, claim.evidence = norm_of(delta, claim.norm, self.cfg.grid), evidence
            claim.perturbation = self.as_image(delta)
            flips.append((delta, search))

    def tightness(self, flips: list[tuple[torch.Tensor, str]]) -> None:
        """Search beyond the radius (unless a violation already flips) with the search that came closest
        inside it, at an L1 cap of twice the radius (half the budget) and then in the whole box (the budget), and
        with every attack; shrink each flip found, smallest first, and keep the first that a confirmation
        verifies (the shrunk flip, it grown by 5% to 50%, the flip itself: smallest first)."""
        cfg, oracle, claim = self.cfg, self.oracle, self.claim
        candidates = list(flips)
        if not candidates:
            # near the radius: the search that came closest to a flip inside it (random last on ties); in the
            # whole box: the gradient search, whose first move sends every pixel against the gradient
            closest = min(cfg.searches, key=lambda n: (claim.margins.get(n, math.inf), n == "random"))
            room = oracle.total_room()
            phases = [
                (min(2 * max(claim.steps, 1), room), closest, cfg.budget // 2),
                (room, "gradient" if "gradient" in cfg.searches else closest, cfg.budget),
            ]
            for j, (cap, name, share) in enumerate(phases):
                found = Found(torch.zeros(oracle.d, dtype=torch.long), 1 << 62)
                SEARCH_FUNCTIONS[name](oracle, cap, max(1, share), self.rng(20 + j), found)
                flip = found.smallest_flip()
                if flip is not None:
                    candidates.append((flip, name))
                    break
        for attack in self.attacks:  # the attacks' smallest flips anywhere
            delta = self.run_attack(attack, None)
            if delta is not None and int(delta.abs().sum()) > 0:
                candidates.append((delta, attack.name))
        if not candidates:
            return
        tried = 0
        for delta, name in sorted(candidates, key=lambda c: int(c[0].abs().sum())):  # smallest first
            if not self.exact and tried >= CONFIRMATIONS:
                return
            shrunk = shrink(oracle, delta, max(cfg.budget, 6 * oracle.cost(1)))
            # the bisection stops at the edge on the search's draws, where a test on fresh draws cannot reject
            # (Monte-Carlo), so the shrunk perturbation scaled up by 5% to 50% is tried before the original flip
            grown = [
                torch.minimum(torch.maximum((shrunk.double() * f).round().long(), -oracle.down), oracle.up)
                for f in (1.05, 1.15, 1.3, 1.5)
            ]
            # smallest first: an attack's flip is often already at the edge, so its grown versions come before it
            options = sorted([shrunk, *grown, delta], key=lambda o: int(o.abs().sum()))
            options = [o for j, o in enumerate(options) if not any(torch.equal(o, p) for p in options[:j])]
            for option in options:
                tried += 1
                if self.flips(option, tried):
                    claim.smallest_flip = norm_of(option, claim.norm, cfg.grid)
                    claim.flip = self.as_image(option)
                    claim.flip_search = name
                    claim.tightness = (
                        claim.radius / claim.smallest_flip if claim.smallest_flip > 0 else math.inf
                    )
                    return


# -- the public functions ------------------------------------------------------------------------------------
def audit_attacks(noise: Any, cfg: AuditConfig) -> list[Any]:
    """The attacks an audit runs: ``cfg.attacks`` (None: every one that applies to ``noise``; empty: none)."""
    return attacks_for(noise, cfg.attacks) if cfg.attacks != () else []


def statement(smoothed: SmoothedClassifier, cfg: AuditConfig, num_images: int, num_attacks: int = 0) -> str:
    """The sentence that defines a violation for this audit (printed by the CLI, stored with the results)."""
    if smoothed.noise.exact:
        return EXACT_STATEMENT.format(grid=cfg.grid)
    return MC_STATEMENT.format(
        n_test=cfg.n_test,
        alpha=cfg.alpha,
        classes=smoothed.num_classes,
        tests=max(1, num_images * (len(cfg.searches) + num_attacks)),
    )


def audit_claims(
    smoothed: SmoothedClassifier,
    x: torch.Tensor,
    prediction: Sequence[int] | torch.Tensor,
    radius: Sequence[float] | torch.Tensor,
    *,
    norm: str | None = None,
    certificate: str = "",
    indices: Sequence[int] | None = None,
    labels: Sequence[int] | None = None,
    config: AuditConfig | None = None,
    on_image: Callable[[ImageAudit], None] | None = None,
) -> AuditReport:
    """Audit the claims "the smoothed prediction is ``prediction[i]`` within ``radius[i]`` of ``x[i]``".

    Abstentions (``-1``) and NaN radii claim nothing and are skipped. ``indices`` (default ``0 ..``) key each
    image's random streams, so an audit is reproducible. Returns one :class:`ImageAudit` per audited image;
    the module docstring says what a violation is and what the tightness guarantees.
    """
    cfg = (config or AuditConfig()).check()
    smoothed.noise.check_input(x)
    norm = norm or smoothed.noise.norm
    if norm not in NORMS:
        raise ConfigError(f"the audit knows the norms {', '.join(NORMS)}, not {norm!r}")
    prediction = [int(p) for p in torch.as_tensor(prediction).reshape(-1).tolist()]
    radius = [float(r) for r in torch.as_tensor(radius, dtype=torch.float64).reshape(-1).tolist()]
    indices = list(range(len(x))) if indices is None else [int(i) for i in indices]
    labels = [-1] * len(x) if labels is None else [int(v) for v in labels]
    if not len(prediction) == len(radius) == len(indices) == len(labels) == len(x):
        raise ConfigError(f"need one prediction, radius, index and label per image ({len(x)} images)")
    if any(p >= smoothed.num_classes or p < ABSTAIN for p in prediction):
        raise DataError(
            f"predictions must be classes 0..{smoothed.num_classes - 1} or -1 (abstain), got {prediction}"
        )
    keep = [
        i for i in range(len(x)) if prediction[i] != ABSTAIN and math.isfinite(radius[i]) and radius[i] >= 0
    ]
    attacks = audit_attacks(smoothed.noise, cfg)
    images = []
    for i in keep:
        claim = ImageAudit(
            index=indices[i],
            prediction=prediction[i],
            radius=radius[i],
            norm=norm,
            certificate=certificate,
            label=labels[i],
        )
        tests = len(keep) * (len(cfg.searches) + len(attacks))
        images.append(_ImageAuditor(smoothed, x[i : i + 1], claim, cfg, tests, attacks).run())
        if on_image is not None:
            on_image(images[-1])
    text = statement(smoothed, cfg, len(keep), len(attacks))
    return AuditReport(images, text, cfg, bool(smoothed.noise.exact))


def audit(
    smoothed: SmoothedClassifier,
    x: torch.Tensor,
    *,
    certificate: str | None = None,
    n0: int = 64,
    n: int = 10_000,
    alpha: float = 0.001,
    indices: Sequence[int] | None = None,
    labels: Sequence[int] | None = None,
    config: AuditConfig | None = None,
) -> AuditReport:
    """Certify ``x`` with ``smoothed`` (``certificate``, and ``n0``, ``n``, ``alpha`` for Monte-Carlo noises),
    then audit every certified image (see :func:`audit_claims`)."""
    result = smoothed.certify(x, n0=n0, n=n, alpha=alpha, indices=indices, certificate=certificate)
    return audit_claims(
        smoothed,
        x,
        result.prediction,
        result.radius,
        norm=result.norm,
        certificate=result.certificate,
        indices=indices,
        labels=labels,
        config=config,
    )


# -- experiment folders --------------------------------------------------------------------------------------
@dataclass
class ExperimentAudit:
    """The audit of one result table of an experiment folder, and where it was written."""

    report: AuditReport
    attacks: list[Any]
    tag: str
    table: Path
    output: Path
    noise: str
    certificate: str


def audit_experiment(
    run_dir: str | Path,
    *,
    tag: str | None = None,
    limit: int | None = 5,
    config: AuditConfig | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    max_batch: int | str = "auto",
    on_image: Callable[[ImageAudit], None] | None = None,
    trust_checkpoint: bool = False,
) -> ExperimentAudit:
    """Audit the first ``limit`` certified (non-abstaining) images of ``certify_<tag>.csv`` in ``run_dir``:
    the classifier, denoiser and noise are those the certification used (:func:`smoothcore.runner.reopen`), the
    claims are the table's predictions and radii. Writes ``audit_<tag>.csv`` (one row per image) and
    ``audit_<tag>.json`` (configuration, statement, summary) into the folder. ``trust_checkpoint``: as for
    certification, allow legacy pickled checkpoints."""
    from smoothcore.data import fetch
    from smoothcore.fileio import atomic_write, atomic_write_json
    from smoothcore.results import load_results
    from smoothcore.runner import reopen

    cfg = (config or AuditConfig()).check()
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer, got {limit!r}")
    run = reopen(
        run_dir, tag, data_dir=data_dir, device=device, max_batch=max_batch, trust_checkpoint=trust_checkpoint
    )
    table = load_results(run.table)
    rows = table[(table["prediction"] != ABSTAIN) & np.isfinite(table["radius"].to_numpy(dtype=float))]
    if not len(rows):
        raise ExperimentError(f"{run.table.name} has no certified (non-abstaining) images to audit")
    rows = rows.head(limit) if limit is not None else rows
    indices = [int(i) for i in rows["index"]]
    x, _ = fetch(run.test_set, indices)
    certificate = str(run.record.certificate)
    report = audit_claims(
        run.smoothed,
        x,
        rows["prediction"].astype(int).tolist(),
        rows["radius"].astype(float).tolist(),
        norm=str(rows["norm"].iloc[0]),
        certificate=certificate,
        indices=indices,
        labels=rows["label"].astype(int).tolist(),
        config=cfg,
        on_image=on_image,
    )
    output = run.exp.path / f"audit_{run.tag}.csv"
    frame = report.frame()
    atomic_write(output, lambda f: frame.to_csv(f, index=False), mode="w")
    atomic_write_json(
        output.with_suffix(".json"),
        {
            "table": run.table.name,
            "statement": report.statement,
            "config": asdict(cfg),
            "summary": report.summary(),
        },
    )
    attacks = audit_attacks(run.smoothed.noise, cfg)
    return ExperimentAudit(report, attacks, run.tag, run.table, output, run.smoothed.noise.name, certificate)
