"""Training a base classifier under noise: noise augmentation or stability training (SPEC.md), SGD with
Nesterov momentum and cosine annealing, into an experiment folder that can be resumed."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import time
import warnings
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
from smoothcore.data import DatasetSource, batches, get_dataset, spread_indices
from smoothcore.devices import resolve_device
from smoothcore.distributed import DistInfo, barrier
from smoothcore.engine import PRECISIONS
from smoothcore.errors import CheckpointError, ConfigError, ExperimentError, SmoothcoreError
from smoothcore.experiment import Experiment, releases_experiment_lock
from smoothcore.fileio import atomic_torch_save, atomic_write
from smoothcore.loading import classifier_checkpoint
from smoothcore.models import MODEL_ARGUMENTS, build_classifier
from smoothcore.noise import NOISE_ARGUMENTS, Noise, make_noise

# The reference recipes (SPEC.md); anything else starts from the generic defaults of TrainConfig.
RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    ("cifar10", "wrn40"): {"epochs": 120, "batch_size": 64, "lr": 0.1},
    ("imagenet", "resnet50"): {"epochs": 30, "batch_size": 256, "lr": 0.1},
}


@dataclass
class TrainConfig:
    dataset: str = "fashion-mnist"
    model: str = "cnn"
    noise: str = "dssn"
    sigma: float | None = None
    lambd: float | None = None
    noise_seed: int = 0
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = True
    stability: bool = False
    stability_weight: float = 6.0
    seed: int = 0
    train_limit: int | None = None
    eval_limit: int = 1000
    data_dir: str | None = None
    denoiser: str | None = None
    denoiser_sha256: str | None = None
    finetune: str | None = None
    precision: str = "fp32"
    channels_last: bool = False
    device: str = "auto"  # cuda when available, else cpu
    workers: int = 0
    save_every: int = 1
    save_every_steps: int | None = None
    trust_checkpoint: bool = False
    model_params: dict[str, Any] = field(default_factory=dict)
    noise_params: dict[str, Any] = field(default_factory=dict)  # a noise's further parameters (plugins')

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        if self.noise == "none":  # a clean classifier: options of noisy training would be silently ignored
            given = [
                opt
                for opt, on in (
                    ("--sigma", self.sigma is not None),
                    ("--lambda", self.lambd is not None),
                    ("--stability", self.stability),
                    ("--noise-param", bool(self.noise_params)),
                )
                if on
            ]
            if given:
                raise ConfigError(
                    f"{', '.join(given)} given with --noise none: a clean classifier is trained without noise",
                    hint="drop them, or name the noise to train under",
                )
        check_params("noise_params", self.noise_params, NOISE_ARGUMENTS)
        check_params("model_params", self.model_params, MODEL_ARGUMENTS)
        for name in ("epochs", "batch_size", "eval_limit", "save_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.train_limit is not None and (not isinstance(self.train_limit, int) or self.train_limit < 1):
            raise ConfigError(f"train_limit must be a positive integer, got {self.train_limit!r}")
        for name, high in (("lr", 10.0), ("weight_decay", 1.0), ("momentum", 1.0), ("stability_weight", 1e6)):
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not math.isfinite(v)
                or v < 0
                or v > high
                or (name == "lr" and v == 0)
                or (name == "momentum" and v == 1)
            ):
                bounds = {"lr": "in (0, 10]", "momentum": "in [0, 1)"}.get(name, f"in [0, {high:g}]")
                raise ConfigError(f"{name} must be a number {bounds}, got {v!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


def append_csv(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` to the CSV log at ``path`` (header on first write)."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def damaged_train_state(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{path} is damaged and cannot be resumed from ({type(exc).__name__}: {exc})",
        hint="pass --overwrite to start the run again",
    )


def truncate_log(path: Path, epochs: int) -> None:
    """Keep the rows of the CSV log at ``path`` for epochs ``1 .. epochs`` (resuming from a save at ``epochs``)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if r.get("epoch", "").isdigit() and int(r["epoch"]) <= epochs]
    if len(kept) == len(rows):
        return
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    atomic_write(path, lambda f: f.write(buf.getvalue()), mode="w")


def make_noise_for(cfg: TrainConfig, source: DatasetSource, device: torch.device) -> Noise | None:
    """The training noise; ``none`` trains a clean classifier (for denoised smoothing's off-the-shelf setting)."""
    if cfg.noise == "none":
        return None
    return make_noise(
        cfg.noise,
        sigma=cfg.sigma,
        lambd=cfg.lambd,
        dim=source.dim,
        seed=cfg.noise_seed,
        device=device,
        **cfg.noise_params,
    )


def load_frozen_denoiser(
    path: str | None, in_channels: int, device: torch.device, *, trust: bool = False
) -> nn.Module | None:
    if path is None:
        return None
    from smoothcore.denoise import load_denoiser

    den = load_denoiser(path, device=device, trust=trust)
    expected = getattr(den, "in_channels", in_channels)
    if expected != in_channels:
        raise ConfigError(
            f"the denoiser {path} takes {expected}-channel images but the data has {in_channels} channels"
        )
    for p in den.parameters():
        p.requires_grad_(False)
    return den.eval()


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


def shard_apply(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, full: int, info: DistInfo
) -> torch.Tensor:
    """Apply a random transform to this rank's rows ``x`` of a global batch of ``full`` rows, drawing the randomness
    of the whole batch: every rank consumes its generator exactly as a single process would."""
    if not info.active:
        return fn(x)
    whole = torch.zeros((full, *x.shape[1:]), dtype=x.dtype, device=x.device)
    whole[info.rank :: info.world] = x
    return fn(whole)[info.rank :: info.world]


def run_on_main(info: DistInfo, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 and hand its result (or its SmoothcoreError) to every rank."""
    if not info.active:
        return fn()
    import torch.distributed as dist

    box: list[Any] = [None]
    if info.main:
        try:
            box[0] = ("ok", fn())
        except SmoothcoreError as exc:
            box[0] = ("error", exc)
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return value


def all_reduce_sum(info: DistInfo, *values: float) -> tuple[float, ...]:
    if not info.active:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return tuple(t.tolist())


class Trainer:
    """One training run of ``cfg`` into the experiment folder ``out``."""

    def __init__(self, cfg: TrainConfig, out: str | Path) -> None:
        cfg.validate()
        self.cfg = cfg
        self.exp = Experiment(out)
        self.device = resolve_device(cfg.device)
        if self.device.type == "cpu":
            from smoothcore.engine import keep_freed_memory

            keep_freed_memory()
        self.source = get_dataset(cfg.dataset)
        self.noise = make_noise_for(cfg, self.source, self.device)
        c, h, _ = self.source.image_shape
        self.classifier = build_classifier(
            cfg.model,
            num_classes=self.source.num_classes,
            in_channels=c,
            image_size=h,
            mean=self.source.mean,
            std=self.source.std,
            **cfg.model_params,
        )
        self.denoiser = load_frozen_denoiser(cfg.denoiser, c, self.device, trust=cfg.trust_checkpoint)

    def _autocast(self):
        dtype = PRECISIONS[self.cfg.precision]
        return contextlib.nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    def _init_weights(self) -> None:
        if self.cfg.finetune is None:
            return
        from smoothcore.loading import classifier_weights

        obj = load_file(self.cfg.finetune, trust=self.cfg.trust_checkpoint)
        state = classifier_weights(obj, self.cfg.finetune)
        own = self.classifier.state_dict()
        usable = {
            k: v
            for k, v in state.items()
            if k in own and isinstance(v, torch.Tensor) and v.shape == own[k].shape
        }
        last = [k for k in own if k.endswith(("fc.weight", "fc.bias"))] or list(own)[-2:]
        usable = {
            k: v for k, v in usable.items() if k not in last and not k.startswith("norm.")
        }  # the new data normalises itself
        if not usable:
            raise CheckpointError(f"{self.cfg.finetune} shares no parameters with {self.cfg.model}")
        self.classifier.load_state_dict(usable, strict=False)

    @releases_experiment_lock
    def run(
        self,
        *,
        overwrite: bool = False,
        resume: bool = False,
        on_step: Callable[[int, int, int, float], None] | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        dist_info: DistInfo | None = None,
    ) -> pd.DataFrame:
        """Train, or continue a run from its last saved state (``resume``). Under torchrun (``dist_info`` with several
        ranks) the model is wrapped in DistributedDataParallel: each rank loads and trains on its rows of every
        global batch, all ranks draw the augmentation and noise of the whole batch from the same generator (so the
        run matches a single process on the same data order), and only rank 0 evaluates, logs and saves."""
        cfg = self.cfg
        info = dist_info or DistInfo()
        if cfg.denoiser is not None and cfg.denoiser_sha256 is None:
            cfg.denoiser_sha256 = sha256(cfg.denoiser)
        # Everything that can fail on bad input (data, fine-tuning weights) comes before the folder is touched.
        train_set = self.source.load("train", cfg.data_dir)
        test_set = self.source.load("test", cfg.data_dir)
        train_idx = spread_indices(len(train_set), cfg.train_limit)
        eval_idx = spread_indices(len(test_set), cfg.eval_limit)
        torch.manual_seed(cfg.seed)
        self.classifier = self.build_fresh()
        self._init_weights()
        resuming = run_on_main(
            info, lambda: self.exp.prepare(cfg.to_dict(), overwrite=overwrite, resume=resume)
        )
        model = self.classifier.to(self.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
        steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps_per_epoch)
        order_rng = torch.Generator().manual_seed(cfg.seed)
        noise_rng = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        scaler = self._scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        start_epoch, start_step, carried = 0, 0, (0.0, 0, 0)
        if resuming:
            state = load_file(self.exp.train_state)
            try:
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                order_rng.set_state(state["epoch_order_rng"] if state.get("step") else state["order_rng"])
                noise_rng.set_state(state["noise_rng"])
                start_epoch, start_step = int(state["epoch"]), int(state.get("step", 0))
                carried = tuple(state.get("partial", (0.0, 0, 0)))
                if (
                    "torch_rng" in state
                ):  # dropout and any other use of the global generators continue where they were
                    torch.set_rng_state(state["torch_rng"])
                if state.get("cuda_rng") is not None and self.device.type == "cuda":
                    torch.cuda.set_rng_state(state["cuda_rng"], self.device)
                if state.get("scaler"):
                    scaler.load_state_dict(state["scaler"])
                if info.main:
                    truncate_log(
                        self.exp.train_log, start_epoch
                    )  # epochs logged after the last save are trained again
            except (KeyError, TypeError, ValueError, RuntimeError) as exc:
                raise damaged_train_state(self.exp.train_state, exc) from None
        elif info.main:
            self.exp.train_log.unlink(missing_ok=True)
        if info.main:
            data_fp = getattr(train_set, "fingerprint", None)
            fingerprint = data_fp() if data_fp else None
            before = (self.exp.manifest().get("data") or {}).get("train_fingerprint") if resuming else None
            if (
                before and fingerprint and before != fingerprint
            ):  # --data-dir may move, the data may not change
                raise ExperimentError(
                    f"--resume of {self.exp.path} reads other training data than the run started with "
                    f"(fingerprint {fingerprint}, was {before})",
                    hint="point --data-dir at the data the run was started with",
                )
            self.exp.update_manifest(
                data={
                    "dataset": cfg.dataset,
                    "train_images": len(train_idx),
                    "train_fingerprint": fingerprint,
                },
                noise=self.noise.params() if self.noise is not None else None,
            )
        train_model = self._wrap_distributed(model, info)

        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.time()
            train_model.train()
            epoch_order_state = order_rng.get_state()
            skip = start_step if epoch == start_epoch else 0
            loss_sum = torch.tensor(float(carried[0]) if skip else 0.0, device=self.device)
            correct = torch.tensor(int(carried[1]) if skip else 0, device=self.device, dtype=torch.long)
            seen = int(carried[2]) if skip else 0
            for step, (x, y, full) in enumerate(
                batches(
                    train_set,
                    cfg.batch_size,
                    shuffle=True,
                    generator=order_rng,
                    indices=train_idx,
                    workers=cfg.workers,
                    device=self.device,
                    start_batch=skip,
                    shard=(info.rank, info.world),
                ),
                start=skip,
            ):
                x = self._augment_shard(x, full, info, noise_rng)
                loss, logits = self.step_loss(train_model, x, y, noise_rng, full=full, info=info)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                loss_sum += loss.detach() * full / info.world
                correct += (logits.argmax(1) == y).sum()
                seen += len(y)
                if on_step is not None and info.main:
                    on_step(epoch, step + 1, steps_per_epoch, 0.0)
                if (
                    cfg.save_every_steps
                    and (step + 1) % cfg.save_every_steps == 0
                    and step + 1 < steps_per_epoch
                ):
                    if info.main:
                        self.save_state(
                            model,
                            optimizer,
                            scheduler,
                            order_rng,
                            noise_rng,
                            epoch,
                            step=step + 1,
                            epoch_order_rng=epoch_order_state,
                            partial=(float(loss_sum), int(correct), seen),
                        )
                    barrier(info)
            loss_total, correct_total, seen_total = all_reduce_sum(info, float(loss_sum), int(correct), seen)
            if info.main:
                row = {
                    "epoch": epoch + 1,
                    "train_loss": loss_total / max(seen_total, 1),
                    "train_noisy_acc": correct_total / max(seen_total, 1),
                    "test_noisy_acc": self.evaluate(model, test_set, eval_idx),
                    "lr": optimizer.param_groups[0]["lr"],
                    "seconds": round(time.time() - t0, 3),
                }
                append_csv(self.exp.train_log, row)
                if (epoch + 1) % cfg.save_every == 0 or epoch + 1 == cfg.epochs:
                    self.save(model, optimizer, scheduler, order_rng, noise_rng, epoch + 1)
                if on_epoch is not None:
                    on_epoch(row)
            barrier(info)
        barrier(info)
        return pd.read_csv(self.exp.train_log)

    def _wrap_distributed(self, model: nn.Module, info: DistInfo) -> nn.Module:
        if not info.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return DistributedDataParallel(model, device_ids=[self.device.index])
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()) and info.main:
            warnings.warn(
                "distributed training on the CPU: SyncBatchNorm needs GPUs, so batch-norm statistics are per rank",
                stacklevel=2,
            )
        return DistributedDataParallel(model)

    def _augment_shard(
        self, x: torch.Tensor, full: int, info: DistInfo, rng: torch.Generator
    ) -> torch.Tensor:
        if self.source.augment is None:
            return x
        return shard_apply(lambda z: self.source.augment(z, rng), x, full, info)

    def build_fresh(self) -> nn.Module:
        c, h, _ = self.source.image_shape
        return build_classifier(
            self.cfg.model,
            num_classes=self.source.num_classes,
            in_channels=c,
            image_size=h,
            mean=self.source.mean,
            std=self.source.std,
            **self.cfg.model_params,
        )

    def _noisy(
        self, x: torch.Tensor, rng: torch.Generator, full: int | None = None, info: DistInfo | None = None
    ) -> torch.Tensor:
        if self.noise is None:
            return x
        if info is None or not info.active:
            return self.noise.sample(x, rng)
        return shard_apply(lambda z: self.noise.sample(z, rng), x, full, info)

    def _forward(self, model: nn.Module, noisy: torch.Tensor) -> torch.Tensor:
        if self.denoiser is not None:
            with torch.no_grad():
                noisy = self.denoiser(noisy)
        if self.cfg.channels_last:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        return model(noisy)

    def step_loss(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        rng: torch.Generator,
        *,
        full: int | None = None,
        info: DistInfo | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss of this rank's rows, scaled so that averaging over ranks gives the whole batch's mean."""
        full = full or len(y)
        scale = (info.world if info is not None else 1) / full
        with self._autocast():
            logits = self._forward(model, self._noisy(x, rng, full, info))
            if not self.cfg.stability:
                return F.cross_entropy(logits, y, reduction="sum") * scale, logits
            logits_2 = self._forward(model, self._noisy(x, rng, full, info))
            loss = stability_loss(
                logits.float(), logits_2.float(), y, self.cfg.stability_weight, reduction="sum"
            )
            return loss * scale, logits

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, test_set, indices: list[int]) -> float:
        """Accuracy of the base classifier on one noisy draw per test image (a progress signal, not a certificate).
        The draws are the same every epoch and leave the training generators untouched."""
        model.eval()
        rng = torch.Generator(device=self.device).manual_seed(self.cfg.seed + 2)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        for x, y in batches(test_set, 500, shuffle=False, indices=indices, device=self.device):
            with self._autocast():
                correct += (self._forward(model, self._noisy(x, rng)).argmax(1) == y).sum()
        return float(correct) / max(len(indices), 1)

    def save_state(self, model, optimizer, scheduler, order_rng, noise_rng, epoch: int, **extra: Any) -> None:
        """The resume state (atomic): model, optimiser, scheduler, data-order and noise generators, the global torch
        (and CUDA) generators, the fp16 gradient scaler, and, mid-epoch,
        the step reached, the order generator at the start of the epoch and the running epoch totals."""
        atomic_torch_save(
            self.exp.train_state,
            {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "order_rng": order_rng.get_state(),
                "noise_rng": noise_rng.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                "scaler": self._scaler.state_dict() if getattr(self, "_scaler", None) is not None else {},
                **extra,
            },
        )

    def save(self, model, optimizer, scheduler, order_rng, noise_rng, epoch: int) -> None:
        c, h, _ = self.source.image_shape
        base = model
        extra = {"epoch": epoch, "noise": self.noise.params() if self.noise is not None else None}
        if self.cfg.denoiser is not None:
            extra["denoiser"] = {
                "path": str(Path(self.cfg.denoiser).resolve()),
                "sha256": self.cfg.denoiser_sha256,
            }
        ckpt = classifier_checkpoint(
            base,
            name=self.cfg.model,
            params=self.cfg.model_params,
            dataset=self.cfg.dataset,
            num_classes=self.source.num_classes,
            in_channels=c,
            image_size=h,
            extra=extra,
        )
        atomic_torch_save(self.exp.checkpoint, ckpt)
        self.save_state(model, optimizer, scheduler, order_rng, noise_rng, epoch)
        self.exp.update_manifest(epoch=epoch, checkpoint_sha256=sha256(self.exp.checkpoint))


def train_classifier(cfg: TrainConfig, out: str | Path, **kwargs: Any) -> pd.DataFrame:
    """Train ``cfg`` into the experiment folder ``out``; returns the training log (one row per epoch)."""
    return Trainer(cfg, out).run(**kwargs)
