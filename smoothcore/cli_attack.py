"""``smoothcore attack``: thin over :func:`smoothcore.attack_run.attack_experiment`; option defaults are
:class:`~smoothcore.attacks.AttackConfig`'s."""

from __future__ import annotations

import math

import click
from rich.table import Table

from smoothcore.cli_config import ConfigCommand
from smoothcore.cli_params import RADII, CommaList, Opt, option, reopen_options
from smoothcore.cli_render import console, err_console, progress_bar
from smoothcore.configs import AttackConfig, CertifyConfig


@click.command("attack", cls=ConfigCommand)
@click.argument("run_dir", type=click.Path())
@click.option(
    "--tag",
    default=None,
    help="Result table whose images to attack (certify_<tag>.csv).",
    cls=Opt,
    show_default="the folder's only one",
)
@click.option(
    "--limit",
    type=int,
    default=100,
    show_default=True,
    help="Attack the correctly classified images among the table's first N.",
)
@click.option(
    "--attacks",
    type=CommaList(str, "attacks"),
    default=None,
    help="Comma-separated attacks (smoothcore plugins lists them).",
    cls=Opt,
    show_default="the defaults for the noise",
)
@option(
    AttackConfig,
    "budget",
    "--budget",
    type=int,
    help="Forward passes per image and attack (what one leaves unused goes to the next).",
)
@option(AttackConfig, "n_test", "--n-test", type=int, help="Monte-Carlo: fresh draws per verification.")
@option(
    AttackConfig,
    "alpha",
    "--alpha",
    type=float,
    help="Monte-Carlo: chance per image that a flip is reported where the prediction did not change.",
)
@option(AttackConfig, "seed", "--seed", type=int, help="Seed of the attacks' draws and the verifications.")
@click.option(
    "--radii",
    type=RADII,
    default="0.25,0.5,0.75,1,1.5,2",
    show_default=True,
    help="Radii of the certified-versus-empirical table.",
)
@reopen_options(CertifyConfig)
def attack_cmd(
    run_dir,
    tag,
    limit,
    attacks,
    budget,
    n_test,
    alpha,
    seed,
    radii,
    data_dir,
    device,
    max_batch,
    trust_checkpoint,
) -> None:
    """Attack RUN_DIR's correctly classified images: the smallest verified L1 perturbation that changes the smoothed
    prediction, per image (attack_<tag>.csv), and certified accuracy (lower bound) next to empirical robust
    accuracy (upper bound) per radius."""
    import pandas as pd

    from smoothcore.attack_run import attack_experiment, robustness_table, summary
    from smoothcore.results import load_results

    cfg = AttackConfig(
        attacks=tuple(attacks) if attacks else None, budget=budget, n_test=n_test, alpha=alpha, seed=seed
    ).check()
    with progress_bar() as bar:
        task = bar.add_task("attack", total=None)
        result = attack_experiment(
            run_dir,
            tag=tag,
            limit=limit,
            config=cfg,
            data_dir=data_dir,
            device=device,
            max_batch=max_batch,
            trust_checkpoint=trust_checkpoint,
            on_image=lambda _im: bar.advance(task),
        )
    stats = summary(result.images)
    out = console()
    frame = robustness_table(load_results(result.table), pd.read_csv(result.output), radii)
    table = Table(
        title=f"{result.table.parent.name}: certified vs empirical robust accuracy (%), noise {result.noise}"
    )
    for column in ("radius", "certified", "empirical", "gap"):
        table.add_column(column, justify="right")
    for row in frame.itertuples():
        table.add_row(f"{row.radius:g}", f"{row.certified:.1f}", f"{row.empirical:.1f}", f"{row.gap:.1f}")
    out.print(table)
    median = stats["median_flip"]
    out.print(
        f"{stats['flips_found']} of {stats['images']} correct images flipped (verified); median smallest flip "
        f"{'-' if not math.isfinite(median) else f'{median:.3f}'} (L1); attacks {', '.join(result.attacks)}; "
        f"{stats['forward_passes']:,} forward passes, {stats['seconds']:.1f} s",
        highlight=False,
    )
    err_console.print(f"wrote {result.output}", highlight=False)
