"""The ``smoothcore audit`` command (being written)."""

import click


@click.command("audit")
def audit_cmd() -> None:
    """Search for perturbations inside certified radii that change the smoothed prediction."""
    raise click.ClickException("not available yet")
