"""``smoothcore audit``: thin over :func:`smoothcore.audit.audit_experiment`; option defaults are
:class:`~smoothcore.audit.AuditConfig`'s (and the budget of a forward pass :class:`~smoothcore.runner.CertifyConfig`'s)."""

from __future__ import annotations

import math
import sys

import click
from rich.table import Table

from smoothcore.cli_config import ConfigCommand
from smoothcore.cli_params import CommaList, Opt, default, option, reopen_options
from smoothcore.cli_render import console, err_console, progress_bar
from smoothcore.configs import AuditConfig, CertifyConfig


@click.command("audit", cls=ConfigCommand)
@click.argument("run_dir", type=click.Path())
@click.option(
    "--tag",
    default=None,
    help="Result table to audit (certify_<tag>.csv).",
    cls=Opt,
    show_default="the folder's only one",
)
@click.option(
    "--limit", type=int, default=5, show_default=True, help="Audit the first N certified images of the table."
)
@click.option(
    "--searches",
    type=CommaList(str, "searches"),
    default=",".join(default(AuditConfig, "searches")),
    show_default=True,
    help="Comma-separated searches: random, greedy (count gain), gradient (soft-margin surrogate).",
)
@option(
    AuditConfig,
    "budget",
    "--budget",
    type=int,
    help="Base-classifier evaluations per image and search (the search beyond the radius: 1.5x).",
)
@click.option(
    "--attacks",
    type=CommaList(str, "attacks"),
    default=None,
    help="Attacks that also run (smoothcore plugins lists them); 'none' for none.",
    cls=Opt,
    show_default="the defaults for the noise",
)
@option(
    AuditConfig, "attack_budget", "--attack-budget", type=int, help="Forward passes per image and attack."
)
@click.option("--no-tightness", is_flag=True, help="Skip the search beyond the radius for the smallest flip.")
@option(
    AuditConfig, "n_search", "--n-search", type=int, help="Monte-Carlo: draws behind the search's estimates."
)
@option(AuditConfig, "n_test", "--n-test", type=int, help="Monte-Carlo: fresh draws per violation test.")
@option(
    AuditConfig,
    "alpha",
    "--alpha",
    type=float,
    help="Monte-Carlo: probability that the audit reports any violation of sound certificates.",
)
@option(AuditConfig, "seed", "--seed", type=int, help="Seed of the searches and tests.")
@reopen_options(CertifyConfig)
def audit_cmd(
    run_dir: str,
    tag: str | None,
    limit: int,
    searches: list[str],
    budget: int,
    attacks: list[str] | None,
    attack_budget: int,
    no_tightness: bool,
    n_search: int,
    n_test: int,
    alpha: float,
    seed: int,
    data_dir: str | None,
    device: str,
    max_batch: int,
    trust_checkpoint: bool,
) -> None:
    """Search for perturbations inside the certified radii of RUN_DIR's result table that change the smoothed
    prediction, and measure how tight the radii are. Writes audit_<tag>.csv (one row per image) and
    audit_<tag>.json into RUN_DIR. Exits with status 1 when a violation is found."""
    from smoothcore.audit import audit_experiment

    cfg = AuditConfig(
        searches=tuple(searches),
        budget=budget,
        attacks=None if attacks is None else (() if attacks == ["none"] else tuple(attacks)),
        attack_budget=attack_budget,
        tightness=not no_tightness,
        seed=seed,
        n_search=n_search,
        n_test=n_test,
        alpha=alpha,
    ).check()
    with progress_bar() as bar:
        task = bar.add_task("audit", total=limit)
        result = audit_experiment(
            run_dir,
            tag=tag,
            limit=limit,
            config=cfg,
            data_dir=data_dir,
            device=device,
            max_batch=max_batch,
            on_image=lambda _im: bar.advance(task),
            trust_checkpoint=trust_checkpoint,
        )
    report, summary = result.report, result.report.summary()
    title = f"audit of {result.table.name}: noise {result.noise}, certificate {result.certificate}"
    table = Table(title=title)
    table.add_column("")
    table.add_column("value", justify="right")
    rows = [
        ("images audited", str(summary["images"])),
        ("searches", ", ".join(cfg.searches) + f" (budget {cfg.budget} each)"),
        (
            "attacks",
            ", ".join(a.name for a in result.attacks) + f" (budget {cfg.attack_budget} each)"
            if result.attacks
            else "none",
        ),
        ("violations found", str(summary["violations"])),
        ("flips found (any size)", str(summary["flips_found"])),
        ("median tightness", _fmt(summary["median_tightness"])),
        ("min tightness", _fmt(summary["min_tightness"])),
        ("max tightness", _fmt(summary["max_tightness"])),
        ("forward passes", f"{summary['forward_passes']:,}"),
        ("seconds", f"{summary['seconds']:.1f}"),
    ]
    for row in rows:
        table.add_row(*row)
    out = console()
    out.print(table)
    out.print(
        "tightness = radius / smallest flipping perturbation found (a lower bound on the true ratio; "
        "above 1 only with a violation)",
        highlight=False,
    )
    out.print(f"test: {report.statement}", highlight=False, soft_wrap=True)
    for im in report.violations:
        out.print(
            f"[bold red]violation[/]: image {im.index}, class {im.prediction} certified to radius "
            f"{im.radius:.4f} ({im.norm}), {im.violation_search} search found a perturbation of norm "
            f"{im.violation_norm:.4f} -> class {im.violation_class}; {im.evidence}",
            highlight=False,
            soft_wrap=True,
        )
    err_console.print(f"wrote {result.output}", highlight=False)
    if report.violations:
        sys.exit(1)


def _fmt(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.3f}"
