"""``qtsim profiles list|show|new`` and ``qtsim models``."""

from __future__ import annotations

import json

import click

from qtsim.cli.options import FORMATS


@click.group()
def profiles():
    """Hardware profiles: shipped (spec-derived) and yours (user directory, searched first)."""


@profiles.command("list")
@click.option("--format", "fmt", default="text", type=FORMATS, show_default=True)
def list_cmd(fmt):
    """Every visible profile, with where its numbers come from."""
    from qtsim.profiles.hardware import list_profiles, user_profile_dir

    rows = list_profiles()
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if fmt == "csv":
        click.echo("name,origin,source,device,location")
        for r in rows:
            click.echo(f"{r['name']},{r['origin']},{r['source']},\"{r['device']}\",{r['location']}")
        return
    click.echo(f"{'name':26s} {'origin':8s} {'source':11s} device")
    for r in rows:
        click.echo(f"{r['name']:26s} {r['origin']:8s} {r['source']:11s} {r['device']}")
    click.echo(f"(user profiles live in {user_profile_dir()} and are searched first)")


@profiles.command("show")
@click.argument("name", required=False)
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False), help="A profile file instead of a name.")
@click.option("--format", "fmt", default="text", type=click.Choice(["text", "json", "toml"]), show_default=True)
def show_cmd(name, profile_path, fmt):
    """One profile's facts, constants (value ± stderr, unit, source) and provenance."""
    from qtsim.profiles.hardware import load_profile

    prof = load_profile(name, profile_path)
    if fmt == "toml":
        click.echo(prof.to_toml())
        return
    if fmt == "json":
        click.echo(json.dumps({"hardware": prof.hardware, "provenance": prof.provenance,
                               "physical": {k: vars(p) for k, p in prof.physical.items()},
                               "constants": prof.constants, "fit": {k: v for k, v in prof.fit.items() if k != "correlation"}},
                              indent=2, default=str))
        return
    hw = prof.hardware
    click.echo(f"{prof.name}  ({hw.get('architecture', '')}, {hw['memory_gib']} GiB, TDP {hw['tdp_w']} W)  [{prof.path}]")
    pv = prof.provenance
    click.echo(f"source: {pv.get('source')}  date: {pv.get('date')}  device: {pv.get('device')}  "
               f"measurements: {pv.get('n_measurements', 0)}")
    click.echo(f"{'constant':26s} {'value':>12s} {'stderr':>11s} {'unit':18s} source     basis")
    for k, p in prof.physical.items():
        click.echo(f"{k:26s} {p.value:12.4g} {p.stderr:11.3g} {p.unit:18s} {p.source:10s} {p.basis[:70]}")
    c = prof.constants
    if c:
        click.echo(f"paper constants (eq. 18, 19) for {c.get('reference_model')} at batch "
                   f"{c.get('reference_batch')}: alpha per weight-bit "
                   f"{c.get('alpha_j_per_weight_bit', float('nan')):.4g} ± "
                   f"{c.get('alpha_j_per_weight_bit_stderr', float('nan')):.2g} J")
        for p, row in c.items():
            if isinstance(row, dict):
                click.echo(f"  {p:5s} " + "  ".join(
                    f"{k} {row[k]:.4g} ± {row.get(k + '_stderr', float('nan')):.2g}"
                    for k in ("alpha_j_per_bit", "gamma_j", "phi_j", "b_star_eq18") if k in row))
    if prof.fit:
        click.echo("fit: " + ", ".join(f"{k}={v}" for k, v in prof.fit.items()
                                       if not isinstance(v, (list, dict))))


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
              help="Memory kind for the energy-per-byte prior (default: hbm from 1500 GB/s up).")
@click.option("--force", is_flag=True, help="Replace an existing user profile of this name.")
@click.option("--dry-run", is_flag=True, help="Print the TOML instead of writing it.")
def new_cmd(name, memory_gib, bandwidth_gbs, fp16_tflops, int8_tops, tdp_w, architecture,
            memory_type, force, dry_run):
    """Write a spec-derived profile for GPU NAME into your profile directory.

    The same priors (with their wide stderr) as the shipped spec profiles are derived from the
    five datasheet numbers; afterwards `qtsim trap --gpu NAME ...` works like for any shipped
    GPU. Use dense tensor throughput, not the "with sparsity" figure.

    \b
    Example:
      qtsim profiles new a6000 --memory-gib 48 --bandwidth-gbs 768 --fp16-tflops 154.8 \\
          --int8-tops 309.7 --tdp-w 300 --architecture ampere
    """
    from qtsim.profiles.custom import new_spec_profile, save_user_profile

    prof = new_spec_profile(name, memory_gib, bandwidth_gbs, fp16_tflops, int8_tops, tdp_w,
                            architecture, memory_type)
    if dry_run:
        click.echo(prof.to_toml())
        return
    path = save_user_profile(prof, force)
    hw = prof.hardware
    n_priors = sum(1 for p in prof.physical.values() if p.source == "prior")
    click.echo(f"wrote {path}")
    click.echo(f"  {prof.name}: {hw['memory_gib']} GiB, {hw['mem_bw_gbs']:g} GB/s, "
               f"{hw['fp16_tflops']:g} FP16 TFLOPS, {hw['int8_tops']:g} INT8 TOPS, "
               f"TDP {hw['tdp_w']:g} W; spec-derived device part with {n_priors} priors "
               "(combined with a host part at use: `qtsim profiles hosts`)")
    click.echo(f"  try: qtsim trap --gpu {prof.name} --model mistral-7b --precision nf4")


@profiles.command("hosts")
@click.option("--format", "fmt", default="text", type=FORMATS, show_default=True)
def hosts_cmd(fmt):
    """Host/software parts: the host CPU and stack that issue a GPU's work (`trap --host`)."""
    from qtsim.profiles.hosts import DEFAULT_HOST, list_hosts, load_host

    rows = []
    for name, where in list_hosts():
        part = load_host(where)
        rows.append({"name": name, "default": name == DEFAULT_HOST, "describe": part.describe(),
                     "location": where, **{k: p.value for k, p in part.physical.items()}})
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    elif fmt == "csv":
        import pandas as pd

        click.echo(pd.DataFrame(rows).to_csv(index=False).rstrip("\n"))
    else:
        for r in rows:
            star = " (default)" if r["default"] else ""
            click.echo(f"{r['name']}{star}: {r['describe']}; h_op {r['h_op_s'] * 1e6:.3g} us/op  [{r['location']}]")


@click.command()
@click.option("--format", "fmt", default="text", type=FORMATS, show_default=True)
def models(fmt):
    """Shipped model architectures (any config.json path works too)."""
    from qtsim.errors import ArchitectureError
    from qtsim.model.architecture import load_architecture, shipped_models

    rows = []
    for m in shipped_models():
        try:
            a = load_architecture(m)
            rows.append({"model": m, "params": a.n_params, "quantizable": a.n_quant_weights,
                         "layers": a.num_layers, "linear_calls": a.n_linear_calls,
                         "fp16_gib": a.weight_bytes("fp16") / 2**30,
                         "nf4_gib": a.weight_bytes("nf4") / 2**30, "source": a.source})
        except ArchitectureError as e:
            rows.append({"model": m, "params": None, "note": str(e)})
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if fmt == "csv":
        click.echo("model,params,quantizable,layers,linear_calls,fp16_gib,nf4_gib")
        for r in rows:
            if r["params"]:
                click.echo(f"{r['model']},{r['params']},{r['quantizable']},{r['layers']},{r['linear_calls']},{r['fp16_gib']:.3f},{r['nf4_gib']:.3f}")
        return
    click.echo(f"{'model':16s} {'params':>8s} {'layers':>6s} {'fp16 GiB':>9s} {'nf4 GiB':>8s}")
    for r in rows:
        if r["params"]:
            click.echo(f"{r['model']:16s} {r['params'] / 1e9:7.2f}B {r['layers']:6d} {r['fp16_gib']:9.2f} {r['nf4_gib']:8.2f}")
        else:
            click.echo(f"{r['model']:16s} refused: {r['note']}")
