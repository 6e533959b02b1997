"""Built-in training objectives: noise augmentation (``plain``), stability training (the paper's, ../shared/SPEC.md),
consistency regularization (Jeong & Shin 2020) and MACER (Zhai et al. 2020) with its radius surrogate adapted to
the L1 certificates of uniform, SSN and DSSN (docs/objectives.md derives it)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from smoothcore.errors import ConfigError
from smoothcore.hookspecs import hookimpl
from smoothcore.noises import ExactNoise
from smoothcore.objectives import (
    TrainingObjective,
    check_non_negative,
    check_positive_int,
    cross_entropy_sum,
    noisy_copies,
    per_copy,
)


class Plain(TrainingObjective):
    """Noise augmentation: cross-entropy of one noisy draw (a clean classifier without noise)."""

    def __init__(self, *, noise: Any) -> None:
        self.noise = noise

    def loss(self, forward, noisy, x, y):
        logits = forward(noisy(x))
        return cross_entropy_sum(logits, y), logits


def stability_loss(
    logits_1: torch.Tensor,
    logits_2: torch.Tensor,
    labels: torch.Tensor,
    weight: float,
    reduction: str = "mean",
) -> torch.Tensor:
    """``CE(f(x~1), y) + weight * KL(f(x~1) || f(x~2))`` (SPEC.md), the KL of the two predictive categoricals,
    averaged over the batch (``reduction="sum"``: summed)."""
    ce = F.cross_entropy(logits_1, labels, reduction="sum")
    kl = F.kl_div(
        F.log_softmax(logits_2, dim=1), F.log_softmax(logits_1, dim=1), reduction="sum", log_target=True
    )
    total = ce + weight * kl
    return total if reduction == "sum" else total / len(labels)


class Stability(TrainingObjective):
    """Stability training (the reference recipe): ``CE(f(x~1), y) + weight * KL(f(x~1) || f(x~2))``."""

    draws = 2
    needs_noise = True

    def __init__(self, *, noise: Any, weight: float = 6.0) -> None:
        self.noise = noise
        self.weight = check_non_negative("weight", weight, "stability")

    def loss(self, forward, noisy, x, y):
        logits = forward(noisy(x))
        logits_2 = forward(noisy(x))
        return stability_loss(logits.float(), logits_2.float(), y, self.weight, reduction="sum"), logits

    def params(self) -> dict[str, Any]:
        return {"weight": self.weight}


def consistency_loss(logits: torch.Tensor, labels: torch.Tensor, lbd: float, eta: float) -> torch.Tensor:
    """Consistency regularization (Jeong & Shin 2020) of logits ``(batch, m, classes)`` of ``m`` noisy copies,
    summed over the batch: ``mean_j CE(f_j, y) + lbd * mean_j KL(p_bar || p_j) + eta * H(p_bar)`` with
    ``p_j = softmax(f_j)`` and ``p_bar = mean_j p_j``."""
    batch, m, classes = logits.shape
    log_p = F.log_softmax(logits, dim=2)
    ce = F.nll_loss(log_p.reshape(batch * m, classes), labels.repeat_interleave(m), reduction="sum") / m
    p_bar = log_p.exp().mean(1)
    log_p_bar = torch.log(p_bar.clamp_min(1e-20))
    kl = (p_bar.unsqueeze(1) * (log_p_bar.unsqueeze(1) - log_p)).sum() / m
    entropy = -(p_bar * log_p_bar).sum()
    return ce + lbd * kl + eta * entropy


class Consistency(TrainingObjective):
    """Consistency regularization: ``m`` noisy copies of each image, their cross-entropies, the KL from their mean
    prediction to each copy's, and the entropy of the mean (defaults: the paper's m = 2, eta = 0.5; lambda = 10,
    in the paper's range 5-20)."""

    needs_noise = True

    def __init__(self, *, noise: Any, m: int = 2, lbd: float = 10.0, eta: float = 0.5) -> None:
        self.noise = noise
        self.m = check_positive_int("m", m, "consistency")
        self.lbd = check_non_negative("lbd", lbd, "consistency")
        self.eta = check_non_negative("eta", eta, "consistency")
        self.draws = self.m

    def loss(self, forward, noisy, x, y):
        logits = forward(noisy_copies(noisy, x, self.m))
        return consistency_loss(per_copy(logits, self.m), y, self.lbd, self.eta), logits[: len(x)]

    def params(self) -> dict[str, Any]:
        return {"m": self.m, "lbd": self.lbd, "eta": self.eta}


# -- MACER ------------------------------------------------------------------------------------------------------
def radius_surrogate(noise: Any) -> tuple[str, float]:
    """The form of the noise's certified radius as a function of the smoothed probabilities, and its scale:

    - ``"top2"``, ``width / 2`` for exact DSSN: ``radius ~ (levels / 510) (p_A - p_B)`` (the exact certificate
      ``floor((c_A - c_B) / 2) / 255`` without the floor);
    - ``"one-sided"``, ``lambda`` for uniform-family Monte-Carlo noises (uniform, SSN): ``2 lambda (p_A - 1/2)
      = lambda (2 p_A - 1)``;
    - ``"probit"``, ``sigma / 2`` for Gaussian L2 (the original MACER): ``sigma/2 (Phi^-1(p_A) - Phi^-1(p_B))``.
    """
    if isinstance(noise, ExactNoise) and hasattr(noise, "width"):
        return "top2", float(noise.width) / 2.0
    if (
        getattr(noise, "norm", None) == "l1"
        and getattr(noise, "monte_carlo_certificate", False)
        and hasattr(noise, "lambd")
    ):
        return "one-sided", float(noise.lambd)
    if getattr(noise, "norm", None) == "l2" and hasattr(noise, "sigma"):
        return "probit", float(noise.sigma) / 2.0
    raise ConfigError(
        f"objective 'macer' has no radius surrogate for noise {getattr(noise, 'name', noise)!r}",
        hint="it supports uniform-family noises (uniform, ssn), exact splitting noise (dssn) and gaussian",
    )


def macer_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    form: str,
    scale: float,
    beta: float,
    gamma: float,
    weight: float,
) -> torch.Tensor:
    """MACER's loss of logits ``(batch, k, classes)`` of ``k`` noisy copies, summed over the batch:
    ``CE(log mean_j softmax(f_j), y) + weight * scale * sum_i max(gamma - margin_i, 0)`` over the rows whose soft
    smoothed classifier (``mean_j softmax(beta f_j)``) is correct, ``margin`` in the certificate's form (see
    :func:`radius_surrogate`); rows with a margin above ``gamma`` (or not finite, for the probit form) add
    nothing."""
    soft = F.softmax(logits, dim=2).mean(1)
    ce = F.nll_loss(torch.log(soft + 1e-10), labels, reduction="sum")
    hard = F.softmax(beta * logits, dim=2).mean(1)
    top2, idx = torch.topk(hard, 2, dim=1)
    correct = idx[:, 0] == labels
    p_a, p_b = top2[correct, 0], top2[correct, 1]
    if form == "top2":
        margin = p_a - p_b
    elif form == "one-sided":
        margin = 2.0 * p_a - 1.0
    else:
        normal = torch.distributions.Normal(0.0, 1.0)
        margin = normal.icdf(p_a) - normal.icdf(p_b)
    active = torch.isfinite(margin) & (margin <= gamma)
    robust = (gamma - margin[active]).sum() * scale
    return ce + weight * robust


class Macer(TrainingObjective):
    """MACER: cross-entropy of the soft smoothed classifier over ``draws`` noisy copies plus ``weight`` times a hinge
    on its certified-radius surrogate (``beta``: inverse temperature of the surrogate's softmax; ``gamma``: the
    hinge, in margin units, default 1 for the L1 forms (every correct row), 8 for the probit form (MACER's);
    ``weight``: of the radius term, default ``1 / scale``, i.e. one unit of loss per unit of margin)."""

    needs_noise = True

    def __init__(
        self,
        *,
        noise: Any,
        draws: int = 16,
        beta: float = 16.0,
        gamma: float | None = None,
        weight: float | None = None,
    ) -> None:
        self.noise = noise
        self.draws = check_positive_int("draws", draws, "macer")
        self.beta = check_non_negative("beta", beta, "macer", positive=True)
        self.form, self.scale = radius_surrogate(noise) if noise is not None else ("one-sided", 1.0)
        # default: one unit of loss per unit of margin (MACER's lambda * sigma/2 = 1); larger weights need smaller
        # learning rates or a warm start (weight 4 x scale 0.87 collapsed a CNN to one class in its first epoch)
        self.weight = 1.0 / self.scale if weight is None else check_non_negative("weight", weight, "macer")
        default_gamma = 8.0 if self.form == "probit" else 1.0
        self.gamma = default_gamma if gamma is None else check_non_negative("gamma", gamma, "macer")

    def loss(self, forward, noisy, x, y):
        logits = forward(noisy_copies(noisy, x, self.draws))
        loss = macer_loss(
            per_copy(logits, self.draws),
            y,
            form=self.form,
            scale=self.scale,
            beta=self.beta,
            gamma=self.gamma,
            weight=self.weight,
        )
        return loss, logits[: len(x)]

    def params(self) -> dict[str, Any]:
        return {"draws": self.draws, "beta": self.beta, "gamma": self.gamma, "weight": self.weight}


@hookimpl
def register_training_objectives(register) -> None:
    register("plain", Plain, description="noise augmentation: cross-entropy on one noisy draw")
    register(
        "stability",
        Stability,
        description="stability training: CE + weight * KL between two noisy draws (weight 6)",
    )
    register(
        "consistency",
        Consistency,
        description="consistency regularization (Jeong & Shin 2020): m copies, lbd * KL to the mean, eta * entropy",
    )
    register(
        "macer",
        Macer,
        description="MACER (Zhai et al. 2020): soft smoothed CE + hinge on the certified-radius surrogate",
    )
