"""``qtsim reproduce``."""

from __future__ import annotations

import json

import click

from qtsim.cli.options import StrictCommand
from qtsim.report.reproduce import format_text
from qtsim.report.reproduce import reproduce as run


@click.command(cls=StrictCommand)
@click.option("--format", "fmt", default="text", show_default=True,
              type=click.Choice(["text", "json"], case_sensitive=False))
@click.option("--draws", default=400, show_default=True, type=click.IntRange(min=10, max=100000),
              help="Monte-Carlo draws for the simulator rows' 16-84% bands.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the draws.")
def reproduce(fmt, draws, seed):
    """Recompute the paper's worked examples, flag where its numbers disagree with each other,
    and run qtsim (physical and paper mode) at the paper's configurations.

    \b
    Sections: worked example (arithmetic on the paper's own figures), consistency (the paper
    against itself), simulator (qtsim from spec-derived profiles with wide priors).
    """
    report = run(draws, seed)
    if fmt.lower() == "json":
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(format_text(report))
