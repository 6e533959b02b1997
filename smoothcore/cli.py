"""The ``smoothcore`` command line: thin commands over the library.

User mistakes (:class:`smoothcore.SmoothcoreError`) print a message and a hint and exit with status 2, without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from smoothcore.errors import SmoothcoreError


def _console(stderr: bool = False) -> Console:
    """Rich console; when output is not a terminal (pipes, CI, tests) tables get room instead of 80 columns."""
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=200)


err_console = _console(stderr=True)


class SmoothcoreGroup(click.Group):
    """A click group that adds plugin commands on first use and turns user errors into clean messages."""

    _plugins_loaded = False

    def _load_plugin_commands(self) -> None:
        if SmoothcoreGroup._plugins_loaded:
            return
        SmoothcoreGroup._plugins_loaded = True
        from smoothcore.plugins import components

        components().manager.hook.register_commands(cli=self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._safe_load()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str):
        self._safe_load()
        return super().get_command(ctx, name)

    def _safe_load(self) -> None:
        try:
            self._load_plugin_commands()
        except SmoothcoreError as exc:
            fail(exc)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SmoothcoreError as exc:
            fail(exc)
        except KeyboardInterrupt:
            interrupted(ctx.invoked_subcommand)
        except OSError as exc:  # the file system refused: read-only, full, a file where a folder should be
            fail(
                SmoothcoreError(
                    os_error_text(exc), hint="check that the path exists, is writable and has room"
                )
            )


RESUME_HINTS = {
    "certify": "rerun the same command with --resume: finished images are kept",
    "train-classifier": "rerun the same command with --resume: it continues from the last save",
    "train-denoiser": "rerun the same command with --resume: it continues from the last save",
    "sweep": "rerun the same sweep: it continues what was interrupted",
}


def interrupted(command: str | None) -> None:
    """Ctrl-C or a termination signal: one line saying how to go on, status 128 + the signal."""
    signum = _SIGNALLED[0] or signal.SIGINT
    err_console.print(f"[bold red]Interrupted[/] ({signal.Signals(signum).name}).", highlight=False)
    if command in RESUME_HINTS:
        err_console.print(f"[yellow]Hint:[/] {RESUME_HINTS[command]}", highlight=False, soft_wrap=True)
    sys.exit(128 + signum)


def os_error_text(exc: OSError) -> str:
    where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "") if exc.filename else ""
    return f"{where + ': ' if where else ''}{exc.strerror or exc}"


_SIGNALLED: list[int | None] = [None]


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM (a scheduler preempting the job) ends the run as Ctrl-C does: finished work is kept."""
    _SIGNALLED[0] = signum
    raise KeyboardInterrupt


def fail(exc: SmoothcoreError) -> None:
    err_console.print(f"[bold red]Error:[/] {exc.message}", highlight=False, soft_wrap=True)
    if exc.hint:
        err_console.print(f"[yellow]Hint:[/] {exc.hint}", highlight=False, soft_wrap=True)
    sys.exit(2)


def progress_bar(disable: bool = False) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
        disable=disable,
    )


def parse_radii(text: str) -> list[float]:
    try:
        radii = [float(r) for r in text.replace(" ", "").split(",") if r]
    except ValueError:
        raise click.BadParameter(f"radii must be comma-separated numbers, got {text!r}") from None
    if not radii or any(r < 0 or r != r for r in radii):
        raise click.BadParameter(f"radii must be non-negative numbers, got {text!r}")
    return radii


@click.group(
    cls=SmoothcoreGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110}
)
@click.version_option(package_name="smoothcore")
def cli() -> None:
    """Certified L1 robustness by randomized and derandomized smoothing (uniform, SSN, DSSN, Gaussian, Laplace),
    with denoised smoothing. Train smoothed classifiers, certify test sets, compare certified-accuracy curves."""


# -- plugins ------------------------------------------------------------------------------------------------------
@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_cmd(as_json: bool) -> None:
    """List every plugin and what it registers."""
    from smoothcore.plugins import KINDS, components, plugin_summary

    rows = plugin_summary()
    comps = components()
    if as_json:
        details = {
            kind: {e.name: {"plugin": e.plugin, "description": e.description} for e in comps[kind]}
            for kind in KINDS
        }
        click.echo(json.dumps({"plugins": rows, "components": details}, indent=2))
        return
    table = Table(title="smoothcore plugins")
    table.add_column("plugin")
    columns = (*KINDS, "command") if any(row["command"] for row in rows) else tuple(KINDS)
    for kind in columns:
        table.add_column(kind + "s")
    for row in rows:
        name = row["plugin"] + (" (built-in)" if row["builtin"] else "")
        table.add_row(name, *[", ".join(row[k]) for k in columns])
    _console().print(table)
    from smoothcore.certificates import MONTE_CARLO

    cert_table = Table(title="certificates")
    for col in ("certificate", "kind", "applies to", "plugin"):
        cert_table.add_column(col)
    probe = _probe_noises()
    for e in comps["certificate"]:
        cert = e.factory()
        applies = [n for n, nz in probe.items() if not isinstance(nz, str) and _applies(cert, nz)]
        cert_table.add_row(e.name, getattr(cert, "kind", MONTE_CARLO), ", ".join(applies), e.plugin)
    failed = {n: why for n, why in probe.items() if isinstance(why, str)}
    if failed:  # a noise that cannot be built at sigma 0.5 cannot be probed: say so rather than leave it out
        cert_table.caption = "not probed (failed to build at sigma 0.5): " + "; ".join(
            f"{n}: {why}" for n, why in sorted(failed.items())
        )
    _console().print(cert_table)


def _probe_noises() -> dict[str, Any]:
    from smoothcore.noise import make_noise
    from smoothcore.plugins import registry

    out: dict[str, Any] = {}  # the noise, or why it could not be built
    for e in registry("noise"):
        try:
            out[e.name] = make_noise(e.name, sigma=0.5, dim=4)
        except Exception as exc:
            out[e.name] = str(exc).splitlines()[0][:200] or type(exc).__name__
    return out


def _applies(cert, noise) -> bool:
    try:
        return bool(cert.applies_to(noise))
    except Exception:
        return False


# -- train-classifier ---------------------------------------------------------------------------------------------
device_option = click.option(
    "--device", default="auto", show_default=True, help="cpu, cuda, cuda:N, or auto (cuda when available)."
)


def subset_options(f):
    """--train-limit and --eval-limit of the training commands."""
    f = click.option(
        "--eval-limit",
        type=int,
        default=1000,
        show_default=True,
        help="Test images (evenly spread over the set) for the per-epoch validation.",
    )(f)
    return click.option(
        "--train-limit",
        type=int,
        default=None,
        help="Train on N training images only, evenly spread over the set.",
    )(f)


def noise_options(f):
    f = click.option(
        "--noise-param",
        multiple=True,
        help="Further parameter of the noise KEY=VALUE (a plugin's, e.g. tail=3). Certify: default the training's.",
    )(f)
    f = click.option("--noise-seed", type=int, default=None, help="Noise seed (DSSN template). Default 0.")(f)
    f = click.option(
        "--lambda",
        "lambd",
        type=float,
        default=None,
        help="Half-width lambda of uniform-family noise (instead of --sigma).",
    )(f)
    f = click.option(
        "--sigma",
        type=float,
        default=None,
        help="Noise standard deviation (uniform family: lambda = sigma*sqrt(3)).",
    )(f)
    return f


@cli.command("train-classifier")
@click.option("--dataset", default="fashion-mnist", show_default=True, help="Registered dataset name.")
@click.option(
    "--data-dir", type=click.Path(), default=None, help="Where the dataset lives (else its default places)."
)
@click.option(
    "--model",
    default="cnn",
    show_default=True,
    help="Registered classifier name (torchvision:<name> for any torchvision model).",
)
@click.option(
    "--model-param", multiple=True, help="Architecture parameter KEY=VALUE (e.g. width=32, batch_norm=false)."
)
@click.option(
    "--noise", default="dssn", show_default=True, help="Registered noise name ('none': a clean classifier)."
)
@noise_options
@click.option(
    "--epochs", type=int, default=None, help="Default: the reference recipe for the dataset/model, else 5."
)
@click.option("--batch-size", type=int, default=None, help="Default 64 (the reference recipe).")
@click.option("--lr", type=float, default=None, help="Initial learning rate (cosine annealed). Default 0.1.")
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--stability", is_flag=True, help="Stability training: CE + 6 KL between two noisy draws.")
@click.option("--stability-weight", type=float, default=6.0, show_default=True)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for initialisation, data order and noise."
)
@subset_options
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
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True)
@click.option(
    "--channels-last", is_flag=True, help="Channels-last memory format (faster convolutions on GPUs)."
)
@device_option
@click.option(
    "--workers", type=int, default=0, show_default=True, help="Data-loading processes (folder datasets)."
)
@click.option(
    "--save-every", type=int, default=1, show_default=True, help="Save a checkpoint every N epochs."
)
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
    from smoothcore.train import RECIPES, TrainConfig, Trainer

    info = from_env()
    recipe = RECIPES.get((opts["dataset"], opts["model"]), {})
    train_defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(
        dataset=opts["dataset"],
        model=opts["model"],
        noise=opts["noise"],
        sigma=opts["sigma"],
        lambd=opts["lambd"],
        noise_seed=_given(opts["noise_seed"], 0),
        **{  # given options, else the reference recipe for this dataset/model, else TrainConfig's defaults
            key: _given(opts[key], recipe.get(key, train_defaults[key]))
            for key in ("epochs", "batch_size", "lr")
        },
        momentum=opts["momentum"],
        weight_decay=opts["weight_decay"],
        stability=opts["stability"],
        stability_weight=opts["stability_weight"],
        seed=opts["seed"],
        train_limit=opts["train_limit"],
        eval_limit=opts["eval_limit"],
        data_dir=opts["data_dir"],
        denoiser=opts["denoiser"],
        finetune=opts["finetune"],
        precision=opts["precision"],
        channels_last=opts["channels_last"],
        device=device_for(opts["device"], info),
        workers=opts["workers"],
        save_every=opts["save_every"],
        save_every_steps=opts["save_every_steps"],
        model_params=parse_params(opts["model_param"]),
        noise_params=parse_params(opts["noise_param"]),
        trust_checkpoint=opts["trust_checkpoint"],
    )
    trainer = Trainer(cfg, opts["out"])
    console = _console(stderr=True)
    noise = repr(trainer.noise) if trainer.noise is not None else "no noise (clean)"
    ranks = f" on {info.world} ranks" if info.active else ""
    if info.main:
        console.print(
            f"training [bold]{cfg.model}[/] on [bold]{cfg.dataset}[/]{ranks} under {noise} -> {opts['out']}",
            highlight=False,
        )
    with progress_bar() as bar:
        task = bar.add_task("epoch 1", total=None, visible=info.main)

        def on_step(epoch: int, step: int, total: int, _loss: float) -> None:
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
        console.print(f"nothing to train: {trainer.exp.checkpoint} is complete ({_count(len(log), 'epoch')})")
    elif info.main:
        console.print(f"saved {trainer.exp.checkpoint} ({_count(len(log), 'epoch')})", highlight=False)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# -- train-denoiser -----------------------------------------------------------------------------------------------
def _given(value: Any, default: Any) -> Any:
    """The option's value when the user gave one (0 included: it is checked, not replaced), else the default."""
    return default if value is None else value


def parse_params(items: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}")
        if value.lower() in ("true", "false"):
            out[key] = value.lower() == "true"
            continue
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = value
    return out


@cli.command("train-denoiser")
@click.option("--dataset", default="fashion-mnist", show_default=True)
@click.option("--data-dir", type=click.Path(), default=None)
@click.option(
    "--arch", default="dncnn", show_default=True, help="Registered denoiser (dncnn, dncnn-wide, memnet, ...)."
)
@click.option(
    "--arch-param", multiple=True, help="Architecture parameter KEY=VALUE (e.g. depth=8, channels=32)."
)
@click.option("--noise", default="dssn", show_default=True, help="Any registered noise.")
@noise_options
@click.option(
    "--objective", type=click.Choice(["mse", "stability", "classification"]), default="mse", show_default=True
)
@click.option(
    "--classifier",
    type=click.Path(),
    default=None,
    help="Frozen classifier for the stability/classification objectives.",
)
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True)
@click.option(
    "--lr-step",
    type=int,
    default=30,
    show_default=True,
    help="Multiply the learning rate by --lr-gamma every N epochs.",
)
@click.option("--lr-gamma", type=float, default=0.1, show_default=True)
@click.option(
    "--sgd-after", type=int, default=None, help="Continue with SGD (momentum 0.9) from this epoch on."
)
@click.option(
    "--sgd-lr", type=float, default=1e-5, show_default=True, help="Learning rate of SGD after --sgd-after."
)
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option(
    "--trust-checkpoint", is_flag=True, help="Allow loading a legacy pickled --classifier (can run code)."
)
@click.option("--seed", type=int, default=0, show_default=True)
@subset_options
@device_option
@click.option("--workers", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(), required=True)
@click.option("--overwrite", is_flag=True)
@click.option("--resume", is_flag=True)
def train_denoiser_cmd(
    arch_param: tuple[str, ...], out: str, overwrite: bool, resume: bool, **opts: Any
) -> None:
    """Train a denoiser under noise (Salman et al. 2020) into an experiment folder (denoiser.pt, denoiser_best.pt)."""
    from smoothcore_denoisers.training import DenoiserConfig, DenoiserTrainer

    noise_params = parse_params(opts.pop("noise_param"))
    cfg = DenoiserConfig(
        **{k: v for k, v in opts.items() if v is not None or k in ("sigma", "lambd", "classifier")},
        arch_params=parse_params(arch_param),
        noise_params=noise_params,
    )
    trainer = DenoiserTrainer(cfg, out)
    console = _console(stderr=True)
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


# -- certify ------------------------------------------------------------------------------------------------------
@cli.command("certify")
@click.argument("run_dir", type=click.Path())
@click.option(
    "--noise", default=None, help="Noise to certify with. Default: the one the classifier was trained with."
)
@noise_options
@click.option(
    "--certificate",
    default=None,
    help="Certificate (see `smoothcore plugins`). Default: exact for exact noises, else standard.",
)
@click.option("--n0", type=int, default=64, show_default=True, help="Monte-Carlo selection draws.")
@click.option(
    "--n",
    "--N",
    "n",
    type=int,
    default=100_000,
    show_default=True,
    help="Monte-Carlo estimation draws (--N under torchrun).",
)
@click.option(
    "--alpha",
    type=float,
    default=0.001,
    show_default=True,
    help="Failure probability of Monte-Carlo certificates.",
)
@click.option(
    "--skip",
    "--dataset-skip",
    "skip",
    type=int,
    default=1,
    show_default=True,
    help="Certify every k-th test image (the reference's --dataset-skip).",
)
@click.option("--limit", type=int, default=None, help="Certify at most N images.")
@click.option(
    "--max-batch",
    default="1024",
    show_default=True,
    help="Most noisy images per forward pass, or 'auto' (sized to the GPU's free memory).",
)
@click.option(
    "--compile", is_flag=True, help="torch.compile the model (GPU users; first batches are slower)."
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16", "fp16"]),
    default="fp32",
    show_default=True,
    help="Autocast precision; the certificate is for the classifier as evaluated.",
)
@click.option("--channels-last", is_flag=True)
@device_option
@click.option("--dataset", default=None, help="Dataset (default: the experiment's).")
@click.option("--data-dir", type=click.Path(), default=None)
@click.option("--denoiser", type=click.Path(), default=None, help="Certify classifier(denoiser(x)).")
@click.option(
    "--checkpoint",
    type=click.Path(),
    default=None,
    help="Certify this classifier checkpoint (any known layout) into RUN_DIR.",
)
@click.option("--model", default=None, help="Architecture of --checkpoint where the file does not say.")
@click.option(
    "--radii",
    "radii_text",
    default=None,
    help="Early decisions: stop each image once its verdict at these comma-separated radii is decided.",
)
@click.option(
    "--tag",
    default=None,
    help="Name of the result table (certify_<tag>.csv). Default from noise and certificate.",
)
@click.option("--resume", is_flag=True, help="Continue an interrupted certification.")
@click.option("--overwrite", is_flag=True, help="Replace an existing result table.")
@click.option(
    "--trust-checkpoint", is_flag=True, help="Allow loading legacy pickled checkpoints (can run code)."
)
def certify_cmd(
    run_dir: str, checkpoint: str | None, model: str | None, resume: bool, overwrite: bool, **opts: Any
) -> None:
    """Certify the test set with the classifier of experiment folder RUN_DIR."""
    from smoothcore.distributed import device_for, from_env
    from smoothcore.runner import CertifyConfig, execute, plan

    info = from_env()
    radii_text = opts.pop("radii_text")
    opts["noise_params"] = parse_params(opts.pop("noise_param")) or None  # None: the training's
    opts["device"] = device_for(opts["device"], info)
    if opts["max_batch"] != "auto":
        try:
            opts["max_batch"] = int(opts["max_batch"])
        except ValueError:
            raise click.BadParameter(
                f"--max-batch must be a positive integer or 'auto', got {opts['max_batch']!r}"
            ) from None
    radii_list = parse_radii(radii_text) if radii_text else None
    made = _external_experiment(run_dir, checkpoint, model, opts) if checkpoint is not None else False
    try:
        cfg = CertifyConfig(**opts, radii=radii_list)
        run = plan(run_dir, cfg)
    except SmoothcoreError:
        if (
            made
        ):  # the folder this call made for --checkpoint holds nothing yet: a failed start leaves nothing
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    console = _console(stderr=True)
    shards = f" on {info.world} ranks" if info.active else ""
    if info.main:
        console.print(
            f"certifying {len(run.indices)} images of {run.dataset}{shards} with {run.smoothed.noise!r}, certificate "
            f"{run.meta['certificate']} -> {run.table}",
            highlight=False,
        )
    t0 = time.time()
    with progress_bar() as bar:
        task = bar.add_task(
            "certify" + (" (rank 0's share)" if info.active else ""),
            total=len(run.indices[info.rank :: info.world]) if info.active else len(run.indices),
        )
        table = execute(
            run,
            resume=resume,
            overwrite=overwrite,
            dist_info=info,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if not info.main:
        return
    from smoothcore.report import Run, certified_accuracy_table

    r = Run(
        run.tag,
        table["label"].to_numpy(),
        table["prediction"].to_numpy(),
        table["radius"].to_numpy(dtype=float),
        run.meta["norm"],
    )
    print_table(
        certified_accuracy_table([r], cfg.radii or _default_radii(r)),
        f"{run.exp.path.name}: {len(table)} images in {time.time() - t0:.1f} s",
    )
    used, full = int(table["forward_passes"].sum()), run.meta["forward_passes_full_per_image"] * len(table)
    console.print(
        f"forward passes: {used:,} of {full:,} ({100 * (1 - used / max(full, 1)):.1f}% saved by early decisions; "
        + (
            "certified accuracy is exact at these radii"
            if run.meta["certificate_kind"] == "exact"
            else "certified accuracy holds at level alpha at these radii"
        )
        + ", the ACR a lower bound)"
        if cfg.radii
        else f"forward passes: {used:,}",
        highlight=False,
    )


def _external_experiment(run_dir: str, checkpoint: str, model: str | None, opts: dict[str, Any]) -> bool:
    """Make RUN_DIR an experiment folder that points at an outside classifier checkpoint; True when this call
    created the folder."""
    from smoothcore.experiment import Experiment
    from smoothcore.fileio import atomic_write_json
    from smoothcore.loading import load_classifier

    ckpt = Path(checkpoint).resolve()
    _, info = load_classifier(
        ckpt,
        model=model,
        dataset=opts.get("dataset"),
        trust=opts.get("trust_checkpoint", False),
        return_info=True,
    )
    exp = Experiment(run_dir)
    config = {
        "classifier_path": str(ckpt),
        "checkpoint_model": model or info.get("model"),
        "dataset": opts.get("dataset") or info.get("dataset"),
        "layout": info["layout"],
        "noise": None,
    }
    if exp.exists() and {k: exp.config().get(k) for k in config} != config:
        from smoothcore.errors import ExperimentError

        raise ExperimentError(f"{run_dir} already holds another experiment", hint="choose another RUN_DIR")
    made = not exp.path.exists()
    exp.path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(exp.path / "config.json", config)
    from smoothcore.checkpoints import sha256
    from smoothcore.experiment import now, plugin_versions, versions

    manifest = exp.manifest()
    exp.update_manifest(
        created=manifest.get("created", now()),
        versions=versions(),
        plugins=plugin_versions(),
        classifier_path=str(ckpt),
        checkpoint_sha256=sha256(ckpt),
        layout=info["layout"],
    )
    if opts.get("dataset") is None:
        opts["dataset"] = config["dataset"]
    return made


def _default_radii(run) -> list[float]:
    import numpy as np

    top = float(np.nanmax(run.radius, initial=0.0)) if len(run.radius) else 0.0
    step = 0.5 if top > 1.5 else 0.25 if top > 0.5 else 0.1
    return [round(i * step, 4) for i in range(int(top / step) + 2)]


def print_table(table, title: str) -> None:
    t = Table(title=title)
    for col in table.columns:
        t.add_column(str(col), justify="left" if col in ("run", "norm") else "right")
    for _, row in table.iterrows():
        t.add_row(*[_cell(col, v) for col, v in row.items()])
    _console().print(t)


def _cell(col: str, value: Any) -> str:
    if col == "ACR":
        return f"{value:.3f}"
    if col == "images":
        return str(int(value))
    return f"{value:.2f}" if isinstance(value, float) else str(value)


# -- report -------------------------------------------------------------------------------------------------------
@cli.command("report")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--radii", default="0,0.5,1,1.5,2,2.5,3,3.5,4", show_default=True, help="Comma-separated radii."
)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(),
    default=None,
    help="Write certified accuracy vs radius to this image file.",
)
@click.option("--no-envelope", is_flag=True, help="Leave out the best-over-runs row.")
def report_cmd(
    paths: tuple[str, ...], radii: str, fmt: str, plot_path: str | None, no_envelope: bool
) -> None:
    """Certified accuracy (%) at RADII, average certified radius and the envelope of the runs at PATHS
    (result tables, experiment folders, or reference result folders)."""
    from smoothcore.report import (
        certified_accuracy_table,
        check_plot_path,
        comparability_warnings,
        load_runs,
        plot,
    )

    if plot_path:
        plot_path = str(check_plot_path(plot_path))  # before the table: a bad path fails first, loses nothing
    runs = load_runs(paths)
    table = certified_accuracy_table(runs, parse_radii(radii), envelope=not no_envelope)
    for warning in comparability_warnings(runs):
        err_console.print(f"[yellow]Warning:[/] {warning}", highlight=False)
    if fmt == "csv":
        click.echo(table.to_csv(index=False, float_format="%.4f"), nl=False)
    elif fmt == "json":
        # through json: pandas writes "/" as "\/" (legal JSON, but run names are paths people grep for)
        click.echo(json.dumps(json.loads(table.to_json(orient="records")), indent=2))
    else:
        print_table(table, "certified accuracy (%) by radius")
    if plot_path:
        written = plot(runs, plot_path)
        err_console.print(f"wrote {written}", highlight=False)


# -- sweep ------------------------------------------------------------------------------------------------------
def parse_list(text: str | None, cast=str) -> list | None:
    if text is None:
        return None
    try:
        return [cast(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"expected a comma-separated list, got {text!r}") from None


@cli.command("sweep")
@click.option(
    "--recipe",
    type=click.Path(),
    default=None,
    help="JSON/TOML recipe file (keys of smoothcore.sweep.Sweep).",
)
@click.option("--dataset", default=None)
@click.option("--data-dir", type=click.Path(), default=None)
@click.option("--model", default=None)
@click.option("--noises", default=None, help="Comma-separated noises (default uniform,ssn,dssn).")
@click.option(
    "--sigmas", default=None, help="Comma-separated sigmas (default the paper's 0.15,0.25,0.5,...,3.5)."
)
@click.option("--stability", type=click.Choice(["plain", "stab", "both"]), default=None, help="Default both.")
@click.option("--epochs", type=int, default=None)
@click.option(
    "--train-option", multiple=True, help="Any training option KEY=VALUE (batch_size=64, device=cuda, ...)."
)
@click.option(
    "--certify-option",
    multiple=True,
    help="Any certification option KEY=VALUE (n=100000, skip=100, limit=500, ...).",
)
@click.option("--out", type=click.Path(), default=None, help="Folder of the sweep's experiment folders.")
@click.option("--dry-run", is_flag=True, help="List the runs and what is already done, run nothing.")
@click.option(
    "--radii", default="0,0.5,1,1.5,2,2.5,3,3.5,4", show_default=True, help="Radii of the final report."
)
def sweep_cmd(
    recipe,
    dataset,
    data_dir,
    model,
    noises,
    sigmas,
    stability,
    epochs,
    train_option,
    certify_option,
    out,
    dry_run,
    radii,
) -> None:
    """Expand a grid of noises x sigmas x plain/stabilized into train and certify runs, run what is not complete
    (resuming what was interrupted), and end with the report: one row per run and the best-over-sigma envelope of
    each noise (the paper's tables)."""
    from smoothcore.report import certified_accuracy_table, load_runs
    from smoothcore.sweep import Sweep, expand, group_of, run_sweep

    sweep = Sweep.from_file(recipe) if recipe else Sweep()
    for key, value in (("dataset", dataset), ("data_dir", data_dir), ("model", model), ("out", out)):
        if value is not None:
            setattr(sweep, key, value)
    if noises:
        sweep.noises = parse_list(noises)
    if sigmas:
        sweep.sigmas = parse_list(sigmas, float)
    if stability:
        sweep.stability = stability
    sweep.train = {
        **sweep.train,
        **parse_params(train_option),
        **({"epochs": epochs} if epochs is not None else {}),
    }
    sweep.certify = {**sweep.certify, **parse_params(certify_option)}
    specs = expand(sweep)
    console = _console(stderr=True)
    console.print(f"sweep of {len(specs)} runs into {sweep.out}", highlight=False)
    with progress_bar(disable=dry_run) as bar:
        task = bar.add_task("run", total=None)
        tables = run_sweep(
            sweep,
            dry_run=dry_run,
            on_event=lambda m: bar.console.print(m, highlight=False),
            on_step=lambda e, s, t, _l: bar.update(
                task, description=f"train epoch {e + 1}", completed=s, total=t
            ),
            on_progress=lambda d, t: bar.update(task, description="certify", completed=d, total=t),
        )
    if dry_run or not tables:
        return
    runs = load_runs(tables)
    for run in runs:
        run.name = run.name.split("/")[0]
    table = certified_accuracy_table(runs, parse_radii(radii), envelope=False)
    import pandas as pd

    envelopes = []
    for group in dict.fromkeys(group_of(r.name) for r in runs):
        members = [r for r in runs if group_of(r.name) == group]
        env = certified_accuracy_table(members, parse_radii(radii), envelope=len(members) > 1).iloc[-1].copy()
        env["run"] = f"best over sigma: {group}"
        envelopes.append(env)
    print_table(
        pd.concat([table, pd.DataFrame(envelopes)], ignore_index=True),
        "sweep: certified accuracy (%) by radius",
    )


def _add_command_modules() -> None:
    from smoothcore.cli_audit import audit_cmd

    cli.add_command(audit_cmd)


_add_command_modules()


def main() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        cli(prog_name="smoothcore")
    finally:
        try:
            sys.stdout.flush()
        except OSError:  # stdout is full or closed (a pipe to /dev/full): nothing more can be said there
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    main()
