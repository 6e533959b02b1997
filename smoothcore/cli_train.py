"""``smoothcore train-classifier`` and ``smoothcore train-denoiser``: thin over :class:`smoothcore.train.Trainer`
and :class:`smoothcore_denoisers.training.DenoiserTrainer`; option defaults are their configurations'."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from smoothcore.cli_config import ConfigCommand
from smoothcore.cli_params import (
    Opt,
    data_dir_option,
    default,
    device_option,
    noise_options,
    option,
    parse_params,
    subset_options,
)
from smoothcore.cli_render import count, err_console, progress_bar
from smoothcore.configs import PRECISION_NAMES as PRECISIONS
from smoothcore.configs import TrainConfig
from smoothcore_denoisers.config import OBJECTIVES, DenoiserConfig


@click.command("train-classifier", cls=ConfigCommand)
@option(TrainConfig, "dataset", "--dataset", help="Registered dataset name.")
@data_dir_option
@option(
    TrainConfig,
    "model",
    "--model",
    help="Registered classifier name (torchvision:<name> for any torchvision model).",
)
@click.option(
    "--model-param", multiple=True, help="Architecture parameter KEY=VALUE (e.g. width=32, batch_norm=false)."
)
@option(TrainConfig, "noise", "--noise", help="Registered noise name ('none': a clean classifier).")
@noise_options
@click.option(
    "--epochs",
    type=int,
    default=None,
    help="Training epochs.",
    cls=Opt,
    show_default=f"the reference recipe for the dataset/model, else {default(TrainConfig, 'epochs')}",
)
@click.option(
    "--batch-size",
    type=int,
    default=None,
    help="Batch size.",
    cls=Opt,
    show_default=f"{default(TrainConfig, 'batch_size')}, the reference recipe",
)
@click.option(
    "--lr",
    type=float,
    default=None,
    help="Initial learning rate (cosine annealed).",
    cls=Opt,
    show_default=str(default(TrainConfig, "lr")),
)
@option(TrainConfig, "weight_decay", "--weight-decay", type=float, help="SGD weight decay.")
@option(TrainConfig, "momentum", "--momentum", type=float, help="SGD momentum (Nesterov).")
@option(
    TrainConfig,
    "objective",
    "--objective",
    help="Registered training objective: plain, stability, consistency, macer, or a plugin's (smoothcore plugins).",
)
@click.option(
    "--objective-param",
    multiple=True,
    help="Parameter of the objective KEY=VALUE (e.g. lbd=20, m=4; macer: draws=8, weight=4).",
)
@click.option("--stability", is_flag=True, help="Stability training (the same as --objective stability).")
@option(
    TrainConfig,
    "stability_weight",
    "--stability-weight",
    type=float,
    help="Weight of the KL term of stability training.",
)
@option(TrainConfig, "seed", "--seed", type=int, help="Seed for initialisation, data order and noise.")
@subset_options(TrainConfig)
@click.option(
    "--denoiser",
    type=click.Path(),
    default=None,
    help="Train on top of this frozen denoiser (recorded in the experiment).",
)
@click.option(
    "--finetune",
    type=click.Path(),
    default=None,
    help="Start from this checkpoint's weights, except its last layer.",
)
@click.option(
    "--trust-checkpoint",
    is_flag=True,
    help="Allow loading legacy pickled --finetune/--denoiser files (can run code).",
)
@option(
    TrainConfig,
    "precision",
    "--precision",
    type=click.Choice(list(PRECISIONS)),
    help="fp32, or autocast bf16/fp16 (fp16 with a gradient scaler).",
)
@click.option(
    "--channels-last", is_flag=True, help="Channels-last memory format (faster convolutions on GPUs)."
)
@device_option(TrainConfig)
@option(TrainConfig, "workers", "--workers", type=int, help="Data-loading processes (folder datasets).")
@option(TrainConfig, "save_every", "--save-every", type=int, help="Save a checkpoint every N epochs.")
@click.option(
    "--save-every-steps",
    type=int,
    default=None,
    help="Also save the resume state every N steps (mid-epoch resume).",
)
@click.option(
    "--out", type=click.Path(), required=True, help="Experiment folder to write (e.g. checkpoints/my-run)."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing experiment in --out.")
@click.option("--resume", is_flag=True, help="Continue the experiment in --out from its last saved epoch.")
def train_classifier_cmd(**opts: Any) -> None:
    """Train a base classifier under noise into an experiment folder (the same command under torchrun trains with
    DistributedDataParallel)."""
    from smoothcore.distributed import device_for, from_env
    from smoothcore.train import RECIPES, Trainer

    info = from_env()
    recipe = RECIPES.get((opts["dataset"], opts["model"]), {})
    if opts["resume"] and (Path(opts["out"]) / "config.json").exists():
        opts.update(_recorded_training(opts))
    cfg = TrainConfig(
        noise_seed=_given(opts["noise_seed"], 0),
        **{  # given options, else the reference recipe for this dataset/model, else TrainConfig's defaults
            key: _given(opts[key], recipe.get(key, default(TrainConfig, key)))
            for key in ("epochs", "batch_size", "lr")
        },
        **{key: opts[key] for key in _PASSED_THROUGH},  # the options that are TrainConfig fields as they are
        device=device_for(opts["device"], info),
        model_params=parse_params(opts["model_param"]),
        noise_params=parse_params(opts["noise_param"]),
        objective_params=parse_params(opts["objective_param"]),
    )
    trainer = Trainer(cfg, opts["out"])
    console = err_console
    noise = repr(trainer.noise) if trainer.noise is not None else "no noise (clean)"
    if cfg.objective != "plain":
        shown = ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in trainer.objective.params().items()
        )
        noise += f", objective {cfg.objective}" + (f" ({shown})" if shown else "")
    ranks = f" on {info.world} ranks" if info.active else ""
    if info.main:
        console.print(
            f"training [bold]{cfg.model}[/] on [bold]{cfg.dataset}[/]{ranks} under {noise} -> {opts['out']}",
            highlight=False,
        )
    with progress_bar() as bar:
        task = bar.add_task("epoch 1", total=None, visible=info.main)

        def on_step(epoch: int, step: int, total: int) -> None:
            bar.update(task, description=f"epoch {epoch + 1}/{cfg.epochs}", completed=step, total=total)

        trained = []

        def on_epoch(row: dict[str, Any]) -> None:
            trained.append(row["epoch"])
            bar.console.print(
                f"epoch {row['epoch']}: loss {row['train_loss']:.4f}, noisy train acc {row['train_noisy_acc']:.4f}, "
                f"noisy test acc {row['test_noisy_acc']:.4f} ({row['seconds']:.1f} s)",
                highlight=False,
            )

        log = trainer.run(
            overwrite=opts["overwrite"],
            resume=opts["resume"],
            on_step=on_step,
            on_epoch=on_epoch,
            dist_info=info,
        )
    if info.main and not trained:
        console.print(f"nothing to train: {trainer.exp.checkpoint} is complete ({count(len(log), 'epoch')})")
    elif info.main:
        console.print(f"saved {trainer.exp.checkpoint} ({count(len(log), 'epoch')})", highlight=False)


_PASSED_THROUGH = (
    *(
        "dataset",
        "model",
        "noise",
        "sigma",
        "lambd",
        "momentum",
        "weight_decay",
        "objective",
        "stability",
        "stability_weight",
    ),
    *("seed", "train_limit", "eval_limit", "data_dir", "denoiser", "finetune", "precision", "channels_last"),
    *("workers", "save_every", "save_every_steps", "trust_checkpoint"),
)


def _recorded_training(opts: dict[str, Any]) -> dict[str, Any]:
    """For --resume: the run's recorded configuration for every option not given (on the command line or in a
    config file), so that `train-classifier --resume --out DIR` needs nothing else."""
    from click.core import ParameterSource

    from smoothcore.experiment import Experiment

    ctx = click.get_current_context()
    recorded = Experiment(opts["out"]).config()
    listed = {
        "model_param": "model_params",
        "noise_param": "noise_params",
        "objective_param": "objective_params",
    }  # KEY=VALUE lists, recorded as mappings
    out: dict[str, Any] = {}
    for name in opts:
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None):
            continue
        key = listed.get(name, name)
        if key in recorded and name not in (
            "device",
            "workers",
            "trust_checkpoint",
        ):  # this machine's choices
            value = recorded[key]
            out[name] = tuple(f"{k}={v}" for k, v in value.items()) if name in listed else value
    return out


def _given(value: Any, default: Any) -> Any:
    """The option's value when the user gave one (0 included: it is checked, not replaced), else the default."""
    return default if value is None else value


@click.command("train-denoiser", cls=ConfigCommand)
@option(DenoiserConfig, "dataset", "--dataset", help="Registered dataset name.")
@data_dir_option
@option(DenoiserConfig, "arch", "--arch", help="Registered denoiser (dncnn, dncnn-wide, memnet, ...).")
@click.option(
    "--arch-param", multiple=True, help="Architecture parameter KEY=VALUE (e.g. depth=8, channels=32)."
)
@option(DenoiserConfig, "noise", "--noise", help="Any registered noise.")
@noise_options
@option(
    DenoiserConfig,
    "objective",
    "--objective",
    type=click.Choice(OBJECTIVES),
    help="mse (to clean images), or stability/classification through a frozen --classifier.",
)
@click.option(
    "--classifier",
    type=click.Path(),
    default=None,
    help="Frozen classifier for the stability/classification objectives.",
)
@option(DenoiserConfig, "epochs", "--epochs", type=int, help="Training epochs.")
@option(DenoiserConfig, "batch_size", "--batch-size", type=int, help="Images per step.")
@option(DenoiserConfig, "lr", "--lr", type=float, help="Initial learning rate (step decay).")
@option(DenoiserConfig, "optimizer", "--optimizer", type=click.Choice(["adam", "sgd"]), help="Optimiser.")
@option(
    DenoiserConfig,
    "lr_step",
    "--lr-step",
    type=int,
    help="Multiply the learning rate by --lr-gamma every N epochs.",
)
@option(DenoiserConfig, "lr_gamma", "--lr-gamma", type=float, help="Factor of each learning-rate step.")
@click.option(
    "--sgd-after", type=int, default=None, help="Continue with SGD (momentum 0.9) from this epoch on."
)
@option(DenoiserConfig, "sgd_lr", "--sgd-lr", type=float, help="Learning rate of SGD after --sgd-after.")
@option(DenoiserConfig, "weight_decay", "--weight-decay", type=float, help="Weight decay.")
@click.option(
    "--trust-checkpoint", is_flag=True, help="Allow loading a legacy pickled --classifier (can run code)."
)
@option(DenoiserConfig, "seed", "--seed", type=int, help="Seed for initialisation, data order and noise.")
@subset_options(DenoiserConfig)
@device_option(DenoiserConfig)
@option(DenoiserConfig, "workers", "--workers", type=int, help="Data-loading processes (folder datasets).")
@click.option("--out", type=click.Path(), required=True, help="Experiment folder to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing experiment in --out.")
@click.option("--resume", is_flag=True, help="Continue the experiment in --out from its last save.")
def train_denoiser_cmd(
    arch_param: tuple[str, ...], out: str, overwrite: bool, resume: bool, **opts: Any
) -> None:
    """Train a denoiser under noise (Salman et al. 2020) into an experiment folder (denoiser.pt, denoiser_best.pt)."""
    from smoothcore_denoisers.training import DenoiserTrainer

    noise_params = parse_params(opts.pop("noise_param"))
    cfg = DenoiserConfig(
        **{k: v for k, v in opts.items() if v is not None or k in ("sigma", "lambd", "classifier")},
        arch_params=parse_params(arch_param),
        noise_params=noise_params,
    )
    trainer = DenoiserTrainer(cfg, out)
    console = err_console
    console.print(
        f"training denoiser [bold]{cfg.arch}[/] ({cfg.objective}) on {cfg.dataset} under {trainer.noise!r} -> {out}",
        highlight=False,
    )
    with progress_bar() as bar:
        task = bar.add_task("epoch 1", total=None)

        def on_step(epoch: int, step: int, total: int) -> None:
            bar.update(task, description=f"epoch {epoch + 1}/{cfg.epochs}", completed=step, total=total)

        trained = []

        def on_epoch(row: dict[str, Any]) -> None:
            trained.append(row["epoch"])
            acc = (
                ""
                if row["val_accuracy"] != row["val_accuracy"]
                else f", classifier accuracy denoised {row['val_accuracy']:.4f} (noisy {row['noisy_accuracy']:.4f})"
            )
            bar.console.print(
                f"epoch {row['epoch']}: loss {row['train_loss']:.5f}, val mse {row['val_mse']:.5f} "
                f"(noisy input {row['noisy_mse']:.5f}){acc} ({row['seconds']:.1f} s)",
                highlight=False,
            )

        trainer.run(overwrite=overwrite, resume=resume, on_step=on_step, on_epoch=on_epoch)
    if not trained:
        console.print(f"nothing to train: {Path(out) / 'denoiser.pt'} is complete", highlight=False)
        return
    console.print(
        f"saved {Path(out) / 'denoiser.pt'} and the best epoch's {Path(out) / 'denoiser_best.pt'}",
        highlight=False,
    )
