"""``smoothcore report`` (certified accuracy of result tables) and ``smoothcore sweep`` (the paper's grid): thin
over :mod:`smoothcore.report` and :mod:`smoothcore.sweep`."""

from __future__ import annotations

import json

import click

from smoothcore.cli_config import ConfigCommand
from smoothcore.cli_params import RADII, CommaList, Opt, data_dir_option, parse_params
from smoothcore.cli_render import err_console, print_table, progress_bar
from smoothcore.configs import PAPER_RADII

PAPER_RADII_TEXT = ",".join(f"{r:g}" for r in PAPER_RADII)


@click.command("report")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--radii",
    type=RADII,
    default=None,
    help="Comma-separated radii.",
    cls=Opt,
    show_default="as certify's summary: 0 to past the largest radius in steps of 0.1, 0.25 or 0.5",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "markdown", "latex"]),
    default="table",
    show_default=True,
    help="How to print the table (markdown and latex for papers and READMEs).",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(),
    default=None,
    help="Write certified accuracy vs radius to this file (.png, or .pdf/.svg for vector figures).",
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    help="Legend text of a run in the plot, RUN=TEXT (RUN: its name, or either part of folder/tag).",
)
@click.option(
    "--dpi", type=click.IntRange(20, 1200), default=200, show_default=True, help="Resolution of a PNG plot."
)
@click.option("--no-envelope", is_flag=True, help="Leave out the best-over-runs row.")
def report_cmd(
    paths: tuple[str, ...],
    radii: list[float],
    fmt: str,
    plot_path: str | None,
    labels: tuple[str, ...],
    dpi: int,
    no_envelope: bool,
) -> None:
    """Certified accuracy (%) at RADII, average certified radius and the envelope of the runs at PATHS
    (result tables, experiment folders, a sweep's folder of them, or reference result folders)."""
    from smoothcore.figures import check_plot_path, plot
    from smoothcore.report import (
        certified_accuracy_table,
        comparability_warnings,
        default_radii,
        load_runs,
        robustness_rows,
        to_latex,
        to_markdown,
    )

    if plot_path:
        plot_path = str(check_plot_path(plot_path))  # before the table: a bad path fails first, loses nothing
    runs = load_runs(paths)
    if radii is None:  # the rule certify's summary uses, over every run shown
        radii = max((default_radii(r) for r in runs), key=len, default=list(PAPER_RADII))
    table = certified_accuracy_table(runs, radii, envelope=not no_envelope)
    for warning in comparability_warnings(runs):
        err_console.print(f"[yellow]Warning:[/] {warning}", highlight=False)
    if fmt == "csv":
        click.echo(table.to_csv(index=False, float_format="%.4f"), nl=False)
    elif fmt == "json":
        # through json: pandas writes "/" as "\/" (legal JSON, but run names are paths people grep for)
        click.echo(json.dumps(json.loads(table.to_json(orient="records")), indent=2))
    elif fmt == "markdown":
        click.echo(to_markdown(table), nl=False)
    elif fmt == "latex":
        click.echo(
            to_latex(table, caption="Certified accuracy (%) at each L1 radius, and average certified radius"),
            nl=False,
        )
    else:
        print_table(table, "certified accuracy (%) by radius")
    robust = robustness_rows(runs, radii)
    if len(robust) and fmt in ("table", "markdown", "latex"):
        title = "certified (lower bound) vs empirical robust accuracy (upper bound: no verified flip), %"
        if fmt == "markdown":
            click.echo("\n" + to_markdown(robust), nl=False)
        elif fmt == "latex":
            click.echo("\n" + to_latex(robust, caption=title), nl=False)
        else:
            print_table(robust, title)
    if plot_path:
        written = plot(runs, plot_path, labels=_labels(labels), dpi=dpi)
        err_console.print(f"wrote {written}", highlight=False)


def _labels(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        run, sep, text = item.partition("=")
        if not sep or not run or not text:
            raise click.BadParameter(f"expected RUN=TEXT, got {item!r}", param_hint="--label")
        out[run] = text
    return out


@click.command("sweep", cls=ConfigCommand)
@click.option(
    "--recipe",
    type=click.Path(),
    default=None,
    help="JSON/TOML recipe file (keys of smoothcore.sweep.Sweep).",
)
@click.option(
    "--dataset", default=None, help="Registered dataset.", cls=Opt, show_default="the recipe's, else cifar10"
)
@data_dir_option
@click.option(
    "--model", default=None, help="Registered classifier.", cls=Opt, show_default="the recipe's, else wrn40"
)
@click.option(
    "--noises",
    type=CommaList(str, "noises"),
    default=None,
    help="Comma-separated noises.",
    cls=Opt,
    show_default="the recipe's, else uniform,ssn,dssn",
)
@click.option(
    "--sigmas",
    type=CommaList(float, "sigmas"),
    default=None,
    help="Comma-separated sigmas.",
    cls=Opt,
    show_default="the recipe's, else the paper's 0.15,0.25,0.5,...,3.5",
)
@click.option(
    "--stability",
    type=click.Choice(["plain", "stab", "both"]),
    default=None,
    help="Plain and/or stability training.",
    cls=Opt,
    show_default="the recipe's, else both",
)
@click.option(
    "--objectives",
    type=CommaList(str, "objectives"),
    default=None,
    help="Training objectives as an axis instead of --stability (e.g. plain,stability,consistency,macer).",
)
@click.option(
    "--objective-param",
    multiple=True,
    help="Parameter of one objective OBJECTIVE.KEY=VALUE (e.g. macer.draws=8).",
)
@click.option("--epochs", type=int, default=None, help="Training epochs of every run.")
@click.option(
    "--train-option", multiple=True, help="Any training option KEY=VALUE (batch_size=64, device=cuda, ...)."
)
@click.option(
    "--certify-option",
    multiple=True,
    help="Any certification option KEY=VALUE (n=100000, skip=100, limit=500, ...).",
)
@click.option(
    "--out",
    type=click.Path(),
    default=None,
    help="Folder of the sweep's experiment folders.",
    cls=Opt,
    show_default="the recipe's, else checkpoints/sweep",
)
@click.option("--dry-run", is_flag=True, help="List the runs and what is already done, run nothing.")
@click.option(
    "--radii", type=RADII, default=PAPER_RADII_TEXT, show_default=True, help="Radii of the final report."
)
def sweep_cmd(
    recipe,
    dataset,
    data_dir,
    model,
    noises,
    sigmas,
    stability,
    objectives,
    objective_param,
    epochs,
    train_option,
    certify_option,
    out,
    dry_run,
    radii,
) -> None:
    """Expand a grid of noises x sigmas x plain/stabilized (or --objectives) into train and certify runs, run what is not complete
    (resuming what was interrupted), and end with the report: one row per run and the best-over-sigma envelope of
    each noise (the paper's tables). Without a recipe it is the paper's CIFAR-10 grid (WRN-40, 3 noises x 15 sigmas
    x plain/stabilized: 90 runs; --dry-run lists them); recipes/paper-fmnist.toml is the same grid on Fashion-MNIST."""
    from smoothcore.sweep import Sweep, expand, run_sweep, sweep_table

    sweep = Sweep.from_file(recipe) if recipe else Sweep()
    given = {"dataset": dataset, "data_dir": data_dir, "model": model, "out": out, "stability": stability}
    for key, value in given.items():
        if value is not None:
            setattr(sweep, key, value)
    if objectives:
        if stability is not None:
            raise click.UsageError(
                "--stability and --objectives both given: stability is the objective 'stability'"
            )
        sweep.objectives = objectives
    for key, value in parse_params(objective_param).items():
        objective, dot, param = key.partition(".")
        if not dot or not objective or not param:
            raise click.BadParameter(
                f"expected OBJECTIVE.KEY=VALUE, got {key}={value}", param_hint="'--objective-param'"
            )
        sweep.objective_params = {
            **sweep.objective_params,
            objective: {**sweep.objective_params.get(objective, {}), param: value},
        }
    if noises:
        sweep.noises = noises
    if sigmas:
        sweep.sigmas = sigmas
    sweep.train = {
        **sweep.train,
        **parse_params(train_option),
        **({"epochs": epochs} if epochs is not None else {}),
    }
    sweep.certify = {**sweep.certify, **parse_params(certify_option)}
    specs = expand(sweep)
    err_console.print(f"sweep of {len(specs)} runs into {sweep.out}", highlight=False)
    with progress_bar(disable=dry_run) as bar:
        task = bar.add_task("run", total=None)
        tables = run_sweep(
            sweep,
            dry_run=dry_run,
            on_event=lambda m: bar.console.print(m, highlight=False),
            on_step=lambda e, s, t: bar.update(
                task, description=f"train epoch {e + 1}", completed=s, total=t
            ),
            on_progress=lambda d, t: bar.update(task, description="certify", completed=d, total=t),
        )
    if dry_run or not tables:
        return
    print_table(sweep_table(tables, radii), "sweep: certified accuracy (%) by radius")
