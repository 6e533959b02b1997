"""The denoiser-training configuration, free of torch (the command line builds its options from it)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from smoothcore.errors import ConfigError

OBJECTIVES = ("mse", "stability", "classification")


@dataclass
class DenoiserConfig:
    dataset: str = "fashion-mnist"
    arch: str = "dncnn"
    noise: str = "dssn"
    sigma: float | None = None
    lambd: float | None = None
    noise_seed: int = 0
    objective: str = "mse"
    classifier: str | None = None
    classifier_sha256: str | None = None
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    optimizer: str = "adam"
    lr_step: int = 30
    lr_gamma: float = 0.1
    sgd_after: int | None = None
    sgd_lr: float = 1e-5
    weight_decay: float = 1e-4
    trust_checkpoint: bool = False
    seed: int = 0
    train_limit: int | None = None
    eval_limit: int = 1000
    data_dir: str | None = None
    device: str = "auto"  # cuda when available, else cpu
    workers: int = 0
    arch_params: dict[str, Any] = field(default_factory=dict)
    noise_params: dict[str, Any] = field(default_factory=dict)  # a noise's further parameters (plugins')

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        from smoothcore.checks import check_params
        from smoothcore.noises import NOISE_ARGUMENTS

        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.objective != "mse" and not self.classifier:
            raise ConfigError(
                f"the {self.objective} objective needs a frozen classifier: give --classifier PATH"
            )
        check_params("noise_params", self.noise_params, NOISE_ARGUMENTS)
        check_params("arch_params", self.arch_params, ("in_channels",))
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer must be adam or sgd, got {self.optimizer!r}")
        for name in ("epochs", "batch_size", "eval_limit", "lr_step"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        for name in ("lr", "sgd_lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and 0 < v <= 10):
                raise ConfigError(f"{name} must be a number in (0, 10], got {v!r}")
        v = self.lr_gamma
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and 0 < v <= 1):
            raise ConfigError(f"lr_gamma must be a number in (0, 1], got {v!r}")
        v = self.weight_decay
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= 1):
            raise ConfigError(f"weight_decay must be a number in [0, 1], got {v!r}")
        if self.sgd_after is not None and not 0 <= self.sgd_after < self.epochs:
            raise ConfigError(f"sgd_after must be an epoch in [0, {self.epochs}), got {self.sgd_after!r}")
