"""``smoothcore certify``: thin over :func:`smoothcore.runner.plan` and :func:`smoothcore.runner.execute`; option
defaults are :class:`~smoothcore.runner.CertifyConfig`'s."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import click

from smoothcore.cli_config import ConfigCommand
from smoothcore.cli_params import (
    MAX_BATCH,
    RADII,
    Opt,
    device_option,
    max_batch_option,
    noise_options,
    option,
    parse_params,
)
from smoothcore.cli_render import err_console, print_table, progress_bar
from smoothcore.configs import PRECISION_NAMES as PRECISIONS
from smoothcore.configs import CertifyConfig
from smoothcore.errors import SmoothcoreError


def _recorded(run_dir: str, opts: dict[str, Any]) -> dict[str, Any]:
    """For --resume: the table's recorded settings for every option not given (on the command line or in a config
    file), so that `certify RUN --resume [--tag T]` needs nothing else."""
    from click.core import ParameterSource

    from smoothcore.runner import recorded_config

    ctx = click.get_current_context()
    _, cfg = recorded_config(run_dir, opts["tag"])
    given = {
        name
        for name in opts
        if ctx.get_parameter_source("noise_param" if name == "noise_params" else name)
        not in (ParameterSource.DEFAULT, None)
    }
    if given & {
        "noise",
        "sigma",
        "lambd",
    }:  # a noise or a scale given decides the scale (--sigma or --lambda)
        given |= {"sigma", "lambd"}
    return {
        name: value
        for name, value in dataclasses.asdict(cfg).items()
        if name in opts and name not in given and value is not None and name not in _LOCAL_OPTIONS
    }


_LOCAL_OPTIONS = {
    "device",
    "max_batch",
    "data_dir",
    "trust_checkpoint",
    "compile",
    "channels_last",
}  # this machine's


@click.command("certify", cls=ConfigCommand)
@click.argument("run_dir", type=click.Path())
@click.option(
    "--noise",
    default=None,
    help="Noise to certify with.",
    cls=Opt,
    show_default="the one the classifier was trained with",
)
@noise_options(certify=True)
@click.option(
    "--certificate",
    default=None,
    help="Certificate (see `smoothcore plugins`).",
    cls=Opt,
    show_default="exact for exact noises, else standard",
)
@option(CertifyConfig, "n0", "--n0", type=int, help="Monte-Carlo selection draws.")
@option(
    CertifyConfig, "n", "--n", "--N", "n", type=int, help="Monte-Carlo estimation draws (--N under torchrun)."
)
@option(
    CertifyConfig, "alpha", "--alpha", type=float, help="Failure probability of Monte-Carlo certificates."
)
@option(
    CertifyConfig,
    "skip",
    "--skip",
    "--dataset-skip",
    "skip",
    type=int,
    help="Certify every k-th test image (the reference's --dataset-skip).",
)
@click.option("--limit", type=int, default=None, help="Certify at most N images.")
@max_batch_option(CertifyConfig)
@click.option(
    "--compile", is_flag=True, help="torch.compile the model (GPU users; first batches are slower)."
)
@option(
    CertifyConfig,
    "precision",
    "--precision",
    type=click.Choice(list(PRECISIONS)),
    help="Autocast precision; the certificate is for the classifier as evaluated.",
)
@click.option(
    "--channels-last/--no-channels-last",
    default=None,
    help="Memory layout of the forward passes (channels-last: often faster convolutions).",
    cls=Opt,
    show_default="chosen with --max-batch auto by a timed probe, else the default layout",
)
@device_option(CertifyConfig)
@click.option("--dataset", default=None, help="Dataset.", cls=Opt, show_default="the experiment's")
@click.option(
    "--data-dir",
    type=click.Path(),
    default=None,
    help="Where the test set lives.",
    cls=Opt,
    show_default="where the training read it",
)
@click.option("--denoiser", type=click.Path(), default=None, help="Certify classifier(denoiser(x)).")
@click.option(
    "--checkpoint",
    type=click.Path(),
    default=None,
    help="Certify this classifier into RUN_DIR: a checkpoint file (any known layout), a pretrained name "
    "(`smoothcore models`; its noise and sigma are the default) or a https://...#sha256= URL.",
)
@click.option("--model", default=None, help="Architecture of --checkpoint where the file does not say.")
@click.option(
    "--radii",
    type=RADII,
    default=None,
    help="Early decisions: stop each image once its verdict at these comma-separated radii is decided.",
)
@click.option(
    "--tag",
    default=None,
    help="Name of the result table (certify_<tag>.csv).",
    cls=Opt,
    show_default="noise, scale, certificate if not the default, Monte-Carlo n and alpha: ssn_sigma1_n100k",
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
    from smoothcore.planning import adopt_checkpoint
    from smoothcore.report import certified_accuracy_table, certify_summary
    from smoothcore.runner import execute, plan

    info = from_env()
    opts["noise_params"] = parse_params(opts.pop("noise_param")) or None  # None: the training's
    if resume and checkpoint is None and (Path(run_dir) / "config.json").exists():
        opts.update(_recorded(run_dir, opts))
    opts["device"] = device_for(opts["device"], info)
    opts["max_batch"] = MAX_BATCH.convert(opts["max_batch"], None, None)  # a recorded value too
    made = False
    if checkpoint is not None:
        opts["dataset"], made = adopt_checkpoint(
            run_dir,
            checkpoint,
            model=model,
            dataset=opts["dataset"],
            trust=opts["trust_checkpoint"],
            with_denoiser=opts["denoiser"] is not None,
        )
    try:
        run = plan(run_dir, CertifyConfig(**opts))
    except SmoothcoreError:
        if (
            made
        ):  # the folder this call made for --checkpoint holds nothing yet: a failed start leaves nothing
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    shards = f" on {info.world} ranks" if info.active else ""
    if info.main:
        err_console.print(
            f"certifying {len(run.indices)} images of {run.dataset}{shards} with {run.smoothed.noise!r}, certificate "
            f"{run.certificate.name} -> {run.table}",
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
    summary = certify_summary(run.tag, table, run.record)
    print_table(
        certified_accuracy_table([summary.run], summary.radii),
        f"{run.exp.path.name}: {len(table)} images in {time.time() - t0:.1f} s",
    )
    tuning = run.smoothed.engine.tuning
    if tuning is not None and tuning.rates:
        err_console.print(f"--max-batch auto: {tuning.describe()}", highlight=False)
    if not run.record.radii:
        err_console.print(f"forward passes: {summary.forward_passes:,}", highlight=False)
        return
    holds = (
        "certified accuracy is exact at these radii"
        if run.record.certificate_kind == "exact"
        else "certified accuracy holds at level alpha at these radii"
    )
    err_console.print(
        f"forward passes: {summary.forward_passes:,} of {summary.forward_passes_full:,} "
        f"({100 * summary.saved:.1f}% saved by early decisions; {holds}, the ACR a lower bound)",
        highlight=False,
    )
