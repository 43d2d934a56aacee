"""``qtsim profiles list|show|new`` and ``qtsim models``."""

from __future__ import annotations

import click

from qtsim.cli.options import FORMATS, StrictCommand, StrictGroup
from qtsim.profiles.hardware import load_profile
from qtsim.report.catalog import host_list, model_list, new_profile, profile_card, profile_list


@click.group(cls=StrictGroup)
def profiles():
    """Hardware profiles: shipped (spec-derived) and yours (user directory, searched first)."""


@profiles.command("list")
@click.option("--format", "fmt", default="text", type=FORMATS, show_default=True)
def list_cmd(fmt):
    """Every visible profile, with where its numbers come from."""
    click.echo(profile_list(fmt))


@profiles.command("show")
@click.argument("name", required=False)
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False), help="A profile file instead of a name.")
@click.option("--format", "fmt", default="text", type=click.Choice(["text", "json", "toml"]), show_default=True)
def show_cmd(name, profile_path, fmt):
    """One profile's facts, constants (value ± stderr, unit, source) and provenance."""
    click.echo(profile_card(load_profile(name, profile_path), fmt))


@profiles.command("new")
@click.argument("name")
@click.option("--memory-gib", required=True, metavar="GIB", help="Device memory, GiB.")
@click.option("--bandwidth-gbs", required=True, metavar="GB/S", help="Memory bandwidth, GB/s (datasheet).")
@click.option("--fp16-tflops", required=True, metavar="TFLOPS",
              help="Dense FP16 tensor throughput, TFLOPS (not the sparse figure).")
@click.option("--int8-tops", required=True, metavar="TOPS",
              help="Dense INT8 tensor throughput, TOPS (not the sparse figure).")
@click.option("--tdp-w", required=True, metavar="W", help="Board power limit (TDP/TGP), W.")
@click.option("--architecture", default="unknown", show_default=True,
              help="GPU architecture, e.g. ampere, ada-lovelace, hopper (recorded only).")
@click.option("--memory-type", metavar="hbm|gddr",
              help="Memory kind, recorded (default: hbm from 1500 GB/s up).")
@click.option("--segment", default="datacenter", show_default=True,
              type=click.Choice(["datacenter", "workstation", "desktop"]),
              help="Board class: a desktop (GeForce) board's driver drops clocks between "
                   "kernels, so it waits for the host at lower awake power.")
@click.option("--force", is_flag=True, help="Replace an existing user profile of this name.")
@click.option("--dry-run", is_flag=True, help="Print the TOML instead of writing it.")
def new_cmd(name, memory_gib, bandwidth_gbs, fp16_tflops, int8_tops, tdp_w, architecture,
            memory_type, segment, force, dry_run):
    """Write a spec-derived profile for GPU NAME into your profile directory.

    The same priors as the shipped spec profiles are derived from the five datasheet numbers and
    the board class (the power states' forms fitted to metered public runs); afterwards `qtsim trap --gpu NAME ...` works like for any shipped
    GPU. Use dense tensor throughput, not the "with sparsity" figure.

    \b
    Example:
      qtsim profiles new a6000 --memory-gib 48 --bandwidth-gbs 768 --fp16-tflops 154.8 \\
          --int8-tops 309.7 --tdp-w 300 --architecture ampere
    """
    click.echo(new_profile(name, memory_gib, bandwidth_gbs, fp16_tflops, int8_tops, tdp_w,
                           architecture, memory_type, force, dry_run, segment))


@profiles.command("hosts")
@click.option("--format", "fmt", default="text", type=FORMATS, show_default=True)
def hosts_cmd(fmt):
    """Host/software parts: the host CPU and stack that issue a GPU's work (`trap --host`)."""
    click.echo(host_list(fmt))


@click.command(cls=StrictCommand)
@click.option("--format", "fmt", default="text", type=FORMATS, show_default=True)
def models(fmt):
    """Shipped model architectures (any config.json path works too)."""
    click.echo(model_list(fmt))
