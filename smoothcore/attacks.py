"""Attacks on the smoothed classifier: the smallest L1 perturbations that change its prediction, each one verified.

An attack is built by the factory a plugin registers through ``register_attacks`` (``factory(**params)``) and
returns an :class:`Attack`. Given an :class:`AttackTarget` (one image, its smoothed prediction ``A``, and the
smoothed classifier), ``run(target, max_norm=..., stop=...)`` returns the perturbed image ``x'`` with the smallest
L1 distance to ``x`` that it found to change the prediction, or None. Attacks evaluate the base classifier only
through the target, which counts every forward pass (``target.forward``) and stops them at ``stop``.

No attack is believed: :func:`verify` decides whether ``x'`` really changes the smoothed prediction, as the
auditor does:

- **exact noises** (DSSN): the counts over every draw, recomputed from scratch for ``x'`` (which must be on the
  1/255 grid, in ``[0, 1]``), predict another class: a deterministic fact;
- **Monte-Carlo noises**: a rival class ``B`` is chosen on ``PILOT`` fresh draws at ``x'`` (the most frequent class
  other than ``A``); then on ``n_test`` other fresh draws, independent of the attack's and of the pilot's, the
  one-sided Clopper-Pearson lower bound on ``p_B / (p_A + p_B)`` (from the ``k_B`` of the ``k_A + k_B`` draws voting
  for either) at level ``alpha / tries`` exceeds 1/2, i.e. ``p_B(x') > p_A(x')`` (``tries``: the most tests that
  can be made for this image), so the chance that an image gets a flip reported although ``A`` is still the
  prediction at the reported point is at most ``alpha``, however the tests were chosen (each on draws of its own).
  :func:`verified_flip` tests the attack's point, then the same perturbation scaled down while it verifies and the
  budget allows (or, if it did not verify, scaled up). Without a rival named in advance (``verify(..., rival=None)``)
  the test is the auditor's: the upper bound on ``p_A`` below the lower bound on some ``p_c``, each at
  ``alpha / (C * tries)``.

A verified flip of norm ``e`` shows the image is not robust at any radius ``>= e``: the empirical robust accuracy
at radius ``r`` (correct, and no verified flip of norm ``<= r``) is an upper bound on the true robust accuracy, as
the certified accuracy is a lower bound.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from smoothcore.configs import AttackConfig
from smoothcore.errors import ConfigError
from smoothcore.noises import is_quantised
from smoothcore.stats import pair_test, rival_test, strongest_rival
from smoothcore.streams import DrawStream

GRID = 255


class AttackTarget:
    """One image under attack: ``x`` ``(1, *shape)``, the smoothed prediction ``top``, the smoothed classifier.
    Every base-classifier evaluation goes through it and is counted in ``forward`` (a gradient over ``n`` draws
    counts ``3 n``)."""

    def __init__(self, smoothed: Any, x: torch.Tensor, top: int, *, index: int = 0, seed: int = 0) -> None:
        self.smoothed, self.noise, self.engine = smoothed, smoothed.noise, smoothed.engine
        self.device = self.engine.device
        self.x = x.to(self.device)
        self.shape = tuple(x.shape[1:])
        self.d = x[0].numel()
        self.top, self.index, self.seed = int(top), int(index), int(seed)
        self.exact = bool(self.noise.exact)
        self.num_classes = smoothed.num_classes
        self.on_grid = is_quantised(x, GRID)
        self.x_steps = (x.detach().cpu().double().reshape(-1) * GRID).round().long() if self.on_grid else None
        self.forward = 0
        self._key = 0

    # images
    def from_steps(self, delta: torch.Tensor) -> torch.Tensor:
        """``x + delta / 255`` for integer grid steps ``delta`` (d,), with the dataset's arithmetic."""
        assert self.x_steps is not None
        steps = (self.x_steps + delta.cpu()).clamp(0, GRID)
        return (steps.to(self.device).float() / GRID).reshape(1, *self.shape).to(self.x.dtype)

    def to_steps(self, x_adv: torch.Tensor) -> torch.Tensor:
        """The integer grid steps (d,) from ``x`` to ``x'``, both on the 1/255 grid (the inverse of ``from_steps``)."""
        assert self.x_steps is not None
        return (x_adv.detach().cpu().double().reshape(-1) * GRID).round().long() - self.x_steps

    def project_box(self, x_adv: torch.Tensor) -> torch.Tensor:
        """``x'`` clipped to ``[0, 1]`` and, for exact noises, rounded to the 1/255 grid they certify."""
        x_adv = x_adv.clamp(0.0, 1.0)
        if self.exact:
            x_adv = (x_adv.double() * GRID).round().div(GRID).to(self.x.dtype)
        return x_adv

    def l1(self, x_adv: torch.Tensor) -> float:
        """``||x' - x||_1``; between two images on the 1/255 grid, counted in whole grid steps."""
        if self.x_steps is not None and is_quantised(x_adv, GRID):
            return float(self.to_steps(x_adv).abs().sum()) / GRID
        moved = x_adv.detach().cpu().double().reshape(-1)
        return float((moved - self.x.detach().cpu().double().reshape(-1)).abs().sum())

    # the base classifier, counted
    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of noisy images ``z`` (with autograd when ``z`` requires it), in chunks of ``max_batch``."""
        step = self.engine.max_batch
        with self.engine.evaluating():
            parts = [self.engine.model(z[i : i + step]).float() for i in range(0, len(z), step)]
        self.forward += len(z) * (3 if z.requires_grad else 1)
        return torch.cat(parts)

    def counts(self, x_adv: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """Counts ``(C,)`` at ``x'``: over every draw (exact noises) or ``n`` fresh draws (each call its own)."""
        if self.exact:
            counts, _ = self.engine.exact_counts(self.noise, x_adv)
            self.forward += self.noise.num_draws
        else:
            self._key += 1
            stream = DrawStream(self.seed, self.index, 3, self._key)
            counts = self.engine.sampled_counts(self.noise, x_adv, int(n or 256), [stream])
            self.forward += int(n or 256)
        return counts.cpu()[0]

    def seems_to_flip(self, x_adv: torch.Tensor, n: int = 256, level: float | None = None) -> bool:
        """The attack's own check: the top class of the counts at ``x'`` (exact, or ``n`` fresh draws) is not
        ``A``. Exact noises: this is the verdict itself. Monte-Carlo: a point estimate, verified later; with
        ``level``, the rival must also beat ``A`` by the Clopper-Pearson test at that level on these draws (a
        point that clears it is one the verification on more draws is likely to confirm)."""
        counts = self.counts(x_adv, n)
        if level is None or self.exact:
            return int(counts.argmax()) != self.top
        return rival_test(counts.numpy(), self.top, level)[0]

    def soft_margin(
        self, x_adv: torch.Tensor, draws: int, generator: torch.Generator
    ) -> tuple[float, torch.Tensor]:
        """The soft smoothed classifier's log-margin ``log p_A - max_{c != A} log p_c`` (``p``: softmax averaged over
        ``draws`` noisy draws) at ``x'`` and its gradient with respect to ``x'``, through the noise as the identity
        (straight-through: splitting noise is piecewise constant in ``x``)."""
        xv = x_adv.detach().clone().requires_grad_(True)
        with torch.no_grad():
            z = self.noise.sample(xv.detach().expand(draws, *self.shape), generator)
        with torch.enable_grad():
            logits = self.logits(z + (xv - xv.detach()))
            p = torch.softmax(logits, dim=1).mean(0)
            logp = torch.log(p.clamp_min(1e-12))
            others = torch.cat([logp[: self.top], logp[self.top + 1 :]])
            margin = logp[self.top] - others.max()
            (grad,) = torch.autograd.grad(margin, xv)
        return float(margin.detach()), grad.detach()

    def generator(self, *keys: int) -> torch.Generator:
        """A generator of the attack's own draws, keyed by the seed, the image and ``keys``."""
        from smoothcore.audit_search import generator

        return generator(self.device, self.seed, self.index, 4, *keys)


class Attack(ABC):
    """An attack on the smoothed classifier (see the module docstring). ``name`` is set by the registry."""

    name: str = ""

    def applies_to(self, noise: Any) -> bool:
        """Whether the attack can run under ``noise`` (default: every noise)."""
        return True

    def default_for(self, noise: Any) -> bool:
        """Whether it runs under ``noise`` when no attacks are named (default: wherever it applies)."""
        return self.applies_to(noise)

    @abstractmethod
    def run(self, target: AttackTarget, *, max_norm: float | None, stop: int) -> torch.Tensor | None:
        """The perturbed image ``x'`` (shaped like ``target.x``, in ``[0, 1]``; for exact noises on the 1/255
        grid), with ``||x' - x||_1 <= max_norm`` when given, that the attack found to change the prediction and
        that is the smallest it found; None if none. Stop once ``target.forward >= stop``."""

    def params(self) -> dict[str, Any]:
        return {}


def make_attack(name: str, **params: Any) -> Attack:
    from smoothcore.errors import PluginError
    from smoothcore.plugins import registry

    entry = registry("attack").get(name)
    attack = entry.build(**params)
    if not isinstance(attack, Attack):
        raise PluginError(
            f"plugin {entry.plugin!r}: attack {name!r} built a {type(attack).__name__}, not an Attack"
        )
    attack.name = name
    return attack


def attacks_for(noise: Any, names: Sequence[str] | None = None) -> list[Attack]:
    """The attacks ``names`` (default: every registered attack that applies to ``noise`` and is a default there,
    ``default_for``); a named attack that does not apply is a ConfigError."""
    from smoothcore.plugins import registry

    if names is None:
        return [a for a in (make_attack(n) for n in registry("attack").names()) if a.default_for(noise)]
    out = []
    for name in names:
        attack = make_attack(name)
        if not attack.applies_to(noise):
            raise ConfigError(f"attack {name!r} does not apply to noise {noise.name!r}")
        out.append(attack)
    return out


# -- verification ------------------------------------------------------------------------------------------------
@dataclass
class Verdict:
    flips: bool
    rival: int
    evidence: str


def verify(
    target: AttackTarget,
    x_adv: torch.Tensor,
    *,
    n_test: int = 1000,
    alpha: float = 0.01,
    tries: int = 1,
    key: int = 0,
    rival: int | None = None,
) -> Verdict:
    """Does ``x'`` change the smoothed prediction? (The module docstring says how each noise decides; ``rival``: the
    class ``B`` of the Monte-Carlo test, chosen without these draws, e.g. by :func:`choose_rival`.)"""
    smoothed, top = target.smoothed, target.top
    x_adv = x_adv.to(target.device)
    if float(x_adv.min()) < 0.0 or float(x_adv.max()) > 1.0:
        return Verdict(False, -1, "outside [0, 1]")
    if target.exact:
        if not is_quantised(x_adv, GRID):
            return Verdict(False, -1, "not on the 1/255 grid")
        cls = int(target.counts(x_adv).argmax())
        return Verdict(
            cls != top, cls, f"exact counts over all {smoothed.noise.num_draws} draws predict {cls}"
        )
    stream = DrawStream(target.seed, target.index, 5, key)
    counts = smoothed.engine.sampled_counts(smoothed.noise, x_adv, n_test, [stream]).cpu()[0]
    target.forward += n_test
    if rival is None:
        level = alpha / (len(counts) * max(1, tries))  # one-sided level of each bound
        return Verdict(*rival_test(counts.numpy(), top, level))
    level = alpha / max(1, tries)
    k_a, k_b = int(counts[top]), int(counts[rival])
    flips, lower = pair_test(k_a, k_b, level)
    evidence = (
        f"n={n_test}: k_A={k_a} vs k_{rival}={k_b} (rival chosen on other draws); one-sided Clopper-Pearson lower "
        f"bound on p_{rival} / (p_A + p_{rival}): {lower:.4f}, level {level:.3g}"
    )
    return Verdict(flips, rival, evidence)


def choose_rival(target: AttackTarget, x_adv: torch.Tensor, *, n: int, key: int) -> int:
    """The class other than ``A`` with the most votes on ``n`` fresh draws at ``x'`` (a stream of its own, so the
    test that follows stays independent of the choice)."""
    stream = DrawStream(target.seed, target.index, 6, key)
    counts = target.engine.sampled_counts(target.noise, x_adv.to(target.device), n, [stream]).cpu()[0]
    target.forward += n
    return strongest_rival(counts.numpy(), target.top)


# -- one image, every attack ---------------------------------------------------------------------------------------
# a Monte-Carlo candidate found at the edge is tried scaled up (smallest first) before it is given up ...
SCALES = (1.0, 1.05, 1.1, 1.2, 1.35, 1.5)
# ... and one that verifies, scaled down (largest first) while it still does and the budget allows
SHRINK = (0.96, 0.92, 0.88, 0.84, 0.8)
TESTS = max(len(SCALES), 1 + len(SHRINK))  # the most Monte-Carlo tests per attack and image
PILOT = 256  # fresh draws that choose the rival class of the Monte-Carlo test


@dataclass
class ImageAttack:
    """The attack of one image: the smallest verified flip (NaN: none), the attack that found it, its evidence, the
    forward passes and seconds spent, and the flipping image ``x_adv`` itself."""

    index: int
    label: int
    prediction: int
    radius: float
    flip_norm: float = math.nan
    attack: str = ""
    flip_class: int = -1
    evidence: str = ""
    forward_passes: int = 0
    seconds: float = 0.0
    per_attack: dict[str, float] = field(default_factory=dict)
    x_adv: torch.Tensor | None = field(default=None, repr=False)

    def row(self) -> dict[str, Any]:
        row = {k: getattr(self, k) for k in ("index", "label", "prediction", "radius", "flip_norm", "attack")}
        row.update(flip_class=self.flip_class, forward_passes=self.forward_passes, seconds=self.seconds)
        row.update({f"flip_{name}": v for name, v in self.per_attack.items()})
        row["evidence"] = self.evidence
        return row


def verified_flip(
    target: AttackTarget,
    x_adv: torch.Tensor,
    cfg: AttackConfig,
    *,
    key: int,
    tries: int,
    stop: int | None = None,
) -> tuple[torch.Tensor, Verdict] | None:
    """``x'`` itself if verified, else (Monte-Carlo) the same perturbation scaled up by 5% to 50% (``SCALES``), each
    tested against the rival that ``PILOT`` draws at ``x'`` choose. Once one verifies, it is tried scaled down by 4%
    at a time (``SHRINK``) while that verifies too and a test still fits before ``stop`` (None: not tried); the
    smallest verified one is returned. At most ``TESTS`` tests, each at ``alpha / tries``."""
    delta = x_adv - target.x
    if target.exact:
        verdict = verify(target, x_adv, key=key, tries=tries)
        return (x_adv, verdict) if verdict.flips else None
    rival = choose_rival(target, x_adv, n=PILOT, key=key)
    made = 0

    def test(scale: float) -> tuple[torch.Tensor, Verdict]:
        nonlocal made
        candidate = target.project_box(target.x + scale * delta)
        verdict = verify(
            target,
            candidate,
            n_test=cfg.n_test,
            alpha=cfg.alpha,
            tries=tries,
            key=key * 16 + made,
            rival=rival,
        )
        made += 1
        return candidate, verdict

    for scale in SCALES:
        found = test(scale)
        if found[1].flips:
            break
    else:
        return None
    if scale != SCALES[0]:
        return found  # scaled up: the scale below it did not verify
    for scale in SHRINK:
        if stop is None or target.forward + cfg.n_test > stop:
            break
        smaller = test(scale)
        if not smaller[1].flips:
            break
        found = smaller
    return found


def attack_image(
    smoothed: Any,
    x: torch.Tensor,
    prediction: int,
    *,
    attacks: Sequence[Attack],
    cfg: AttackConfig,
    index: int = 0,
    label: int = -1,
    radius: float = math.nan,
    max_norm: float | None = None,
) -> ImageAttack:
    """Run every attack on one image (``x`` ``(1, *shape)``, smoothed prediction ``prediction``) and keep the
    smallest verified flip (within ``max_norm`` when given)."""
    t0 = time.perf_counter()
    target = AttackTarget(smoothed, x, prediction, index=index, seed=cfg.seed)
    tries = len(attacks) * (1 if target.exact else TESTS)
    out = ImageAttack(index, label, prediction, radius)
    pool = cfg.budget * len(attacks)  # passes an attack leaves unused go to the ones after it
    # a Monte-Carlo verification's pilot, first test and first smaller one are paid from the attack's share
    verification = 0 if target.exact else PILOT + 2 * cfg.n_test
    for a, attack in enumerate(attacks):
        share = (pool - target.forward) // (len(attacks) - a)
        end = target.forward + share
        x_adv = attack.run(target, max_norm=max_norm, stop=target.forward + max(share - verification, 0))
        norm = math.nan
        if x_adv is not None:
            found = verified_flip(target, x_adv, cfg, key=a, tries=tries, stop=end)
            if found is not None:
                candidate, verdict = found
                norm = target.l1(candidate)
                if max_norm is not None and norm > max_norm + 1e-9:
                    norm = math.nan
                elif not norm >= out.flip_norm:  # smaller, or the first
                    out.flip_norm, out.attack, out.flip_class = norm, attack.name, verdict.rival
                    out.evidence, out.x_adv = verdict.evidence, candidate.detach().cpu()
        out.per_attack[attack.name] = norm
    out.forward_passes = target.forward
    out.seconds = round(time.perf_counter() - t0, 4)
    return out


def attack_images(
    smoothed: Any,
    x: torch.Tensor,
    prediction: Sequence[int],
    *,
    labels: Sequence[int] | None = None,
    radius: Sequence[float] | None = None,
    indices: Sequence[int] | None = None,
    config: AttackConfig | None = None,
    on_image: Callable[[ImageAttack], None] | None = None,
) -> list[ImageAttack]:
    """Attack every image of ``x`` whose smoothed prediction is not an abstention; one :class:`ImageAttack` each."""
    cfg = (config or AttackConfig()).check()
    smoothed.noise.check_input(x)
    attacks = attacks_for(smoothed.noise, cfg.attacks)
    if not attacks:
        raise ConfigError(f"no registered attack applies to noise {smoothed.noise.name!r}")
    n = len(x)
    labels = [-1] * n if labels is None else [int(v) for v in labels]
    radius = [math.nan] * n if radius is None else [float(r) for r in radius]
    indices = list(range(n)) if indices is None else [int(i) for i in indices]
    out = []
    for i in range(n):
        if int(prediction[i]) < 0:
            continue
        result = attack_image(
            smoothed,
            x[i : i + 1],
            int(prediction[i]),
            attacks=attacks,
            cfg=cfg,
            index=indices[i],
            label=labels[i],
            radius=radius[i],
        )
        out.append(result)
        if on_image is not None:
            on_image(result)
    return out
