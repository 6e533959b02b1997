"""The searches of the audit (:mod:`smoothcore.audit`): perturbations of one image on the pixel grid, evaluated
on a fixed set of draws, and how hard to search (:class:`AuditConfig`).

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
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from smoothcore.certify import SmoothedClassifier
from smoothcore.configs import SEARCHES, AuditConfig  # noqa: F401  (re-exported)
from smoothcore.errors import ConfigError
from smoothcore.noises import is_quantised

NORMS = ("l1", "l2", "linf")
CHUNK_ELEMENTS = 1 << 24  # at most this many noisy pixel values are held at once per evaluation
CACHE_ENTRIES = 1 << 18  # classes of noisy draws remembered per image


# -- configuration and results -------------------------------------------------------------------------------
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


def generator(device: torch.device, *keys: int) -> torch.Generator:
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
class Oracle:
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
            g = generator(self.device, *self.search_keys)
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
                g = generator(self.device, *self.search_keys, int(rng.integers(1 << 30)))
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
class Found:
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


def _random_search(oracle: Oracle, cap: int, budget: int, rng: np.random.Generator, found: Found) -> None:
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


def _pool(oracle: Oracle, delta: torch.Tensor, rng: np.random.Generator) -> list[int]:
    """Pixels the greedy search tries: all of them for small images, else the largest surrogate gradients and
    a few random ones."""
    size = oracle.cfg.pool
    if oracle.d <= size:
        return list(range(oracle.d))
    g = oracle.gradient(delta, rng).abs()
    top = torch.argsort(g, descending=True)[: max(1, size - size // 4)].tolist()
    rest = [int(i) for i in rng.choice(oracle.d, size=size, replace=False) if int(i) not in top]
    return top + rest[: size - len(top)]


def _greedy_search(oracle: Oracle, cap: int, budget: int, rng: np.random.Generator, found: Found) -> None:
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


def _gradient_search(oracle: Oracle, cap: int, budget: int, rng: np.random.Generator, found: Found) -> None:
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


SEARCH_FUNCTIONS: dict[str, Callable[[Oracle, int, int, np.random.Generator, Found], None]] = {
    "random": _random_search,
    "greedy": _greedy_search,
    "gradient": _gradient_search,
}


def shrink(oracle: Oracle, delta: torch.Tensor, budget: int) -> torch.Tensor:
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
