"""Training objectives of the base classifier: what one training step minimises, given the model and the noise.

An objective is built by the factory a plugin registers through ``register_training_objectives``
(``factory(*, noise, **params)``, ``noise`` the training :class:`smoothcore.Noise` or None for a clean classifier)
and returns a :class:`TrainingObjective`. The trainer hands it two functions and the batch:

- ``noisy(x)``: one fresh noisy draw of the batch ``x`` (from the run's noise generator, so a resumed run draws
  the same noise; under torchrun each rank gets its rows of a draw of the whole global batch);
- ``forward(z)``: the logits of the model on noisy images ``z`` (through the frozen denoiser, when training behind
  one; in the run's precision and memory layout).

``loss(forward, noisy, x, y)`` returns the loss **summed** over the batch's rows (the trainer divides by the
global batch size) and the logits of one noisy draw (for the running training accuracy). Objectives draw noise
only through ``noisy``, never from global generators, so training with any objective resumes exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from smoothcore.errors import ConfigError

Forward = Callable[[torch.Tensor], torch.Tensor]
Noisy = Callable[[torch.Tensor], torch.Tensor]

OBJECTIVE_ARGUMENTS = ("noise",)  # what every objective factory takes


class TrainingObjective(ABC):
    """One training objective. ``draws`` is the number of noisy forward passes per training image and step (the
    cost of a step relative to noise augmentation); ``needs_noise`` objectives refuse clean training."""

    name: str = ""  # set by the registry from the registered name
    draws: int = 1
    needs_noise: bool = False

    @abstractmethod
    def loss(
        self, forward: Forward, noisy: Noisy, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss summed over the rows of ``x``, logits of one noisy draw of ``x``)."""

    def params(self) -> dict[str, Any]:
        """The objective's parameters (JSON), as recorded with the run."""
        return {}


def noisy_copies(noisy: Noisy, x: torch.Tensor, m: int) -> torch.Tensor:
    """``m`` independent noisy draws of the batch ``x``, stacked copy-major: rows ``j*len(x) .. (j+1)*len(x)-1``
    are draw ``j``."""
    return torch.cat([noisy(x) for _ in range(m)])


def per_copy(logits: torch.Tensor, m: int) -> torch.Tensor:
    """Logits of ``m`` stacked copies (copy-major) as ``(batch, m, classes)``."""
    return logits.float().reshape(m, -1, logits.shape[-1]).transpose(0, 1)


def check_positive_int(name: str, value: Any, objective: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"objective {objective!r}: {name} must be a positive integer, got {value!r}")
    return value


def check_non_negative(name: str, value: Any, objective: str, *, positive: bool = False) -> float:
    import math

    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ConfigError(f"objective {objective!r}: {name} must be a finite number {bound}, got {value!r}")
    return float(value)


def require_noise(noise: Any, objective: str) -> None:
    if noise is None:
        raise ConfigError(
            f"objective {objective!r} needs a training noise; --noise none trains a clean classifier",
            hint="use --objective plain for a clean classifier, or name the noise to train under",
        )


def make_objective(name: str, *, noise: Any, **params: Any) -> TrainingObjective:
    """Build the registered objective ``name`` for training under ``noise``; unknown names and parameters are
    ConfigErrors naming what exists."""
    from smoothcore.plugins import registry

    entry = registry("objective").get(name)
    objective = entry.build(_framework=OBJECTIVE_ARGUMENTS, noise=noise, **params)
    if not isinstance(objective, TrainingObjective):
        from smoothcore.errors import PluginError

        raise PluginError(
            f"plugin {entry.plugin!r}: objective {name!r} built a {type(objective).__name__}, not a TrainingObjective"
        )
    objective.name = name
    if objective.needs_noise:
        require_noise(noise, name)
    return objective


def cross_entropy_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="sum")
