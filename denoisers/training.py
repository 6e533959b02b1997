"""Training a denoiser (Salman et al. 2020): objectives ``mse``, ``stability`` and ``classification`` under any
registered noise, Adam with step decay (optionally continuing with SGD), resumable, keeping the best checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from smoothcore.checkpoints import sha256
from smoothcore.data import batches
from smoothcore.denoise import denoiser_checkpoint
from smoothcore.experiment import releases_experiment_lock
from smoothcore.fileio import atomic_torch_save
from smoothcore.loading import check_compatible, load_classifier
from smoothcore.models import build_denoiser
from smoothcore.trainer_base import EpochTrainer, OnEpoch, OnStep, TrainData, TrainState
from smoothcore_denoisers.config import OBJECTIVES, DenoiserConfig  # noqa: F401  (re-exported)

DENOISER = "denoiser.pt"
DENOISER_BEST = "denoiser_best.pt"


def denoiser_loss(
    objective: str,
    denoised: torch.Tensor,
    clean: torch.Tensor,
    labels: torch.Tensor,
    classifier: nn.Module | None,
) -> torch.Tensor:
    """``mse``: mean squared error to the clean image. ``stability``: cross-entropy of the frozen classifier on
    the denoised image against its own prediction on the clean one. ``classification``: against the label."""
    if objective == "mse":
        return F.mse_loss(denoised, clean)
    assert classifier is not None
    logits = classifier(denoised)
    if objective == "stability":
        with torch.no_grad():
            target = classifier(clean).argmax(dim=1)
        return F.cross_entropy(logits, target)
    return F.cross_entropy(logits, labels)


@dataclass
class DenoiserTrainState(TrainState):
    """The denoiser's training state: also which optimiser is in use (``adam``, or ``sgd`` from ``sgd_after`` on)
    and the best validation score so far (``-val_mse`` for ``mse``, else ``val_accuracy``)."""

    optimizer_kind: str = "adam"
    best: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "optimizer_kind": self.optimizer_kind, "best": self.best}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        super().load_state_dict(saved)
        self.optimizer_kind, self.best = saved["optimizer_kind"], saved.get("best")


class DenoiserTrainer(EpochTrainer):
    """One training run of ``cfg`` into the experiment folder ``out``: the denoiser ``model`` (in front of the frozen
    ``classifier``, for the classifier objectives)."""

    def __init__(self, cfg: DenoiserConfig, out: str | Path) -> None:
        super().__init__(cfg, out)
        self.noise = self.training_noise()
        c = self.source.image_shape[0]
        self.model = self.seeded(lambda: build_denoiser(cfg.arch, in_channels=c, **cfg.arch_params))
        self.classifier = None
        if cfg.classifier:
            clf, info = load_classifier(
                cfg.classifier,
                dataset=cfg.dataset,
                device=self.device,
                return_info=True,
                trust=cfg.trust_checkpoint,
            )
            check_compatible(info, cfg.dataset)
            for p in clf.parameters():
                p.requires_grad_(False)
            self.classifier = clf.eval()
            cfg.classifier_sha256 = sha256(cfg.classifier)

    @releases_experiment_lock
    def run(
        self,
        *,
        overwrite: bool = False,
        resume: bool = False,
        on_step: OnStep | None = None,
        on_epoch: OnEpoch | None = None,
    ) -> pd.DataFrame:
        """Train, or continue a run from its last saved state (``resume``); returns the training log.
        ``on_step(epoch, step, steps_per_epoch)`` after every step, ``on_epoch(row)`` after every epoch."""
        data = self.load_data()  # bad data fails here, before the experiment folder is created or replaced
        config = {"kind": "denoiser", **self.cfg.to_dict()}
        state, _ = self.start(data, config, overwrite=overwrite, resume=resume)
        return self.train_epochs(state, data, on_step, on_epoch)

    # -- the steps of run -----------------------------------------------------------------------------------------
    def new_state(self, data: TrainData) -> DenoiserTrainState:
        cfg = self.cfg
        model = self.model.to(self.device)
        kind = "sgd" if cfg.optimizer == "sgd" or cfg.sgd_after == 0 else "adam"
        optimizer, scheduler = self._optimizer(kind, lr=cfg.sgd_lr if cfg.sgd_after == 0 else cfg.lr)
        return DenoiserTrainState(model, optimizer, scheduler, *self.generators(), optimizer_kind=kind)

    def _optimizer(
        self, kind: str, lr: float
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """A fresh optimiser of ``kind`` for the denoiser, and its step-decay schedule."""
        params, decay = self.model.parameters(), self.cfg.weight_decay
        if kind == "adam":
            optimizer = torch.optim.Adam(params, lr=lr, weight_decay=decay)
        else:
            optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=decay)
        return optimizer, torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=self.cfg.lr_step, gamma=self.cfg.lr_gamma
        )

    def restore(self, state: DenoiserTrainState, saved: dict[str, Any]) -> None:
        state.optimizer, state.scheduler = self._optimizer(saved["optimizer_kind"], lr=self.cfg.lr)
        state.load_state_dict(saved)

    def train_epoch(
        self, state: DenoiserTrainState, data: TrainData, on_step: OnStep | None
    ) -> dict[str, float]:
        """One epoch (switching to SGD at ``sgd_after``), the schedule stepped at its end; returns the mean loss."""
        cfg = self.cfg
        if state.epoch == cfg.sgd_after and state.optimizer_kind == "adam":
            state.optimizer, state.scheduler = self._optimizer(
                "sgd", lr=cfg.sgd_lr
            )  # the reference's --start-sgd-lr
            state.optimizer_kind = "sgd"
        state.model.train()
        total = torch.zeros((), device=self.device)
        seen = 0
        for step, (x, y) in enumerate(self.training_batches(state, data)):
            denoised = state.model(self.noise.sample(x, state.noise_rng))
            loss = denoiser_loss(cfg.objective, denoised, x, y, self.classifier)
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            state.optimizer.step()
            total += loss.detach() * len(y)
            seen += len(y)
            if on_step is not None:
                on_step(state.epoch, step + 1, data.steps_per_epoch)
        state.scheduler.step()
        return {"train_loss": float(total) / max(seen, 1)}

    def log_columns(
        self, state: DenoiserTrainState, data: TrainData, train_columns: dict[str, float]
    ) -> dict[str, Any]:
        return {
            **train_columns,
            **self.evaluate(state.model, data),
            "lr": state.optimizer.param_groups[0]["lr"],
            "optimizer": state.optimizer_kind,
        }

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, data: TrainData) -> dict[str, float]:
        """On fixed noisy draws of the evaluation images: the denoiser's MSE and the noisy input's MSE; with a
        classifier, its accuracy on denoised (and on noisy) images, else ``val_accuracy`` NaN."""
        model.eval()
        rng = torch.Generator(device=self.device).manual_seed(12345)
        mse = {"val_mse": 0.0, "noisy_mse": 0.0}
        correct = {"val_accuracy": 0.0, "noisy_accuracy": 0.0}
        for x, y in batches(data.test_set, 250, shuffle=False, indices=data.eval_idx, device=self.device):
            noisy = self.noise.sample(x, rng)
            den = model(noisy)
            for key, image in (("val", den), ("noisy", noisy)):
                mse[f"{key}_mse"] += float(((image - x) ** 2).mean(dim=tuple(range(1, x.dim()))).sum())
                if self.classifier is not None:
                    correct[f"{key}_accuracy"] += float((self.classifier(image).argmax(1) == y).sum())
        n = max(len(data.eval_idx), 1)
        if self.classifier is None:
            return {k: v / n for k, v in mse.items()} | {"val_accuracy": float("nan")}
        return {k: v / n for k, v in (mse | correct).items()}

    def save_epoch(self, state: DenoiserTrainState, row: dict[str, Any]) -> None:
        """The last denoiser, the best one (when this epoch improved on it), the training state and the manifest."""
        cfg = self.cfg
        score = -row["val_mse"] if cfg.objective == "mse" else row["val_accuracy"]
        improved = state.best is None or score > state.best
        if improved:
            state.best = score
        extra = {
            "epoch": state.epoch,
            "noise": self.noise.params(),
            "objective": cfg.objective,
            "dataset": cfg.dataset,
        }
        ckpt = denoiser_checkpoint(
            state.model,
            arch=cfg.arch,
            params=cfg.arch_params,
            in_channels=self.source.image_shape[0],
            extra=extra,
        )
        atomic_torch_save(self.exp.path / DENOISER, ckpt)
        if improved:
            atomic_torch_save(self.exp.path / DENOISER_BEST, ckpt)
        self.save_state(state)
        self.exp.update_manifest(
            epoch=state.epoch, denoiser_sha256=sha256(self.exp.path / DENOISER), noise=self.noise.params()
        )


def train_denoiser(cfg: DenoiserConfig, out: str | Path, **kwargs: Any) -> pd.DataFrame:
    """Train ``cfg`` into the experiment folder ``out``; returns the training log (one row per epoch)."""
    return DenoiserTrainer(cfg, out).run(**kwargs)
