"""``qtsim plan``: GPU, precision setting, batch and replicas for a demand and latency targets."""

from __future__ import annotations

import click

from qtsim.cli.options import (
    FORMATS,
    budget_assumptions,
    budget_options,
    int_option,
    number_option,
    prices_option,
    split_list,
)
from qtsim.cli.simulate import LateBar, parse_batches
from qtsim.report.plan import DEFAULT_SETTINGS, Targets
from qtsim.report.plan_output import plan_answer


@click.command()
@click.option("--model", required=True, help="Shipped model name (`qtsim models`) or a path to a config.json.")
@click.option("--demand", required=True, metavar="RATE",
              help="Mean demand with its unit: 2e6/day, 25/s, 1500/min or 9e4/h queries.")
@click.option("--peak-factor", default="1", show_default=True, metavar="F",
              help="Peak rate / mean rate: replicas are sized for demand x F.")
@click.option("--prompt-tokens", default="128", show_default=True, metavar="N", help="Prompt tokens per query.")
@click.option("--tokens", default="256", show_default=True, metavar="K", help="New tokens per query K.")
@click.option("--max-step-ms", metavar="MS", help="Target: decode step time (time per output token), ms.")
@click.option("--max-query-s", metavar="S",
              help="Target: time per query, arrival to last token (batch-fill wait + the call), s.")
@click.option("--percentile", default="84", show_default=True, metavar="P",
              help="Targets must hold at this percentile of the profile's Monte-Carlo draws "
                   "(84: the top of the 68% band; 50: the median; 95: stricter).")
@click.option("--gpu", "gpus", default="all", show_default=True,
              help="GPUs, comma-separated names or aliases, or 'all' (every visible profile).")
@click.option("--profile", "profile_paths", multiple=True, type=click.Path(dir_okay=False),
              help="A profile TOML file (repeatable); added after --gpu.")
@click.option("--precision", "settings", default=DEFAULT_SETTINGS, show_default=True,
              help="Precision settings, comma-separated: a precision (fp16, bf16, int8, nf4, fp4) "
                   "with +-joined bitsandbytes modifiers: dq (bnb_4bit_use_double_quant), t0 "
                   "(llm_int8_threshold=0), bf16/fp16 (bnb_4bit_compute_dtype).")
@click.option("--batch", "batches", default="1:256", show_default=True,
              help="Batch sizes searched: LO:HI (every integer), LO:HI:N geometric, or a comma list.")
@click.option("--host", default=None, metavar="NAME_OR_FILE",
              help="Host/software part combined with every GPU (`qtsim profiles hosts`).")
@budget_options
@click.option("--minimize", type=click.Choice(["usd", "kwh", "co2"]),
              help="Objective: $ (needs --usd-per-hour), kWh, or tCO2e (needs "
                   "--grid-gco2-per-kwh) per month; default $ when priced, else kWh.")
@click.option("--draws", default="200", show_default=True, metavar="N",
              help="Monte-Carlo draws per configuration (bands and the targets' percentile).")
@click.option("--top", default="15", show_default=True, metavar="N", help="Rows in the text table.")
@click.option("--format", "fmt", default="text", show_default=True, type=FORMATS)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Also draw cost against energy per configuration, frontier marked (PNG/PDF/SVG).")
def plan(model, demand, peak_factor, prompt_tokens, tokens, max_step_ms, max_query_s, percentile,
         gpus, profile_paths, settings, batches, host, pue, grid_gco2_per_kwh, usd_per_hour,
         minimize, draws, top, fmt, plot_path):
    """Plan capacity: which GPU, precision setting, batch and how many replicas serve DEMAND
    within the latency targets at least $, kWh or tCO2e per month, with 68% bands from the
    profiles' draws, and whether quantizing is a trap for the plan (the best quantized plan
    against the best 16-bit plan on the same GPU, in energy and in cost).

    Serving is Hugging Face generate with static batches: one replica (one GPU) serves B
    queries per call; replicas = ceil(demand x peak factor / (B / latency)); the time per query
    adds the wait for a batch to fill. Continuous batching (vLLM, TGI) is out of scope.

    \b
    Examples:
      qtsim plan --model llama-3.1-8b --demand 2e6/day --prompt-tokens 500 --tokens 300 \\
          --max-step-ms 80 --gpu l4,a10g,l40s,h100 --usd-per-hour 0.80,1.01,1.86,3.00 --plot plan.png
      qtsim plan --model mistral-7b --demand 5/s --max-query-s 30 --minimize kwh --format csv
    """
    def opt(v, name, scale=1.0):
        return None if v is None else number_option(v, name) * scale

    targets = Targets(opt(max_step_ms, "--max-step-ms", 1e-3), opt(max_query_s, "--max-query-s"),
                      number_option(percentile, "--percentile"))
    options = {"targets": targets, "batches": tuple(parse_batches(batches)),
               "new_tokens": int_option(tokens, "--tokens", 1),
               "prompt_tokens": int_option(prompt_tokens, "--prompt-tokens", 0),
               "assumptions": budget_assumptions(pue, grid_gco2_per_kwh, None),
               "minimize": minimize, "n_draws": int_option(draws, "--draws", 10),
               "peak_factor": number_option(peak_factor, "--peak-factor")}
    text, written = plan_answer(model, split_list(gpus, "--gpu"), profile_paths, demand, settings,
                                options, prices_option(usd_per_hour), host, fmt, plot_path,
                                int_option(top, "--top", 1),
                                progress_bar=lambda total: LateBar(total, "planning"))
    click.echo(text)
    if written:
        click.echo(f"wrote {written}", err=fmt != "text")
