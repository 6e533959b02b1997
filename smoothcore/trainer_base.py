"""What the two trainers share (the classifier's in :mod:`smoothcore.train`, the denoiser's in
``smoothcore_denoisers.training``): the training state that ``train_state.pt`` holds and a resume restores, and the
shape of a run, in named steps: load the data, start (or resume) the experiment folder, then train, log and save
epoch by epoch."""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from smoothcore.checkpoints import load_file
from smoothcore.data import batches, get_dataset, spread_indices
from smoothcore.devices import resolve_device
from smoothcore.distributed import DistInfo, barrier, run_on_main
from smoothcore.experiment import Experiment, append_csv, damaged_train_state, truncate_log
from smoothcore.fileio import atomic_torch_save
from smoothcore.noises import Noise, make_noise

OnStep = Callable[[int, int, int], None]  # (epoch, counted from 0; steps done in it; steps per epoch)
OnEpoch = Callable[[dict[str, Any]], None]  # the epoch's row of the training log


@dataclass
class TrainData:
    """The training images and the fixed test images evaluated after every epoch."""

    train_set: Dataset
    test_set: Dataset
    train_idx: list[int]
    eval_idx: list[int]
    steps_per_epoch: int


@dataclass
class TrainState:
    """What ``train_state.pt`` holds and a resume restores: the model, its optimiser and learning-rate schedule, the
    generators of the data order and of the noise (and augmentation), and the number of epochs completed."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    order_rng: torch.Generator
    noise_rng: torch.Generator
    epoch: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "order_rng": self.order_rng.get_state(),
            "noise_rng": self.noise_rng.get_state(),
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.order_rng.set_state(saved["order_rng"])
        self.noise_rng.set_state(saved["noise_rng"])
        self.epoch = int(saved["epoch"])


class EpochTrainer(ABC):
    """One training run of ``cfg`` into the experiment folder ``out``, epoch by epoch. A trainer builds the model it
    trains with :meth:`seeded` (as ``self.model``), its state (:meth:`new_state`), trains one epoch (:meth:`train_epoch`), gives the epoch's log columns (:meth:`log_columns`)
    and saves what an epoch produced (:meth:`save_epoch`); its ``run`` strings the steps together."""

    dist = DistInfo()  # a single process, unless a run is given torchrun's ranks

    def __init__(self, cfg: Any, out: str | Path) -> None:
        cfg.validate()
        self.cfg = cfg
        self.exp = Experiment(out)
        self.device = resolve_device(cfg.device)
        self.source = get_dataset(cfg.dataset)

    # -- construction -------------------------------------------------------------------------------------------
    def training_noise(self) -> Noise:
        cfg = self.cfg
        return make_noise(
            cfg.noise,
            sigma=cfg.sigma,
            lambd=cfg.lambd,
            dim=self.source.dim,
            seed=cfg.noise_seed,
            device=self.device,
            **cfg.noise_params,
        )

    def seeded(self, build: Callable[[], nn.Module]) -> nn.Module:
        """``build()`` with its initial weights drawn from the seed. The model is built once, at construction (a bad
        name or parameter fails there), without touching the caller's global generator; the state that generator
        reaches after the initialisation is where :meth:`start` puts it, as if the model were built then."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            model = build()
            self._rng_after_init = torch.get_rng_state()
        return model

    def generators(self) -> tuple[torch.Generator, torch.Generator]:
        """Fresh generators from the seed: the data order's (on the CPU) and the noise's (on the device)."""
        seed = self.cfg.seed
        return torch.Generator().manual_seed(seed), torch.Generator(device=self.device).manual_seed(seed + 1)

    # -- the steps of a run -------------------------------------------------------------------------------------
    def load_data(self) -> TrainData:
        """The training set and the evaluation subset of the test set (bad data fails here, before the experiment
        folder is touched)."""
        cfg = self.cfg
        train_set = self.source.load("train", cfg.data_dir)
        test_set = self.source.load("test", cfg.data_dir)
        train_idx = spread_indices(len(train_set), cfg.train_limit)
        eval_idx = spread_indices(len(test_set), cfg.eval_limit)
        return TrainData(train_set, test_set, train_idx, eval_idx, math.ceil(len(train_idx) / cfg.batch_size))

    def start(
        self, data: TrainData, config: dict[str, Any], *, overwrite: bool, resume: bool
    ) -> tuple[TrainState, bool]:
        """Create the experiment folder recording ``config`` (rank 0; with ``resume``, check it instead) and the
        training state: fresh, or restored from the last save. Returns the state and whether it was restored."""
        torch.manual_seed(self.cfg.seed)
        torch.set_rng_state(self._rng_after_init)  # the model was built from the seed: see seeded()
        resuming = run_on_main(
            self.dist, lambda: self.exp.prepare(config, overwrite=overwrite, resume=resume)
        )
        state = self.new_state(data)
        if resuming:
            self._restore_saved(state)
            if self.dist.main:
                truncate_log(
                    self.exp.train_log, state.epoch
                )  # epochs logged after the last save are trained again
        elif self.dist.main:
            self.exp.train_log.unlink(missing_ok=True)
        return state, resuming

    def train_epochs(
        self, state: TrainState, data: TrainData, on_step: OnStep | None, on_epoch: OnEpoch | None
    ) -> pd.DataFrame:
        """Train the epochs not done yet; after each one rank 0 logs it, saves and reports its row. Returns the
        training log, one row per epoch."""
        while state.epoch < self.cfg.epochs:
            t0 = time.time()
            train_columns = self.train_epoch(state, data, on_step)
            state.epoch += 1
            if self.dist.main:
                row = {
                    "epoch": state.epoch,
                    **self.log_columns(state, data, train_columns),
                    "seconds": round(time.time() - t0, 3),
                }
                append_csv(self.exp.train_log, row)
                self.save_epoch(state, row)
                if on_epoch is not None:
                    on_epoch(row)
            barrier(self.dist)
        barrier(self.dist)
        return pd.read_csv(self.exp.train_log)

    # -- helpers of the steps -----------------------------------------------------------------------------------
    def training_batches(self, state: TrainState, data: TrainData, **options: Any) -> Iterator:
        """This epoch's training batches, in the order drawn from ``state.order_rng`` (``options``: see
        :func:`smoothcore.data.batches`)."""
        return batches(
            data.train_set,
            self.cfg.batch_size,
            shuffle=True,
            generator=state.order_rng,
            indices=data.train_idx,
            workers=self.cfg.workers,
            device=self.device,
            **options,
        )

    def save_state(self, state: TrainState) -> None:
        atomic_torch_save(self.exp.train_state, state.state_dict())

    def restore(self, state: TrainState, saved: dict[str, Any]) -> None:
        """Put the saved training state ``saved`` into ``state``."""
        state.load_state_dict(saved)

    def _restore_saved(self, state: TrainState) -> None:
        saved = load_file(self.exp.train_state)
        try:
            self.restore(state, saved)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise damaged_train_state(self.exp.train_state, exc) from None

    # -- what each trainer provides -----------------------------------------------------------------------------
    @abstractmethod
    def new_state(self, data: TrainData) -> TrainState:
        """The state at the start of training: the model on the device, a fresh optimiser and schedule."""

    @abstractmethod
    def train_epoch(self, state: TrainState, data: TrainData, on_step: OnStep | None) -> dict[str, float]:
        """Train epoch ``state.epoch`` (its rest, when resumed in its middle); returns its training log columns."""

    @abstractmethod
    def log_columns(
        self, state: TrainState, data: TrainData, train_columns: dict[str, float]
    ) -> dict[str, Any]:
        """The columns of the epoch's log row between ``epoch`` and ``seconds`` (evaluation included)."""

    @abstractmethod
    def save_epoch(self, state: TrainState, row: dict[str, Any]) -> None:
        """Save what the epoch just ended (``state.epoch`` completed) produced."""
