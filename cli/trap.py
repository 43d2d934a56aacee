"""``qtsim trap``."""

from __future__ import annotations

import click

from qtsim.cli.options import (
    FORMATS,
    StrictCommand,
    bnb_options,
    bnb_settings,
    budget_assumptions,
    budget_options,
    profile_options,
    stack_option,
)
from qtsim.model.precision import PRECISIONS
from qtsim.model.workload import Workload
from qtsim.report.trap import trap_text


@click.command(cls=StrictCommand)
@profile_options
@click.option("--model", required=True, help="Shipped model name (`qtsim models`) or a path to a config.json.")
@click.option("--precision", required=True, type=click.Choice(list(PRECISIONS), case_sensitive=False),
              help="Weight precision to assess against the native 16-bit reference.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1), help="Concurrent sequences B.")
@click.option("--tokens", default=256, show_default=True, type=click.IntRange(min=1),
              help="New tokens per query K (the paper's atomic hops).")
@click.option("--prompt-tokens", default=128, show_default=True, type=click.IntRange(min=0),
              help="Prompt length per query.")
@click.option("--trust", "trust_table", type=click.Path(dir_okay=False),
              help="CSV of accuracies (model,task,precision,accuracy,source) for the trust pillar.")
@click.option("--policy", default="linear", show_default=True, type=click.Choice(["linear", "geometric"]),
              help="SI aggregation: linear (eq. 6) or geometric (Remark 3.1).")
@click.option("--draws", default=400, show_default=True, type=click.IntRange(min=10, max=100000),
              help="Monte-Carlo draws of the profile's constants for the uncertainty bands.")
@click.option("--host", default=None, metavar="NAME_OR_FILE",
              help="Host/software part that issues the GPU's work (`qtsim profiles hosts`): the "
                   "host CPU and stack, which bind small-batch HF decoding. Default: the "
                   "profile's own (calibrated CPU) or hf-eager, the centre of the public "
                   "campaigns' hosts, whose one shared speed factor spans servers and desktops.")
@bnb_options
@stack_option
@budget_options
@click.option("--format", "fmt", default="text", show_default=True, type=FORMATS)
def trap(gpu, profile_path, model, precision, batch, tokens, prompt_tokens, trust_table, policy,
         draws, host, double_quant, int8_threshold, compute_dtype, bnb_version, pue,
         grid_gco2_per_kwh, usd_per_hour, fmt):
    """Will PRECISION trap us on this GPU for this model?

    Answers from a hardware profile (shipped spec-derived, or calibrated by `qtsim calibrate`):
    trapped or not on energy per query, on time and on the Sustainability Index, with the
    numbers behind each verdict, COR, the critical batch B* and the critical model scale N*.
    Bands are 68% ranges from the profile's stderr.

    \b
    Example:
      qtsim trap --gpu l4 --model mistral-7b --precision nf4
      qtsim trap --profile my-h100.toml --model ./config.json --precision int8 --batch 32 --format json
      qtsim trap --gpu t4 --model llama-3.1-8b --precision nf4 --double-quant --batch 8 \\
          --grid-gco2-per-kwh 400 --usd-per-hour 0.53
    """
    workload = Workload(precision, batch, tokens, prompt_tokens,
                        bnb_settings(double_quant, int8_threshold, compute_dtype))
    assumptions = budget_assumptions(pue, grid_gco2_per_kwh, usd_per_hour)
    click.echo(trap_text(gpu, profile_path, model, workload, trust_table, policy, n_draws=draws,
                         host=host, assumptions=assumptions, fmt=fmt, bnb_release=bnb_version))
