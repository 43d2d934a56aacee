"""``qtsim compare``: one model at one batch across GPUs x precisions."""

from __future__ import annotations

import click

from qtsim.cli.options import (
    FORMATS,
    StrictCommand,
    bnb_options,
    bnb_settings,
    budget_assumptions,
    budget_options,
    int_option,
    precision_list,
    prices_option,
    split_list,
    stack_option,
)
from qtsim.model.workload import Workload
from qtsim.report.compare import compare_text
from qtsim.report.grid import refuse_existing


@click.command(cls=StrictCommand)
@click.option("--model", required=True, help="Shipped model name (`qtsim models`) or a path to a config.json.")
@click.option("--batch", default="1", show_default=True, metavar="B", help="Concurrent sequences B.")
@click.option("--gpu", "gpus", default="all", show_default=True,
              help="GPUs, comma-separated names or aliases, or 'all' (every visible profile, "
                   "yours included).")
@click.option("--profile", "profile_paths", multiple=True, type=click.Path(dir_okay=False),
              help="A profile TOML file (repeatable); added after --gpu.")
@click.option("--precision", "precisions", default="fp16,int8,nf4", show_default=True,
              help="Precisions, comma-separated; quantized ones are judged against the GPU's 16-bit run.")
@click.option("--tokens", default="256", show_default=True, metavar="K", help="New tokens per query K.")
@click.option("--prompt-tokens", default="128", show_default=True, metavar="N", help="Prompt length per query.")
@click.option("--sort", "sort", default="j_per_query", show_default=True,
              help="Column to sort by: gpu, precision, fits, peak_memory_gib, tok_per_s, latency_s, "
                   "j_per_query, kwh_per_million_queries, gco2e_per_query, usd_per_million_tokens, "
                   "energy_ratio, verdict (better first).")
@click.option("--host", default=None, metavar="NAME_OR_FILE",
              help="Host/software part combined with every GPU (`qtsim profiles hosts`); "
                   "default each profile's own or hf-eager (the centre of the public campaigns' hosts).")
@bnb_options
@stack_option
@budget_options
@click.option("--draws", default="200", show_default=True, metavar="N",
              help="Monte-Carlo draws per configuration (bands and 'likely' verdicts).")
@click.option("--format", "fmt", default="text", show_default=True, type=FORMATS)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Also write a bar chart of the sort column (PNG/PDF/SVG by suffix; J/query when "
                   "sorting by a text column).")
@click.option("--force", is_flag=True, help="Replace an existing --plot file.")
def compare(model, batch, gpus, profile_paths, precisions, tokens, prompt_tokens, sort, host, double_quant,
            int8_threshold, compute_dtype, bnb_version, pue, grid_gco2_per_kwh, usd_per_hour, draws, fmt,
            plot_path, force):
    """One table across GPUs x precisions for MODEL at batch B: fits, tok/s, latency, J/query,
    kWh per million queries (gCO2e per query, $ per million tokens when their assumptions are
    given) and the energy verdict against each GPU's 16-bit run.

    \b
    Examples:
      qtsim compare --model llama-3.1-8b --batch 8 --gpu t4,a10g,l4 \\
          --usd-per-hour 0.53,1.01,0.80 --sort usd_per_million_tokens --plot cmp.png
      qtsim compare --model mistral-7b --batch 1 --precision fp16,nf4 --double-quant --format csv
    """
    refuse_existing(plot_path, force, "--plot")
    b, k, pr, nd = (int_option(batch, "--batch", 1), int_option(tokens, "--tokens", 1),
                    int_option(prompt_tokens, "--prompt-tokens", 0), int_option(draws, "--draws", 10))
    workload = Workload(batch=b, new_tokens=k, prompt_tokens=pr,
                        bnb=bnb_settings(double_quant, int8_threshold, compute_dtype))
    text, plot = compare_text(model, split_list(gpus, "--gpu"), profile_paths, workload,
                              precision_list(precisions), sort,
                              budget_assumptions(pue, grid_gco2_per_kwh, None),
                              prices_option(usd_per_hour), nd, host, fmt, plot_path,
                              bnb_release=bnb_version)
    click.echo(text)
    if plot:
        click.echo(f"wrote {plot}", err=fmt != "text")

