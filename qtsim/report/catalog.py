"""What qtsim knows, as text: hardware profiles, host parts and model architectures.

One function per ``qtsim profiles list|show|new|hosts`` and ``qtsim models`` answer; each
returns the text (``text``, ``json`` or ``csv``; ``show`` also ``toml``) the command prints.
"""

from __future__ import annotations

import json

from qtsim.errors import ArchitectureError
from qtsim.model.architecture import load_architecture, shipped_models
from qtsim.profiles.custom import new_spec_profile, save_user_profile
from qtsim.profiles.files import user_profile_dir
from qtsim.profiles.hardware import list_profiles, profile_notes, unidentified_constants
from qtsim.profiles.hosts import DEFAULT_HOST, list_hosts, load_host
from qtsim.report.budget import profile_energy_scope


def table_text(rows: list[dict], fmt: str, text, columns=None, floats: str | None = None) -> str:
    """``rows`` as JSON, CSV (pandas; ``columns`` picks and orders them, ``floats`` formats
    floats) or, for ``text``, what the callable ``text(rows)`` makes of them."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        import pandas as pd

        df = pd.DataFrame(rows, columns=columns)
        return df.to_csv(index=False, float_format=floats).rstrip("\n")
    return text(rows)


def profile_list(fmt: str = "text") -> str:
    """Every visible profile, with where its numbers come from."""
    def text(rows):
        return "\n".join([f"{'name':26s} {'origin':8s} {'source':11s} device"]
                         + [f"{r['name']:26s} {r['origin']:8s} {r['source']:11s} {r['device']}"
                            for r in rows]
                         + [f"(user profiles live in {user_profile_dir()} and are searched first)"])

    return table_text(list_profiles(), fmt, text,
                      columns=["name", "origin", "source", "device", "location"])


def profile_card(prof, fmt: str = "text") -> str:
    """One profile's facts, constants (value ± stderr, unit, source) and provenance."""
    if fmt == "toml":
        return prof.to_toml()
    scope = profile_energy_scope(prof)
    if fmt == "json":
        return json.dumps({"hardware": prof.hardware, "provenance": prof.provenance,
                           "energy_scope": scope,
                           "notes": profile_notes(prof),
                           "unidentified": unidentified_constants(prof),
                           "physical": {k: vars(p) for k, p in prof.physical.items()},
                           "constants": prof.constants,
                           "fit": {k: v for k, v in prof.fit.items() if k != "correlation"}},
                          indent=2, default=str)
    hw, pv = prof.hardware, prof.provenance
    lines = [f"{prof.name}  ({hw.get('architecture', '')}, {hw['memory_gib']} GiB, TDP "
             f"{hw['tdp_w']} W)  [{prof.path}]",
             f"source: {pv.get('source')}  date: {pv.get('date')}  device: {pv.get('device')}  "
             f"measurements: {pv.get('n_measurements', 0)}",
             f"energy: {scope}",
             *(f"note: {n}" for n in profile_notes(prof)),
             f"{'constant':26s} {'value':>12s} {'stderr':>11s} {'unit':18s} source     basis"]
    bad = unidentified_constants(prof)
    lines += [f"{k:26s} {p.value:12.4g} {p.stderr:11.3g} {p.unit:18s} {p.source:10s} "
              + ("NOT IDENTIFIED: " if k in bad else "") + f"{p.basis[:70]}"
              for k, p in prof.physical.items()]
    lines += _paper_constant_lines(prof.constants)
    if prof.fit:
        lines.append("fit: " + ", ".join(f"{k}={v}" for k, v in prof.fit.items()
                                         if not isinstance(v, (list, dict))))
    return "\n".join(lines)


def _paper_constant_lines(c: dict) -> list[str]:
    """The paper's constants (eq. 18, 19) a profile records, per precision."""
    if not c:
        return []
    lines = [f"paper constants (eq. 18, 19) for {c.get('reference_model')} at batch "
             f"{c.get('reference_batch')}: alpha per weight-bit "
             f"{c.get('alpha_j_per_weight_bit', float('nan')):.4g} ± "
             f"{c.get('alpha_j_per_weight_bit_stderr', float('nan')):.2g} J"]
    for p, row in c.items():
        if isinstance(row, dict):
            lines.append(f"  {p:5s} " + "  ".join(
                f"{k} {row[k]:.4g} ± {row.get(k + '_stderr', float('nan')):.2g}"
                for k in ("alpha_j_per_bit", "gamma_j", "phi_j", "b_star_eq18") if k in row))
    return lines


def new_profile_summary(prof, path) -> str:
    """What ``profiles new`` wrote, and how to use it."""
    hw = prof.hardware
    n_priors = prof.n_priors
    return "\n".join([
        f"wrote {path}",
        f"  {prof.name}: {hw['memory_gib']} GiB, {hw['mem_bw_gbs']:g} GB/s, "
        f"{hw['fp16_tflops']:g} FP16 TFLOPS, {hw['int8_tops']:g} INT8 TOPS, "
        f"TDP {hw['tdp_w']:g} W; spec-derived device part with {n_priors} priors "
        "(combined with a host part at use: `qtsim profiles hosts`)",
        f"  try: qtsim trap --gpu {prof.name} --model mistral-7b --precision nf4"])


def new_profile(name, memory_gib, bandwidth_gbs, fp16_tflops, int8_tops, tdp_w,
                architecture="unknown", memory_type=None, force=False, dry_run=False,
                segment="datacenter") -> str:
    """``profiles new``: a spec-derived profile written to the user directory (``dry_run``:
    its TOML only); returns the text to print."""
    prof = new_spec_profile(name, memory_gib, bandwidth_gbs, fp16_tflops, int8_tops, tdp_w,
                            architecture, memory_type, segment=segment)
    if dry_run:
        return prof.to_toml()
    return new_profile_summary(prof, save_user_profile(prof, force))


def host_list(fmt: str = "text") -> str:
    """Host/software parts: the host CPU and stack that issue a GPU's work."""
    rows = []
    for name, where in list_hosts():
        part = load_host(where)
        rows.append({"name": name, "default": name == DEFAULT_HOST, "describe": part.describe(),
                     "location": where, **{k: p.value for k, p in part.physical.items()}})
    return table_text(rows, fmt, lambda rows: "\n".join(
        f"{r['name']}{' (default)' if r['default'] else ''}: {r['describe']}; "
        f"h_op {r['h_op_s'] * 1e6:.3g} us/op  [{r['location']}]" for r in rows))


def model_list(fmt: str = "text") -> str:
    """Shipped model architectures and their counts (unsupported ones with the reason)."""
    rows = _model_rows()

    def text(rows):
        head = f"{'model':16s} {'params':>8s} {'layers':>6s} {'fp16 GiB':>9s} {'nf4 GiB':>8s}"
        return "\n".join([head] + [
            f"{r['model']:16s} {r['params'] / 1e9:7.2f}B {r['layers']:6d} {r['fp16_gib']:9.2f} "
            f"{r['nf4_gib']:8.2f}" if r["params"] else f"{r['model']:16s} refused: {r['note']}"
            for r in rows])

    if fmt == "csv":
        rows = [r for r in rows if r["params"]]
    return table_text(rows, fmt, text, floats="%.6g", columns=[
        "model", "params", "quantizable", "layers", "linear_calls", "fp16_gib", "nf4_gib"])


def _model_rows() -> list[dict]:
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
    return rows
