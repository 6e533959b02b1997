"""Auditing certificates: search for perturbations inside certified radii that change the smoothed prediction.

A certificate claims that the smoothed classifier predicts ``A`` at every ``x' = x + delta`` with
``||delta||`` within ``radius``. The auditor searches for a counterexample and reports how tight the claim is.

Perturbations live on a grid: every ``delta_i`` is a multiple of ``1 / grid`` (``grid = 255``, the pixel grid
that DSSN certifies) and ``x'`` stays in ``[0, 1]^d``. Three searches spend a budget of base-classifier
evaluations:

- ``random``: sparse random perturbations that spend the whole L1 budget (random pixels, signs and split);
- ``greedy``: move, one step at a time, the pixel and direction whose step most reduces the margin
  ``c_A - max_{j != A} (c_j + [j < A])`` (the prediction changes exactly when it is negative) under recomputed
  counts; pixels are pre-screened by the gradient of the surrogate below when there are many;
- ``gradient``: L1 steepest descent on a smooth surrogate, the base classifier's soft margin
  ``logit_A - logsumexp_{c != A} logit_c`` averaged over draws, differentiated through the noise as if it were
  the identity (straight-through: splitting noise is piecewise constant in ``x``).

Candidates are evaluated on a fixed set of draws, and only the draws that a perturbation changes are passed
through the model again (a DSSN draw changes only where a cell boundary falls between ``x_i`` and ``x'_i``).

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
perturbation found to change the prediction (exact: recomputed over all draws; Monte-Carlo: the test above on
``n_test`` fresh draws, its bounds at level ``alpha / C`` for this one confirmation), and
``tightness = radius / smallest_flip``. Since the true smallest flip can only be smaller, ``tightness`` is a
lower bound on the true ratio (Monte-Carlo: unless a confirmation errs, which each does with probability at
most ``alpha``). For exact noises it exceeds 1 only with a violation, and for DSSN it is at most
``radius / (radius + 1/255)`` when the certificate is sound.

Cost per image, in base-classifier evaluations: the base draws (all ``num_draws``, or ``n_search``); at most
``budget`` per search inside the radius, ``1.5 budget`` beyond it and ``max(budget, 6 n_search)`` to shrink
(exact: ``budget``), each plus at most one round of candidates; and confirmations of ``num_draws`` or
``n_test`` draws (one per search for violations; for the smallest flip one if exact, at most six if
Monte-Carlo). A gradient over ``n`` draws counts ``3 n``; a candidate all of whose noisy draws were already
classified counts 1.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from smoothcore.certificates import ABSTAIN
from smoothcore.certify import SmoothedClassifier
from smoothcore.engine import DrawStream
from smoothcore.errors import ConfigError, DataError, ExperimentError
from smoothcore.noise import is_quantised
from smoothcore.stats import clopper_pearson_lower, clopper_pearson_upper

SEARCHES = ("random", "greedy", "gradient")
NORMS = ("l1", "l2", "linf")
CHUNK_ELEMENTS = 1 << 24  # at most this many noisy pixel values are held at once per evaluation
CACHE_ENTRIES = 1 << 18  # classes of noisy draws remembered per image
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


# -- configuration and results -------------------------------------------------------------------------------
@dataclass
class AuditConfig:
    """How hard to search.

    ``budget``: base-classifier evaluations per image and search inside the radius (1.5 times as many beyond
    it, and as many to shrink the smallest flip). ``grid``: perturbations are multiples of ``1 / grid`` per
    pixel. ``pool``: pixels the greedy search tries per step. ``grad_draws``: draws behind each gradient.
    Monte-Carlo: ``n_search`` draws for the search's estimates, ``n_test`` fresh draws per test, ``alpha`` the
    family-wise level of the tests.
    """

    searches: tuple[str, ...] = SEARCHES
    budget: int = 300
    tightness: bool = True
    seed: int = 0
    grid: int = 255
    pool: int = 12
    grad_draws: int = 16
    n_search: int = 128
    n_test: int = 1000
    alpha: float = 0.01

    def check(self) -> AuditConfig:
        searches = tuple(self.searches)
        unknown = [s for s in searches if s not in SEARCHES]
        if not searches or unknown:
            raise ConfigError(
                f"searches must be a non-empty subset of {', '.join(SEARCHES)}, "
                f"got {', '.join(searches) or '(none)'}"
            )
        for name in ("budget", "grid", "pool", "grad_draws", "n_search", "n_test"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"audit {name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ConfigError(f"audit seed must be an integer in [0, 2**63), got {self.seed!r}")
        if not 0.0 < float(self.alpha) < 0.5:
            raise ConfigError(f"audit alpha must be in (0, 0.5), got {self.alpha!r}")
        self.searches = tuple(dict.fromkeys(searches))
        return self


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


# -- helpers -------------------------------------------------------------------------------------------------
def norm_of(delta: torch.Tensor, norm: str, grid: int) -> float:
    """Norm of a perturbation given in grid steps."""
    d = delta.double().abs() / grid
    if norm == "l1":
        return float(d.sum())
    if norm == "l2":
        return float(d.pow(2).sum().sqrt())
    if norm == "linf":
        return float(d.max()) if d.numel() else 0.0
    raise ConfigError(f"the audit knows the norms {', '.join(NORMS)}, not {norm!r}")


def steps_within(radius: float, grid: int, *, inclusive: bool) -> int:
    """The largest L1 norm, in grid steps, inside ``radius``: ``<= radius`` when ``inclusive``, else
    ``< radius``."""
    if not math.isfinite(radius) or radius <= 0:
        return 0
    v = radius * grid
    return max(0, math.floor(v + 1e-6) if inclusive else math.ceil(v - 1e-6) - 1)


def _generator(device: torch.device, *keys: int) -> torch.Generator:
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(2, np.uint32)
    g = torch.Generator(device=device)
    g.manual_seed((int(state[0]) << 31) ^ int(state[1]))
    return g


def margin_of(counts: torch.Tensor, top: int) -> torch.Tensor:
    """``c_A - max_{j != A} (c_j + [j < A])`` per row of ``counts`` ``(m, C)``: ``A`` stays the prediction
    (argmax, ties to the lowest index) exactly when this is >= 0."""
    counts = counts.long()
    rivals = counts + (torch.arange(counts.shape[1], device=counts.device) < top).long()
    rivals[:, top] = torch.iinfo(torch.long).min
    return counts[:, top] - rivals.max(dim=1).values


# -- evaluating candidates -----------------------------------------------------------------------------------
class _Oracle:
    """Margins of grid perturbations of one image on a fixed set of draws (all of them for exact noises,
    ``n_search`` common random numbers otherwise), re-evaluating only the draws a perturbation changes."""

    def __init__(
        self, smoothed: SmoothedClassifier, x: torch.Tensor, top: int, cfg: AuditConfig, index: int
    ) -> None:
        self.noise, self.engine, self.cfg, self.top = smoothed.noise, smoothed.engine, cfg, top
        self.device = self.engine.device
        self.shape = tuple(x.shape[1:])
        self.x = x.to(self.device)
        self.d = x[0].numel()
        self.grid = cfg.grid
        self.index = index
        self.exact = bool(self.noise.exact)
        self.num = self.noise.num_draws if self.exact else cfg.n_search
        self.search_keys = (cfg.seed, index, 1)
        flat = x.detach().cpu().double().reshape(-1)
        self.on_grid = is_quantised(x, self.grid)
        if self.on_grid:
            self.x_steps = (flat * self.grid).round().long()
            self.up, self.down = self.grid - self.x_steps, self.x_steps.clone()
        else:
            self.x_steps = None
            self.up = torch.floor((1.0 - flat) * self.grid + 1e-9).long().clamp(min=0)
            self.down = torch.floor(flat * self.grid + 1e-9).long().clamp(min=0)
        self.spent = 0  # the budget's unit: forward passes, plus one per candidate evaluated
        self.forward = 0  # forward passes of the base classifier (a gradient over n draws counts 3 n)
        self.cache: dict[tuple[int, bytes], int] = {}
        self.base = self._draws(self.x)[0]
        self.base_classes = self._classify(self.base)
        self.base_counts = torch.bincount(self.base_classes, minlength=self.engine.num_classes).unsqueeze(0)

    # the images and their draws
    def images(self, deltas: torch.Tensor) -> torch.Tensor:
        deltas = deltas.to(self.device)
        if self.x_steps is not None:  # the dataset's own arithmetic: integer grey levels divided by the grid
            out = (self.x_steps.to(self.device) + deltas).to(self.x.dtype) / self.grid
        else:
            out = (self.x.reshape(1, -1).double() + deltas.double() / self.grid).clamp(0.0, 1.0)
            out = out.to(self.x.dtype)
        return out.reshape(len(deltas), *self.shape)

    def _draws(self, xs: torch.Tensor) -> torch.Tensor:
        if self.exact:
            return self.noise.draws(xs, 0, self.num)
        out = []
        for img in xs:
            g = _generator(self.device, *self.search_keys)
            out.append(self.noise.sample(img.unsqueeze(0).expand(self.num, *self.shape), g))
        return torch.stack(out)

    def _classify(self, batch: torch.Tensor) -> torch.Tensor:
        step = self.engine.max_batch
        parts = [self.engine.classify(batch[i : i + step]) for i in range(0, len(batch), step)]
        if parts:  # NaN logits would read as class 0: no verdict either way
            self.engine.finish_checks(self.noise)
        self.spent += len(batch)
        self.forward += len(batch)
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long, device=self.device)

    def counts(self, deltas: torch.Tensor) -> torch.Tensor:
        """Counts ``(m, C)`` of the candidates ``deltas`` ``(m, d)`` (grid steps) on the oracle's draws."""
        rows = max(1, CHUNK_ELEMENTS // max(1, self.num * self.d))
        out = []
        for i in range(0, len(deltas), rows):
            draws = self._draws(self.images(deltas[i : i + rows]))
            changed = (draws != self.base.unsqueeze(0)).flatten(2).any(dim=2)
            classes = self.base_classes.unsqueeze(0).expand(len(draws), -1).clone()
            self.spent += len(draws)  # a candidate costs at least one unit, even if all its draws are known
            if bool(changed.any()):
                classes[changed] = self._classify_cached(draws[changed], changed.nonzero()[:, 1])
            counts = torch.zeros(len(draws), self.engine.num_classes, dtype=torch.long, device=self.device)
            out.append(counts.scatter_add_(1, classes, torch.ones_like(classes)))
        return torch.cat(out).cpu()

    def _classify_cached(self, noisy: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
        """Classes of changed draws; a noisy image already classified (same draw, same bytes) is not evaluated
        again, so overlapping candidates (bisection, steps of one pixel) cost only their new draws."""
        host = noisy.detach().reshape(len(noisy), -1).cpu().numpy()
        keys = [
            (int(k), hashlib.blake2b(row.tobytes(), digest_size=16).digest())
            for k, row in zip(draw.tolist(), host)
        ]
        missing = [j for j, key in enumerate(keys) if key not in self.cache]
        if missing:
            new = self._classify(noisy[torch.tensor(missing, device=noisy.device)]).tolist()
            if len(self.cache) + len(missing) > CACHE_ENTRIES:
                self.cache.clear()
            self.cache.update({keys[j]: c for j, c in zip(missing, new)})
        return torch.tensor([self.cache[key] for key in keys], dtype=torch.long, device=self.device)

    def cost(self, step: int) -> int:
        """Most draws a single-pixel move of ``step`` grid steps can change (an upper estimate of its
        cost)."""
        return min(self.num, max(1, step)) if self.exact else self.num

    def margins(self, deltas: torch.Tensor) -> torch.Tensor:
        return margin_of(self.counts(deltas), self.top)

    def gradient(self, delta: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Gradient (d,) of the surrogate margin at ``x + delta``, through the noise as the identity."""
        k = min(self.cfg.grad_draws, self.num)
        xs = self.images(delta.unsqueeze(0))
        with torch.no_grad():
            if self.exact:  # a random block of k consecutive draws
                start = int(rng.integers(0, self.num - k + 1))
                draws = self.noise.draws(xs, start, start + k)[0]
            else:
                g = _generator(self.device, *self.search_keys, int(rng.integers(1 << 30)))
                draws = self.noise.sample(xs.expand(k, *self.shape), g)
        xv = xs.detach().clone().requires_grad_(True)
        model = self.engine.model
        with torch.enable_grad(), self.engine.evaluating():
            logits = model(draws + (xv - xv.detach())).float()
            others = torch.cat([logits[:, : self.top], logits[:, self.top + 1 :]], dim=1)
            surrogate = (logits[:, self.top] - torch.logsumexp(others, dim=1)).mean()
            (grad,) = torch.autograd.grad(surrogate, xv)
        self.spent += 3 * k
        self.forward += 3 * k
        return grad.detach().reshape(-1).double().cpu()

    # the box, given a current perturbation
    def room(self, delta: torch.Tensor, sign: int) -> torch.Tensor:
        return (self.up - delta) if sign > 0 else (self.down + delta)

    def total_room(self) -> int:
        return int(torch.maximum(self.up, self.down).sum())


# -- the searches --------------------------------------------------------------------------------------------
@dataclass
class _Found:
    """What one search found: its lowest-margin candidate and any flipping ones (margin < 0)."""

    best: torch.Tensor
    best_margin: int
    flips: list[torch.Tensor] = field(default_factory=list)

    def add(self, deltas: torch.Tensor, margins: torch.Tensor) -> bool:
        j = int(margins.argmin())
        if int(margins[j]) < self.best_margin:
            self.best, self.best_margin = deltas[j].clone(), int(margins[j])
        for i in torch.nonzero(margins < 0).flatten().tolist():
            self.flips.append(deltas[i].clone())
        return bool((margins < 0).any())

    def smallest_flip(self) -> torch.Tensor | None:
        return min(self.flips, key=lambda t: int(t.abs().sum())) if self.flips else None


def _random_search(oracle: _Oracle, cap: int, budget: int, rng: np.random.Generator, found: _Found) -> None:
    """Sparse random perturbations of L1 norm ``cap`` (less where the box clips them), up to 8 per round."""
    stop = oracle.spent + budget
    up, down, d = oracle.up.numpy(), oracle.down.numpy(), oracle.d
    while oracle.spent < stop:
        rows = int(np.clip((stop - oracle.spent) // oracle.cost(cap), 1, 8))
        deltas = torch.zeros(rows, d, dtype=torch.long)
        for row in deltas:
            k_max = max(1, min(d, cap))
            k = int(np.clip(round(2 ** rng.uniform(0, math.log2(k_max))), 1, k_max))
            pix = rng.choice(d, size=k, replace=False)
            sign = rng.choice([-1, 1], size=k)
            room, other = np.where(sign > 0, up[pix], down[pix]), np.where(sign > 0, down[pix], up[pix])
            swap = (room == 0) & (other > 0)
            sign, room = np.where(swap, -sign, sign), np.where(swap, other, room)
            amounts = np.minimum(rng.multinomial(cap, rng.dirichlet(np.ones(k))), room)
            row[torch.from_numpy(pix)] = torch.from_numpy(sign * amounts).long()
        if found.add(deltas, oracle.margins(deltas)):
            return


def _pool(oracle: _Oracle, delta: torch.Tensor, rng: np.random.Generator) -> list[int]:
    """Pixels the greedy search tries: all of them for small images, else the largest surrogate gradients and
    a few random ones."""
    size = oracle.cfg.pool
    if oracle.d <= size:
        return list(range(oracle.d))
    g = oracle.gradient(delta, rng).abs()
    top = torch.argsort(g, descending=True)[: max(1, size - size // 4)].tolist()
    rest = [int(i) for i in rng.choice(oracle.d, size=size, replace=False) if int(i) not in top]
    return top + rest[: size - len(top)]


def _greedy_search(oracle: _Oracle, cap: int, budget: int, rng: np.random.Generator, found: _Found) -> None:
    """Repeatedly take the single-pixel step (of the remaining budget or a quarter of it) with the largest
    margin reduction per grid step, until a flip, the L1 cap, the evaluation budget, or no step helps. Each
    round tries the pool's pixels in order while the estimated cost fits the budget (at least one pixel)."""
    stop = oracle.spent + budget
    delta = torch.zeros(oracle.d, dtype=torch.long)
    margin, used = int(oracle.margins(delta.unsqueeze(0))[0]), 0
    found.add(delta.unsqueeze(0), torch.tensor([margin]))
    while used < cap and oracle.spent < stop and margin >= 0:
        rem = cap - used
        sizes = sorted({rem, max(1, -(-rem // 4))})
        cands, cost, planned = [], [], 0
        for i in _pool(oracle, delta, rng):
            if len(cands) >= 2 and planned >= stop - oracle.spent:
                break
            for sign in (1, -1):
                room = int(oracle.room(delta, sign)[i])
                for s in sorted({min(size, room) for size in sizes if room > 0}):
                    c = delta.clone()
                    c[i] += sign * s
                    cands.append(c)
                    cost.append(s)
                    planned += oracle.cost(s)
        if not cands:
            return
        deltas = torch.stack(cands)
        margins = oracle.margins(deltas)
        if found.add(deltas, margins):
            return
        steps = torch.tensor(cost, dtype=torch.float64)
        gain = (margin - margins).double() / steps
        j = int(torch.argmax(gain + 1e-9 * steps))
        if gain[j] <= 0:
            return
        delta, margin, used = deltas[j], int(margins[j]), used + cost[j]


def _fill(
    delta: torch.Tensor, order: Sequence[int], signs: torch.Tensor, rooms: torch.Tensor, amount: int
) -> torch.Tensor:
    """``delta`` plus ``amount`` grid steps spread along ``order``, each pixel as far as its room allows."""
    out = delta.clone()
    for i in order:
        if amount <= 0:
            break
        s = min(amount, int(rooms[i]))
        out[i] += int(signs[i]) * s
        amount -= s
    return out


def _gradient_search(oracle: _Oracle, cap: int, budget: int, rng: np.random.Generator, found: _Found) -> None:
    """L1 steepest descent on the surrogate: each round tries the remaining budget spread over the pixels with
    the largest gradients (the linear model's best move) and a quarter-step on them, then keeps the step."""
    stop = oracle.spent + budget
    delta = torch.zeros(oracle.d, dtype=torch.long)
    used = 0
    while used < cap and oracle.spent < stop:
        g = oracle.gradient(delta, rng)
        signs = torch.where(g > 0, -1, 1).long()  # lower the surrogate margin
        rooms = torch.where(signs > 0, oracle.room(delta, 1), oracle.room(delta, -1))
        score = torch.where(rooms > 0, g.abs(), torch.full_like(g, -1.0))
        order = [i for i in torch.argsort(score, descending=True).tolist() if score[i] > 0]
        if not order:
            return
        rem = cap - used
        step = max(1, -(-rem // 4))
        deltas = torch.stack([_fill(delta, order, signs, rooms, amount) for amount in (rem, step)])
        if found.add(deltas, oracle.margins(deltas)):
            return
        delta, used = deltas[1], used + int((deltas[1] - delta).abs().sum())


SEARCH_FUNCTIONS: dict[str, Callable[[_Oracle, int, int, np.random.Generator, _Found], None]] = {
    "random": _random_search,
    "greedy": _greedy_search,
    "gradient": _gradient_search,
}


def _shrink(oracle: _Oracle, delta: torch.Tensor, budget: int) -> torch.Tensor:
    """A flipping perturbation no larger than ``delta`` (which flips on the oracle's draws): bisection on a
    common scale factor, then dropping pixels one at a time while it still flips."""
    stop = oracle.spent + budget
    best = delta.clone()

    def flips(c: torch.Tensor) -> bool:
        return int(oracle.margins(c.unsqueeze(0))[0]) < 0

    def scaled(t: float) -> torch.Tensor:
        return torch.trunc(best.double() * t).long()

    lo, hi = 0.0, 1.0
    while (hi - lo) * float(best.abs().sum()) > 0.5 and oracle.spent < stop:
        mid = (lo + hi) / 2
        if flips(scaled(mid)):
            hi = mid
        else:
            lo = mid
    best = scaled(hi) if hi < 1.0 else best
    for i in sorted(torch.nonzero(best).flatten().tolist(), key=lambda j: abs(int(best[j])))[:32]:
        if oracle.spent >= stop:
            break
        c = best.clone()
        c[i] = 0
        if int(c.abs().sum()) and flips(c):
            best = c
    return best


# -- one image -----------------------------------------------------------------------------------------------
class _ImageAuditor:
    def __init__(
        self,
        smoothed: SmoothedClassifier,
        x: torch.Tensor,
        claim: ImageAudit,
        cfg: AuditConfig,
        tests_total: int,
    ) -> None:
        self.smoothed, self.claim, self.cfg, self.tests_total = smoothed, claim, cfg, tests_total
        self.oracle = _Oracle(smoothed, x, claim.prediction, cfg, claim.index)
        self.exact = self.oracle.exact
        self.tests_done = 0

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

    def fresh_counts(self, delta: torch.Tensor, key: int) -> torch.Tensor:
        stream = DrawStream(self.cfg.seed, self.claim.index, 2, key)
        moved = self.oracle.images(delta.unsqueeze(0))
        counts = self.smoothed.engine.sampled_counts(self.smoothed.noise, moved, self.cfg.n_test, [stream])
        self.oracle.spent += self.cfg.n_test
        self.oracle.forward += self.cfg.n_test
        return counts.cpu()[0]

    def test_mc(
        self, delta: torch.Tensor, *, tests: int | None = None, key: int | None = None
    ) -> tuple[bool, int, str]:
        """The Monte-Carlo violation test of the module docstring on fresh draws: does some class beat ``A``
        at ``x + delta``, each one-sided bound at level ``alpha / (C * tests)`` (default: the audit's
        ``M``)?"""
        if key is None:
            self.tests_done += 1
            key = self.tests_done
        counts = self.fresh_counts(delta, key)
        top, n, classes = self.claim.prediction, self.cfg.n_test, len(counts)
        level = self.cfg.alpha / (classes * (tests or self.tests_total))  # one-sided level of each bound
        upper_a = float(clopper_pearson_upper(int(counts[top]), n, 2 * level))
        others = [c for c in range(classes) if c != top]
        lowers = np.asarray(clopper_pearson_lower(counts[others].numpy(), n, 2 * level), dtype=np.float64)
        lowers = lowers.reshape(-1)
        j = int(lowers.argmax())
        rival = others[j]
        evidence = (
            f"n={n}: k_A={int(counts[top])} (upper {upper_a:.4f}) vs k_{rival}={int(counts[rival])} "
            f"(lower {lowers[j]:.4f}), level {level:.3g} per bound"
        )
        return bool(lowers[j] > upper_a), rival, evidence

    def flips(self, delta: torch.Tensor, key: int) -> bool:
        """Exact: the prediction recomputed over all draws is not ``A``. Monte-Carlo: the test of the module
        docstring rejects "still ``A``" on fresh draws, its bounds at level ``alpha / C`` (one
        confirmation)."""
        if self.exact:
            return self.confirm_exact(delta) != self.claim.prediction
        return self.test_mc(delta, tests=1, key=1000 + key)[0]

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
            found = _Found(zero.clone(), int(margin_of(oracle.base_counts.cpu(), claim.prediction)[0]))
            if claim.steps > 0:
                SEARCH_FUNCTIONS[name](oracle, claim.steps, cfg.budget, self.rng(10 + s), found)
            claim.margins[name] = found.best_margin / oracle.num
            if self.exact:
                candidate = found.smallest_flip()
            else:
                candidate = found.best if found.best_margin < 0 else None
            if candidate is not None:
                self.record_violation(candidate, name, flips)
        if cfg.tightness:
            self.tightness(flips)
        claim.forward_passes = oracle.forward
        claim.seconds = round(time.perf_counter() - t0, 4)
        return claim

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
        inside it, at an L1 cap of twice the radius (half the budget) and then in the whole box (the budget),
        shrink the smallest flip found and confirm it."""
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
                found = _Found(torch.zeros(oracle.d, dtype=torch.long), 1 << 62)
                SEARCH_FUNCTIONS[name](oracle, cap, max(1, share), self.rng(20 + j), found)
                flip = found.smallest_flip()
                if flip is not None:
                    candidates.append((flip, name))
                    break
        if not candidates:
            return
        delta, name = min(candidates, key=lambda c: int(c[0].abs().sum()))
        shrunk = _shrink(oracle, delta, max(cfg.budget, 6 * oracle.cost(1)))
        # the bisection stops at the edge on the search's draws, where a test on fresh draws cannot reject
        # (Monte-Carlo), so the shrunk perturbation scaled up by 5% to 50% is tried before the original flip
        grown = [
            torch.minimum(torch.maximum((shrunk.double() * f).round().long(), -oracle.down), oracle.up)
            for f in (1.05, 1.15, 1.3, 1.5)
        ]
        options = [shrunk, *[g for g in grown if g.abs().sum() < delta.abs().sum()], delta]
        options = [o for j, o in enumerate(options) if not any(torch.equal(o, p) for p in options[:j])]
        for j, option in enumerate(options):
            if self.flips(option, j):
                claim.smallest_flip = norm_of(option, claim.norm, cfg.grid)
                claim.flip = self.as_image(option)
                claim.flip_search = name
                claim.tightness = claim.radius / claim.smallest_flip if claim.smallest_flip > 0 else math.inf
                return


# -- the public functions ------------------------------------------------------------------------------------
def statement(smoothed: SmoothedClassifier, cfg: AuditConfig, num_images: int) -> str:
    """The sentence that defines a violation for this audit (printed by the CLI, stored with the results)."""
    if smoothed.noise.exact:
        return EXACT_STATEMENT.format(grid=cfg.grid)
    return MC_STATEMENT.format(
        n_test=cfg.n_test,
        alpha=cfg.alpha,
        classes=smoothed.num_classes,
        tests=max(1, num_images * len(cfg.searches)),
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
        images.append(_ImageAuditor(smoothed, x[i : i + 1], claim, cfg, len(keep) * len(cfg.searches)).run())
        if on_image is not None:
            on_image(images[-1])
    return AuditReport(images, statement(smoothed, cfg, len(keep)), cfg, bool(smoothed.noise.exact))


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
    tag: str
    table: Path
    output: Path
    noise: str
    certificate: str


def result_tags(run_dir: str | Path) -> list[str]:
    return sorted(p.name[len("certify_") : -len(".csv")] for p in Path(run_dir).glob("certify_*.csv"))


def choose_tag(run_dir: str | Path, tag: str | None) -> str:
    """``tag`` if given (checked), else the folder's only result table."""
    from smoothcore.experiment import Experiment

    Experiment(run_dir).config()  # an experiment folder, or a clear error
    tags = result_tags(run_dir)
    if tag is not None:
        if tag not in tags:
            raise ExperimentError(
                f"{run_dir} has no result table certify_{tag}.csv; tables: {', '.join(tags) or '(none)'}"
            )
        return tag
    if not tags:
        raise ExperimentError(
            f"{run_dir} has no result tables to audit", hint="certify it first: smoothcore certify RUN_DIR"
        )
    if len(tags) > 1:
        raise ConfigError(
            f"{run_dir} has several result tables ({', '.join(tags)}); which one?", hint="give --tag"
        )
    return tags[0]


def audit_experiment(
    run_dir: str | Path,
    *,
    tag: str | None = None,
    limit: int | None = 5,
    config: AuditConfig | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    max_batch: int = 1024,
    on_image: Callable[[ImageAudit], None] | None = None,
    trust_checkpoint: bool = False,
) -> ExperimentAudit:
    """Audit the first ``limit`` certified (non-abstaining) images of ``certify_<tag>.csv`` in ``run_dir``:
    the classifier, denoiser and noise are loaded as certification loaded them
    (:func:`smoothcore.runner.plan`), the claims are the table's predictions and radii. Writes
    ``audit_<tag>.csv`` (one row per image) and ``audit_<tag>.json`` (configuration, statement, summary) into
    the folder. ``trust_checkpoint``: as for certification, allow legacy pickled checkpoints."""
    from smoothcore.data import fetch, get_dataset
    from smoothcore.fileio import atomic_write, atomic_write_json, read_json
    from smoothcore.results import load_results
    from smoothcore.runner import load_test_set, plan

    cfg = (config or AuditConfig()).check()
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer, got {limit!r}")
    tag = choose_tag(run_dir, tag)
    table_path = Path(run_dir) / f"certify_{tag}.csv"
    meta_path = table_path.with_suffix(".json")
    if not meta_path.is_file():
        raise ExperimentError(
            f"{table_path.name} has no parameters file {meta_path.name}; cannot rebuild its noise"
        )
    from smoothcore.report import check_meta

    meta = check_meta(read_json(meta_path), meta_path)
    try:
        cfg_certify = _certify_config(meta, tag, data_dir, device, max_batch)
    except (TypeError, ValueError, AttributeError) as exc:
        raise ExperimentError(f"certify_{tag}.json is damaged ({exc})") from None
    cfg_certify.trust_checkpoint = trust_checkpoint
    run = plan(run_dir, cfg_certify)
    _check_same_run(run, meta, table_path)
    table = load_results(table_path)
    rows = table[(table["prediction"] != ABSTAIN) & np.isfinite(table["radius"].to_numpy(dtype=float))]
    if not len(rows):
        raise ExperimentError(f"{table_path.name} has no certified (non-abstaining) images to audit")
    rows = rows.head(limit) if limit is not None else rows
    indices = [int(i) for i in rows["index"]]
    x, _ = fetch(load_test_set(get_dataset(run.dataset), run.cfg.data_dir), indices)
    certificate = str(meta.get("certificate", ""))
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
    output = Path(run_dir) / f"audit_{tag}.csv"
    frame = report.frame()
    atomic_write(output, lambda f: frame.to_csv(f, index=False), mode="w")
    atomic_write_json(
        output.with_suffix(".json"),
        {
            "table": table_path.name,
            "statement": report.statement,
            "config": asdict(cfg),
            "summary": report.summary(),
        },
    )
    return ExperimentAudit(report, tag, table_path, output, run.smoothed.noise.name, certificate)


def _certify_config(meta: dict[str, Any], tag: str, data_dir: str | None, device: str, max_batch: int) -> Any:
    """The certification's configuration, rebuilt from its parameters file."""
    params = dict(meta.get("noise") or {})
    if "name" not in params:
        raise ExperimentError(f"certify_{tag}.json does not record its noise")
    # the half-width, when recorded, fixes a uniform-family noise exactly (DSSN's draw count depends on it)
    lambd = params.get("lambda")
    sigma = params.get("sigma") if lambd is None else None
    from smoothcore.runner import CertifyConfig

    seed = int(params.get("seed", 0) or 0)
    return CertifyConfig(
        noise=params["name"],
        sigma=sigma,
        lambd=lambd,
        noise_seed=seed,
        noise_params=dict(meta.get("noise_params") or {}),
        certificate=meta.get("certificate"),
        dataset=meta.get("dataset"),
        denoiser=meta.get("denoiser"),
        data_dir=data_dir,
        device=device,
        max_batch=max_batch,
        tag=tag,
    )


def _check_same_run(run: Any, meta: dict[str, Any], table: Path) -> None:
    """Refuse to audit a table against a classifier or noise other than the ones that produced it."""
    if meta.get("classifier_sha256") and meta["classifier_sha256"] != run.meta["classifier_sha256"]:
        raise ExperimentError(
            f"the classifier changed since {table.name} was certified (checksum differs)",
            hint="certify again, then audit",
        )
    old_data, new_data = meta.get("test_fingerprint"), run.meta.get("test_fingerprint")
    if old_data and new_data and old_data != new_data:
        raise ExperimentError(
            f"the test data differs from the data {table.name} was certified on (fingerprint differs)",
            hint="point --data-dir at the dataset the table was certified on",
        )
    recorded = json.loads(json.dumps(meta.get("noise") or {}))
    current = json.loads(json.dumps(run.smoothed.noise.params()))
    if not _same_params(recorded, current):
        raise ExperimentError(
            f"{table.name} was certified with noise {recorded}, which rebuilds as {current}"
        )


def _same_params(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal keys and values, floats up to rounding (sigma and lambda are derived from each other)."""
    if a.keys() != b.keys():
        return False
    for key, u in a.items():
        v = b[key]
        numbers = isinstance(u, (int, float)) and isinstance(v, (int, float))
        if isinstance(u, float) or isinstance(v, float):
            if not (numbers and math.isclose(u, v, rel_tol=1e-12)):
                return False
        elif u != v:
            return False
    return True
