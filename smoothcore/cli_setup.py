"""``smoothcore plugins`` (what is installed) and ``smoothcore fetch-data`` (datasets that have a downloader)."""

from __future__ import annotations

import json

import click
from rich.table import Table

from smoothcore.cli_params import Opt
from smoothcore.cli_render import console
from smoothcore_plugins.downloads import DOWNLOADABLE, fetch


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_cmd(as_json: bool) -> None:
    """List every plugin and what it registers."""
    from smoothcore.plugin_listing import listing
    from smoothcore.plugins import KINDS

    found, _ = listing()
    rows = found["plugins"]
    if as_json:
        click.echo(json.dumps({"plugins": rows, "components": found["components"]}, indent=2))
        return
    table = Table(title="smoothcore plugins")
    table.add_column(
        "plugin", no_wrap=True, min_width=max(len(row["plugin"]) for row in rows) if rows else None
    )
    columns = (*KINDS, "command") if any(row["command"] for row in rows) else tuple(KINDS)
    for kind in columns:
        table.add_column(kind + "s")
    for row in rows:
        name = row["plugin"] + (" (built-in)" if row["builtin"] else "")
        table.add_row(name, *[", ".join(row[k]) for k in columns])
    console().print(table)
    cert_table = Table(title="certificates")
    for col in ("certificate", "kind", "applies to", "plugin"):
        cert_table.add_column(col)
    for cert in found["certificates"]:
        cert_table.add_row(cert["certificate"], cert["kind"], ", ".join(cert["applies to"]), cert["plugin"])
    failed = found["not probed"]["noises"]
    if failed:  # a noise that cannot be built at sigma 0.5 cannot be probed: say so rather than leave it out
        cert_table.caption = (
            f"not probed (failed to build at sigma {found['not probed']['sigma']:g}): "
            + "; ".join(f"{n}: {why}" for n, why in sorted(failed.items()))
        )
    console().print(cert_table)


@click.command("fetch-data")
@click.argument("dataset", type=click.Choice(sorted(DOWNLOADABLE)))
@click.option(
    "--data-dir",
    "--root",
    "data_dir",
    type=click.Path(),
    default=None,
    help="Download into this folder (--root is the old name).",
    cls=Opt,
    show_default="./data/cifar_10, ./data/fashion-mnist or ./data/mnist",
)
def fetch_data_cmd(dataset: str, data_dir: str | None) -> None:
    """Download DATASET with torchvision's downloader (needs a network; never required)."""
    folder = fetch(dataset, data_dir)
    click.echo(f"{dataset} is ready in {folder} (found there by default, or give --data-dir {folder})")


@click.command("models")
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models_cmd(pattern: str | None, as_json: bool) -> None:
    """List the pretrained classifiers that load by name (PATTERN: a glob such as '*derandomized*'); they download
    on first use into $SMOOTHCORE_CACHE (else the user cache folder), verified against their manifest."""
    from smoothcore.pretrained import cache_dir, list_models

    models = list_models(pattern if pattern is None or any(c in pattern for c in "*?[") else f"*{pattern}*")
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": m.name,
                        "noise": m.noise,
                        "sigma": m.sigma,
                        "training": m.training,
                        "dataset": m.dataset,
                        "model": m.model,
                        "source": m.url,
                        "git_blob": m.git_blob,
                    }
                    for m in models
                ],
                indent=2,
            )
        )
        return
    table = Table(title=f"pretrained classifiers ({len(models)}; cache: {cache_dir()})")
    for col in ("name", "noise", "sigma", "training", "dataset", "model", "source"):
        table.add_column(col)
    for m in models:
        source = f"{m.repo}@{m.commit[:7]}"
        table.add_row(m.name, m.noise, f"{m.sigma:g}", m.training, m.dataset, m.model, source)
    console().print(table)
