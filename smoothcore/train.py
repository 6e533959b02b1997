"""Training a base classifier under noise with a training objective (noise augmentation, stability training
(SPEC.md) or any registered one: smoothcore.objectives), SGD with
Nesterov momentum and cosine annealing, into an experiment folder that can be resumed."""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from smoothcore.checkpoints import load_file, sha256
from smoothcore.configs import RECIPES, TrainConfig  # noqa: F401  (re-exported: smoothcore.train.TrainConfig)
from smoothcore.data import batches
from smoothcore.denoise import load_frozen_denoiser
from smoothcore.distributed import DistInfo, all_reduce_sum, barrier, shard_apply
from smoothcore.engine import PRECISIONS, keep_freed_memory
from smoothcore.errors import CheckpointError, ConfigError, ExperimentError
from smoothcore.experiment import releases_experiment_lock
from smoothcore.fileio import atomic_torch_save
from smoothcore.loading import classifier_checkpoint, classifier_weights
from smoothcore.models import build_classifier
from smoothcore.objectives import make_objective
from smoothcore.trainer_base import EpochTrainer, OnEpoch, OnStep, TrainData, TrainState


@dataclass
class ClassifierTrainState(TrainState):
    """The classifier's training state: also the fp16 gradient ``scaler``, the global torch (and CUDA) generators that
    dropout draws from, and, saved in the middle of an epoch, the ``step`` reached in it, the order generator at its
    start (``epoch_order_rng``) and its running totals (``partial``: loss sum, correct, seen)."""

    scaler: torch.amp.GradScaler = field(kw_only=True)
    device: torch.device = field(kw_only=True)
    step: int = 0
    epoch_order_rng: torch.Tensor | None = None
    partial: tuple[float, int, int] = (0.0, 0, 0)

    def state_dict(self) -> dict[str, Any]:
        cuda = self.device.type == "cuda"
        saved = {
            **super().state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if cuda else None,
            "scaler": self.scaler.state_dict(),
        }
        if self.step:
            saved.update(step=self.step, epoch_order_rng=self.epoch_order_rng, partial=self.partial)
        return saved

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        super().load_state_dict(saved)
        self.step = int(saved.get("step", 0))
        if self.step:  # the epoch's order is drawn again from its start, and its first `step` batches skipped
            self.order_rng.set_state(saved["epoch_order_rng"])
            self.partial = tuple(saved.get("partial", (0.0, 0, 0)))
        # dropout and any other use of the global generators continue where they were
        if "torch_rng" in saved:
            torch.set_rng_state(saved["torch_rng"])
        if saved.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(saved["cuda_rng"], self.device)
        if saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])


class Trainer(EpochTrainer):
    """One training run of ``cfg`` into the experiment folder ``out``: the classifier ``model``, trained on noisy
    images (behind the frozen ``denoiser``, if any)."""

    def __init__(self, cfg: TrainConfig, out: str | Path) -> None:
        super().__init__(cfg, out)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.noise = None if cfg.noise == "none" else self.training_noise()  # none: a clean classifier
        self.objective = make_objective(cfg.objective, noise=self.noise, **cfg.objective_params)
        c, h, _ = self.source.image_shape
        self.model = self.seeded(
            lambda: build_classifier(
                cfg.model,
                num_classes=self.source.num_classes,
                in_channels=c,
                image_size=h,
                mean=self.source.mean,
                std=self.source.std,
                **cfg.model_params,
            )
        )
        self.denoiser = load_frozen_denoiser(cfg.denoiser, c, self.device, trust=cfg.trust_checkpoint)
        self.train_model: nn.Module = self.model  # what the steps run: the model, or its DDP wrapper

    @releases_experiment_lock
    def run(
        self,
        *,
        overwrite: bool = False,
        resume: bool = False,
        on_step: OnStep | None = None,
        on_epoch: OnEpoch | None = None,
        dist_info: DistInfo | None = None,
    ) -> pd.DataFrame:
        """Train, or continue a run from its last saved state (``resume``). Under torchrun (``dist_info`` with several
        ranks) the model is wrapped in DistributedDataParallel: each rank loads and trains on its rows of every
        global batch, all ranks draw the augmentation and noise of the whole batch from the same generator (so the
        run matches a single process on the same data order), and only rank 0 evaluates, logs and saves.
        ``on_step(epoch, step, steps_per_epoch)`` after every step, ``on_epoch(row)`` after every epoch (rank 0)."""
        cfg = self.cfg
        self.dist = dist_info or DistInfo()
        if cfg.denoiser is not None and cfg.denoiser_sha256 is None:
            cfg.denoiser_sha256 = sha256(cfg.denoiser)
        # Everything that can fail on bad input (data, fine-tuning weights) comes before the folder is touched.
        data = self.load_data()
        self._load_finetune_weights()
        state, resuming = self.start(data, cfg.to_dict(), overwrite=overwrite, resume=resume)
        if self.dist.main:
            self._record_data(data, resuming)
        self.train_model = self._wrap_distributed(state.model)
        return self.train_epochs(state, data, on_step, on_epoch)

    # -- the steps of run -----------------------------------------------------------------------------------------
    def _load_finetune_weights(self) -> None:
        """With ``finetune``: start from that checkpoint's weights, except its last layer and its normalisation."""
        if self.cfg.finetune is None:
            return
        obj = load_file(self.cfg.finetune, trust=self.cfg.trust_checkpoint)
        state = classifier_weights(obj, self.cfg.finetune)
        own = self.model.state_dict()
        usable = {
            k: v
            for k, v in state.items()
            if k in own and isinstance(v, torch.Tensor) and v.shape == own[k].shape
        }
        last = [k for k in own if k.endswith(("fc.weight", "fc.bias"))] or list(own)[-2:]
        # neither the last layer (new classes) nor the normalisation (the new data normalises itself)
        usable = {k: v for k, v in usable.items() if k not in last and not k.startswith("norm.")}
        if not usable:
            raise CheckpointError(f"{self.cfg.finetune} shares no parameters with {self.cfg.model}")
        self.model.load_state_dict(usable, strict=False)

    def new_state(self, data: TrainData) -> ClassifierTrainState:
        cfg = self.cfg
        model = self.model.to(self.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=cfg.epochs * data.steps_per_epoch
        )
        return ClassifierTrainState(
            model,
            optimizer,
            scheduler,
            *self.generators(),
            scaler=torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16"),
            device=self.device,
        )

    def restore(self, state: ClassifierTrainState, saved: dict[str, Any]) -> None:
        """The saved state; a run resumed with more ``epochs`` than it was planned for (``--resume --epochs N``)
        continues on the cosine schedule of an N-epoch run, from the step it reached (see :func:`extend_cosine`)."""
        planned = state.scheduler.T_max
        super().restore(state, saved)
        if state.scheduler.T_max != planned:
            extend_cosine(state.scheduler, planned)

    def _record_data(self, data: TrainData, resuming: bool) -> None:
        """The training data's fingerprint and the noise in the manifest; a resume must read the same data."""
        data_fp = getattr(data.train_set, "fingerprint", None)
        fingerprint = data_fp() if data_fp else None
        before = (self.exp.manifest().get("data") or {}).get("train_fingerprint") if resuming else None
        if before and fingerprint and before != fingerprint:  # --data-dir may move, the data may not change
            raise ExperimentError(
                f"--resume of {self.exp.path} reads other training data than the run started with "
                f"(fingerprint {fingerprint}, was {before})",
                hint="point --data-dir at the data the run was started with",
            )
        self.exp.update_manifest(
            data={
                "dataset": self.cfg.dataset,
                "train_images": len(data.train_idx),
                "train_fingerprint": fingerprint,
            },
            noise=self.noise.params() if self.noise is not None else None,
        )

    def _wrap_distributed(self, model: nn.Module) -> nn.Module:
        if not self.dist.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return DistributedDataParallel(model, device_ids=[self.device.index])
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()) and self.dist.main:
            warnings.warn(
                "distributed training on the CPU: SyncBatchNorm needs GPUs, so batch-norm statistics are per rank",
                stacklevel=2,
            )
        return DistributedDataParallel(model)

    def train_epoch(
        self, state: ClassifierTrainState, data: TrainData, on_step: OnStep | None
    ) -> dict[str, float]:
        """One epoch (its rest, when resumed mid-epoch) on this rank's rows of every batch; with ``save_every_steps``
        the state is saved every that many steps. Returns the loss and accuracy on the noisy training images, over
        every rank."""
        cfg, info = self.cfg, self.dist
        self.train_model.train()
        state.epoch_order_rng = state.order_rng.get_state()
        first = state.step
        loss_sum = torch.tensor(float(state.partial[0]), device=self.device)
        correct = torch.tensor(int(state.partial[1]), device=self.device, dtype=torch.long)
        seen = int(state.partial[2])
        shard = (info.rank, info.world)
        for step, (x, y, full) in enumerate(
            self.training_batches(state, data, start_batch=first, shard=shard), first
        ):
            if self.source.augment is not None:
                x = shard_apply(lambda z: self.source.augment(z, state.noise_rng), x, full, info)
            loss, logits = self.step_loss(self.train_model, x, y, state.noise_rng, full=full)
            self._optimise(state, loss)
            loss_sum += loss.detach() * full / info.world
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            if on_step is not None and info.main:
                on_step(state.epoch, step + 1, data.steps_per_epoch)
            if (
                cfg.save_every_steps
                and (step + 1) % cfg.save_every_steps == 0
                and step + 1 < data.steps_per_epoch
            ):
                state.step, state.partial = step + 1, (float(loss_sum), int(correct), seen)
                if info.main:
                    self.save_state(state)
                barrier(info)
        state.step, state.partial = 0, (0.0, 0, 0)
        loss_total, correct_total, seen_total = all_reduce_sum(info, float(loss_sum), int(correct), seen)
        return {
            "train_loss": loss_total / max(seen_total, 1),
            "train_noisy_acc": correct_total / max(seen_total, 1),
        }

    @staticmethod
    def _optimise(state: ClassifierTrainState, loss: torch.Tensor) -> None:
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()

    def log_columns(
        self, state: ClassifierTrainState, data: TrainData, train_columns: dict[str, float]
    ) -> dict[str, Any]:
        return {
            **train_columns,
            "test_noisy_acc": self.evaluate(state.model, data),
            "lr": state.optimizer.param_groups[0]["lr"],
        }

    def save_epoch(self, state: ClassifierTrainState, row: dict[str, Any]) -> None:
        """Every ``save_every`` epochs and after the last: the checkpoint, the training state and the manifest."""
        if state.epoch % self.cfg.save_every != 0 and state.epoch != self.cfg.epochs:
            return
        atomic_torch_save(self.exp.checkpoint, self._checkpoint(state))
        self.save_state(state)
        self.exp.update_manifest(epoch=state.epoch, checkpoint_sha256=sha256(self.exp.checkpoint))

    def _checkpoint(self, state: ClassifierTrainState) -> dict[str, Any]:
        c, h, _ = self.source.image_shape
        extra = {
            "epoch": state.epoch,
            "noise": self.noise.params() if self.noise is not None else None,
            "objective": {"name": self.objective.name, **self.objective.params()},
        }
        if self.cfg.denoiser is not None:
            extra["denoiser"] = {
                "path": str(Path(self.cfg.denoiser).resolve()),
                "sha256": self.cfg.denoiser_sha256,
            }
        return classifier_checkpoint(
            state.model,
            name=self.cfg.model,
            params=self.cfg.model_params,
            dataset=self.cfg.dataset,
            num_classes=self.source.num_classes,
            in_channels=c,
            image_size=h,
            extra=extra,
        )

    # -- the model under noise ------------------------------------------------------------------------------------
    def _autocast(self):
        dtype = PRECISIONS[self.cfg.precision]
        return contextlib.nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    def _noisy(self, x: torch.Tensor, rng: torch.Generator, full: int | None = None) -> torch.Tensor:
        """``x`` under the training noise; ``full``: the size of the global batch whose rows ``x`` are on this rank
        (None: ``x`` is a whole batch)."""
        if self.noise is None:
            return x
        if full is None:
            return self.noise.sample(x, rng)
        return shard_apply(lambda z: self.noise.sample(z, rng), x, full, self.dist)

    def _forward(self, model: nn.Module, noisy: torch.Tensor) -> torch.Tensor:
        if self.denoiser is not None:
            with torch.no_grad():
                noisy = self.denoiser(noisy)
        if self.cfg.channels_last:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        return model(noisy)

    def step_loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, rng: torch.Generator, *, full: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss of this rank's rows of a global batch of ``full`` rows, scaled so that averaging over
        ranks gives the whole batch's mean; and the logits."""
        scale = self.dist.world / full
        with self._autocast():
            loss, logits = self.objective.loss(
                lambda z: self._forward(model, z), lambda z: self._noisy(z, rng, full), x, y
            )
        return loss * scale, logits

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, data: TrainData) -> float:
        """Accuracy of the base classifier on one noisy draw per test image (a progress signal, not a certificate).
        The draws are the same every epoch and leave the training generators untouched."""
        model.eval()
        rng = torch.Generator(device=self.device).manual_seed(self.cfg.seed + 2)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        for x, y in batches(data.test_set, 500, shuffle=False, indices=data.eval_idx, device=self.device):
            with self._autocast():
                correct += (self._forward(model, self._noisy(x, rng)).argmax(1) == y).sum()
        return float(correct) / max(len(data.eval_idx), 1)


def extend_cosine(scheduler: torch.optim.lr_scheduler.CosineAnnealingLR, total_steps: int) -> None:
    """Re-plan a cosine schedule for ``total_steps`` in all, at the step it has reached: the learning rate becomes
    the one the longer schedule has at that step, and it anneals to ``eta_min`` at ``total_steps``. (A run of 2 epochs
    extended to 4 is therefore not a 4-epoch run: its first 2 epochs annealed towards 0, and the extension goes on at
    half the initial rate, as the 4-epoch schedule is at its middle.)"""
    if total_steps < scheduler.last_epoch:
        raise ConfigError(
            f"cannot shorten a run to {total_steps} steps: it has done {scheduler.last_epoch}",
            hint="--epochs may only grow on --resume",
        )
    scheduler.T_max = total_steps
    t = scheduler.last_epoch
    eta_min = scheduler.eta_min
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / total_steps)) / 2
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def train_classifier(cfg: TrainConfig, out: str | Path, **kwargs: Any) -> pd.DataFrame:
    """Train ``cfg`` into the experiment folder ``out``; returns the training log (one row per epoch)."""
    return Trainer(cfg, out).run(**kwargs)
