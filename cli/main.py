"""The ``qtsim`` command: a thin click layer over the library.

Subcommands load lazily, so ``qtsim trap`` imports neither torch nor the measurement code.
A :class:`qtsim.errors.QtsimError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import click

from qtsim import __version__
from qtsim.errors import QtsimError

COMMANDS = {
    "trap": ("qtsim.cli.trap", "trap", "Will quantizing trap us? Verdicts, J/query, tok/s, COR, B*, N*, SI."),
    "compare": ("qtsim.cli.compare", "compare", "One model at one batch across GPUs x precisions: tok/s, J/query, kWh, $, verdicts."),
    "plan": ("qtsim.cli.plan", "plan", "Capacity plan: GPU, precision, batch, replicas for a demand and latency target; $, kWh, CO2e."),
    "profiles": ("qtsim.cli.profiles", "profiles", "List, show and create (new) hardware profiles."),
    "models": ("qtsim.cli.profiles", "models", "List shipped model architectures and their counts."),
    "calibrate": ("qtsim.cli.calibrate", "calibrate", "Measure this GPU (or CPU) and write a hardware profile."),
    "fit": ("qtsim.cli.calibrate", "fit", "Refit a profile from recorded raw HDF5 (no torch needed)."),
    "validate": ("qtsim.cli.validate", "validate", "Held-out full decoding runs vs the simulator's predictions."),
    "simulate": ("qtsim.cli.simulate", "simulate", "Evaluate the model over whole grids into HDF5/CSV, with plots."),
    "fleet": ("qtsim.cli.fleet", "fleet", "Calibrate/validate every node of a GPU fleet on Ray; chunk big grids (qtsim[fleet])."),
    "reproduce": ("qtsim.cli.reproduce", "reproduce", "Recompute the paper's worked examples and figures."),
    "trust": ("qtsim.cli.trust", "trust", "Multi-hop reasoning probe: train a small model here, measure accuracy per hop per precision, write a --trust table."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [c for c in COMMANDS if _available(c)]

    def get_command(self, ctx, name):
        if name not in COMMANDS or not _available(name):
            return None
        mod, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(mod), attr)

    def format_commands(self, ctx, formatter):
        rows = [(c, COMMANDS[c][2]) for c in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _available(name: str) -> bool:
    return importlib.util.find_spec(COMMANDS[name][0]) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qtsim")
def cli():
    """qtsim: will quantizing an LLM's weights (bitsandbytes INT8/NF4) save energy and time on
    a given GPU, or trap you (more joules per query, slower, worse reasoning)?

    \b
    Planner (no GPU, no torch):
      qtsim trap --gpu l4 --model mistral-7b --precision nf4
      qtsim profiles list
    Measurement (pip install 'qtsim[calibrate]'):
      qtsim calibrate --gpu cpu --quick      # or --gpu h100 on an H100
      qtsim validate --profile PROFILE.toml --model qwen3-0.6b --precision nf4,int8 --batch 1,8
    """


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="qtsim", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2 if e.exit_code == 2 else e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except QtsimError as e:
        click.echo(f"qtsim: error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # an internal bug: one line unless debugging
        if os.environ.get("QTSIM_DEBUG"):
            raise
        click.echo(f"qtsim: internal error: {type(e).__name__}: {e} (set QTSIM_DEBUG=1 for a traceback)", err=True)
        sys.exit(1)
