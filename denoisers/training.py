"""Training a denoiser (Salman et al. 2020): objectives ``mse``, ``stability`` and ``classification`` under any
registered noise, Adam with step decay (optionally continuing with SGD), resumable, keeping the best checkpoint."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from smoothcore.checkpoints import load_file, sha256
from smoothcore.checks import check_params
from smoothcore.data import batches, get_dataset, spread_indices
from smoothcore.denoise import denoiser_checkpoint
from smoothcore.devices import resolve_device
from smoothcore.errors import ConfigError
from smoothcore.experiment import Experiment, releases_experiment_lock
from smoothcore.fileio import atomic_torch_save
from smoothcore.loading import check_compatible, load_classifier
from smoothcore.models import build_denoiser
from smoothcore.noise import NOISE_ARGUMENTS, make_noise
from smoothcore.train import append_csv, damaged_train_state, truncate_log

OBJECTIVES = ("mse", "stability", "classification")
DENOISER = "denoiser.pt"
DENOISER_BEST = "denoiser_best.pt"


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


class DenoiserTrainer:
    def __init__(self, cfg: DenoiserConfig, out: str | Path) -> None:
        cfg.validate()
        self.cfg = cfg
        self.exp = Experiment(out)
        self.device = resolve_device(cfg.device)
        self.source = get_dataset(cfg.dataset)
        c = self.source.image_shape[0]
        self.noise = make_noise(
            cfg.noise,
            sigma=cfg.sigma,
            lambd=cfg.lambd,
            dim=self.source.dim,
            seed=cfg.noise_seed,
            device=self.device,
            **cfg.noise_params,
        )
        self.denoiser = build_denoiser(cfg.arch, in_channels=c, **cfg.arch_params)
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

    def _optimizer(self, kind: str, params, lr: float | None = None) -> torch.optim.Optimizer:
        lr = self.cfg.lr if lr is None else lr
        if kind == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=self.cfg.weight_decay)
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=self.cfg.weight_decay)

    @releases_experiment_lock
    def run(
        self,
        *,
        overwrite: bool = False,
        resume: bool = False,
        on_step: Callable[[int, int, int], None] | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ) -> pd.DataFrame:
        cfg = self.cfg
        train_set, test_set = self.source.load("train", cfg.data_dir), self.source.load("test", cfg.data_dir)
        train_idx = spread_indices(len(train_set), cfg.train_limit)
        eval_idx = spread_indices(len(test_set), cfg.eval_limit)
        torch.manual_seed(cfg.seed)  # the initial weights come from the seed, like everything else
        self.denoiser = build_denoiser(cfg.arch, in_channels=self.source.image_shape[0], **cfg.arch_params)
        # bad input (data, architecture) fails above, before the experiment folder is created or replaced
        resuming = self.exp.prepare({"kind": "denoiser", **cfg.to_dict()}, overwrite=overwrite, resume=resume)
        model = self.denoiser.to(self.device)
        kind = "sgd" if cfg.optimizer == "sgd" or (cfg.sgd_after == 0) else "adam"
        optimizer = self._optimizer(kind, model.parameters(), lr=cfg.sgd_lr if cfg.sgd_after == 0 else None)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
        order_rng = torch.Generator().manual_seed(cfg.seed)
        noise_rng = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        start, best = 0, None
        if resuming:
            state = load_file(self.exp.train_state)
            try:
                model.load_state_dict(state["model"])
                kind = state["optimizer_kind"]
                optimizer = self._optimizer(kind, model.parameters())
                optimizer.load_state_dict(state["optimizer"])
                scheduler = torch.optim.lr_scheduler.StepLR(
                    optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma
                )
                scheduler.load_state_dict(state["scheduler"])
                order_rng.set_state(state["order_rng"])
                noise_rng.set_state(state["noise_rng"])
                start, best = int(state["epoch"]), state.get("best")
                truncate_log(self.exp.train_log, start)
            except (KeyError, TypeError, ValueError, RuntimeError) as exc:
                raise damaged_train_state(self.exp.train_state, exc) from None
        else:
            self.exp.train_log.unlink(missing_ok=True)
        steps = math.ceil(len(train_idx) / cfg.batch_size)
        for epoch in range(start, cfg.epochs):
            if cfg.sgd_after is not None and epoch == cfg.sgd_after and kind == "adam":
                kind = "sgd"
                optimizer = self._optimizer(
                    "sgd", model.parameters(), lr=cfg.sgd_lr
                )  # the reference's --start-sgd-lr
                scheduler = torch.optim.lr_scheduler.StepLR(
                    optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma
                )
            t0 = time.time()
            model.train()
            total = torch.zeros((), device=self.device)
            seen = 0
            for step, (x, y) in enumerate(
                batches(
                    train_set,
                    cfg.batch_size,
                    shuffle=True,
                    generator=order_rng,
                    indices=train_idx,
                    workers=cfg.workers,
                    device=self.device,
                )
            ):
                loss = denoiser_loss(
                    cfg.objective, model(self.noise.sample(x, noise_rng)), x, y, self.classifier
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach() * len(y)
                seen += len(y)
                if on_step is not None:
                    on_step(epoch, step + 1, steps)
            scheduler.step()
            row = {
                "epoch": epoch + 1,
                "train_loss": float(total) / max(seen, 1),
                **self.validate(model, test_set, eval_idx),
                "lr": optimizer.param_groups[0]["lr"],
                "optimizer": kind,
                "seconds": round(time.time() - t0, 3),
            }
            score = -row["val_mse"] if cfg.objective == "mse" else row["val_accuracy"]
            improved = best is None or score > best
            if improved:
                best = score
            append_csv(self.exp.train_log, row)
            self.save(model, optimizer, scheduler, order_rng, noise_rng, epoch + 1, kind, best, improved)
            if on_epoch is not None:
                on_epoch(row)
        return pd.read_csv(self.exp.train_log)

    @torch.inference_mode()
    def validate(self, model: nn.Module, test_set, indices: list[int]) -> dict[str, float]:
        """On fixed noisy draws of the first test images: the denoiser's MSE and the noisy input's MSE; with a
        classifier, its accuracy on denoised (and on noisy) images."""
        model.eval()
        rng = torch.Generator(device=self.device).manual_seed(12345)
        sums = {"val_mse": 0.0, "noisy_mse": 0.0, "val_accuracy": 0.0, "noisy_accuracy": 0.0}
        for x, y in batches(test_set, 250, shuffle=False, indices=indices, device=self.device):
            noisy = self.noise.sample(x, rng)
            den = model(noisy)
            sums["val_mse"] += float(((den - x) ** 2).mean(dim=tuple(range(1, x.dim()))).sum())
            sums["noisy_mse"] += float(((noisy - x) ** 2).mean(dim=tuple(range(1, x.dim()))).sum())
            if self.classifier is not None:
                sums["val_accuracy"] += float((self.classifier(den).argmax(1) == y).sum())
                sums["noisy_accuracy"] += float((self.classifier(noisy).argmax(1) == y).sum())
        out = {k: v / max(len(indices), 1) for k, v in sums.items()}
        if self.classifier is None:
            out.pop("val_accuracy")
            out.pop("noisy_accuracy")
            out["val_accuracy"] = float("nan")
        return out

    def save(
        self, model, optimizer, scheduler, order_rng, noise_rng, epoch: int, kind: str, best, improved: bool
    ) -> None:
        cfg = self.cfg
        extra = {
            "epoch": epoch,
            "noise": self.noise.params(),
            "objective": cfg.objective,
            "dataset": cfg.dataset,
        }
        ckpt = denoiser_checkpoint(
            model, arch=cfg.arch, params=cfg.arch_params, in_channels=self.source.image_shape[0], extra=extra
        )
        atomic_torch_save(self.exp.path / DENOISER, ckpt)
        if improved:
            atomic_torch_save(self.exp.path / DENOISER_BEST, ckpt)
        atomic_torch_save(
            self.exp.train_state,
            {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "optimizer_kind": kind,
                "scheduler": scheduler.state_dict(),
                "order_rng": order_rng.get_state(),
                "noise_rng": noise_rng.get_state(),
                "best": best,
            },
        )
        self.exp.update_manifest(
            epoch=epoch, denoiser_sha256=sha256(self.exp.path / DENOISER), noise=self.noise.params()
        )


def train_denoiser(cfg: DenoiserConfig, out: str | Path, **kwargs: Any) -> pd.DataFrame:
    return DenoiserTrainer(cfg, out).run(**kwargs)
