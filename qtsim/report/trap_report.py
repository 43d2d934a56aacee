"""The ``qtsim trap`` report as typed data: the schema of its JSON and CSV outputs, in code.

:func:`qtsim.report.trap.assess_trap` builds a :class:`TrapReport`; the text writer
(:func:`qtsim.report.trap.format_text`), the JSON writer (:meth:`TrapReport.to_dict`, then
``json.dumps``) and the CSV writer (:func:`qtsim.report.trap.csv_row` over this module's :data:`CSV_FIELDS`)
all read it. Every field carries its unit and meaning in its metadata; a field holding a
mapping defined elsewhere (the bitsandbytes settings, the budget figures, the trust estimate)
lists its keys in ``keys``. :func:`json_fields` and :func:`csv_fields` walk that schema for the
documentation (``docs/formats-outputs.md`` is generated from them:
``python -m qtsim.report.trap_report``), so the page cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from typing import Any

from qtsim.model.results import Evaluation, field_table
from qtsim.simulate.simulator import Threshold


def about(unit: str, description: str, keys: tuple = (), omit_if_none: bool = False) -> Any:
    """A report field with its unit, meaning and, for a mapping, its keys ((key, unit,
    description) rows); ``omit_if_none``: absent from the JSON when None."""
    return field(default=None, metadata={"unit": unit, "description": description,
                                         "keys": keys, "omit_if_none": omit_if_none})


class Section:
    """A part of the report: serialised field by field, in order (:meth:`to_dict`)."""

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None and f.metadata.get("omit_if_none"):
                continue
            out[f.name] = plain(v)
        return out


def plain(v):
    """JSON-ready: sections and thresholds as dicts, tuples as lists, the rest as it is."""
    if isinstance(v, (Section, Threshold)):
        return v.to_dict()
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


@dataclass
class Band(Section):
    """A prediction with its 68% band over the Monte-Carlo draws."""

    value: float = about("(the quantity's)", "central prediction (the profile's central constants)")
    low: float = about("(the quantity's)", "16th percentile of the draws (constants and model error)")
    high: float = about("(the quantity's)", "84th percentile of the draws")


@dataclass
class Query(Section):
    gpu: str = about("", "hardware profile name")
    model: str = about("", "model architecture name")
    precision: str = about("", "the quantized weight precision assessed (int8, nf4, fp4, ...)")
    native: str = about("", "the 16-bit reference it is compared with (fp16 or bf16)")
    batch: int = about("sequences", "concurrent sequences B")
    new_tokens: int = about("tokens", "new tokens per query K (the paper's atomic hops)")
    prompt_tokens: int = about("tokens", "prompt length per query")
    model_params: int = about("parameters", "the model's parameter count")


AWAKE_KEYS = (
    ("name", "", "the constant varied: p_awake_w"),
    ("value", "W", "its central value"), ("stderr", "W", "its standard error"),
    ("unit", "", "its unit"), ("source", "", "its provenance (prior, calibrated, ...)"),
    ("range", "W", "[low, high]: central -/+ 1 stderr (68%), floored at 0"),
    ("energy_ratio", "1", "quantized / native J per query at low, central and high"),
    ("flips", "bool", "the energy verdict differs at an edge of the range"),
)
VERDICT_WORDS = ("trapped, not trapped, likely trapped (uncertain), likely not trapped "
                 "(uncertain); does not fit where the quantized model does not fit")


@dataclass
class Verdict(Section):
    energy: str = about("", f"trapped on energy per query (Prop. 3.2): {VERDICT_WORDS}")
    time: str = about("", "slower than native (tok/s): the same words")
    si: str = about("", "SI below native (Prop. 3.2): the same words")
    p_trapped_energy: float = about("1", "share of the draws trapped on energy")
    p_trapped_time: float = about("1", "share of the draws slower than native")
    p_trapped_si: float = about("1", "share of the draws with SI below native")
    fits_note: str = about("", "why memory, not the comparison, decides ('' when both fit)")
    fits: bool = about("bool", "the quantized model fits in device memory")
    native_fits: bool = about("bool", "the native 16-bit model fits in device memory")
    bitsandbytes_version: str = about("", "the bitsandbytes release every figure assumes")
    awake_sensitivity: dict = about(
        "", "the energy ratio with the awake power at the edges of its 68% range (GPU "
            "profiles with an awake-power constant)", AWAKE_KEYS, omit_if_none=True)
    headline: str = about("", "the first line when memory decides the answer, else ''")
    if_it_fit: dict = about("", "where the quantized model does not fit: the energy, time and "
                                "SI verdicts the comparison would give (hypothetical)",
                            (("energy", "", "the energy verdict had it fit"),
                             ("time", "", "the time verdict had it fit"),
                             ("si", "", "the SI verdict had it fit")),
                            omit_if_none=True)


def as_evaluated(name: str) -> Any:
    """A report field that is one of the evaluation's quantities: its unit and meaning are the
    evaluation's (:class:`~qtsim.model.results.Evaluation`), stated once."""
    meta = _EVALUATED[name]
    return about(meta["unit"], meta["description"])


_EVALUATED = {f.name: f.metadata for f in dataclasses.fields(Evaluation)}


@dataclass
class PowerStates(Section):
    busy_frac: float = as_evaluated("busy_frac")
    busy_w: float = as_evaluated("busy_w")
    awake_frac: float = as_evaluated("awake_frac")
    awake_w: float = as_evaluated("awake_w")
    cap_stretch: float = as_evaluated("cap_stretch")


@dataclass
class Side(Section):
    """One configuration (the quantized run, or its native reference)."""

    tok_per_s: Band = as_evaluated("tok_per_s")
    j_per_query: Band = as_evaluated("j_per_query")
    j_per_query_hli: Band = as_evaluated("j_per_query_hli")
    latency_s: Band = as_evaluated("latency_s")
    step_s: Band = as_evaluated("step_s")
    host_s: float = as_evaluated("host_s")
    device_s: float = as_evaluated("device_s")
    binding: str = about("", "host-bound or device-bound: the longer timeline")
    avg_power_w: Band = as_evaluated("avg_power_w")
    power_states: PowerStates = about("", "where the decode step's energy goes")
    peak_memory_gib: float = about("GiB", "peak device memory (weights, KV cache, workspace, "
                                          "runtime overhead)")
    fits: bool = as_evaluated("fits")


BUDGET_KEYS = (
    ("kwh_per_million_queries", "kWh", "facility energy per million queries (x PUE)"),
    ("gco2e_per_query", "gCO2e", "emissions per query (null without --grid-gco2-per-kwh)"),
    ("usd_per_million_tokens", "USD", "GPU cost per million new tokens, busy the whole hour "
                                      "(null without --usd-per-hour)"),
)
ASSUMPTION_KEYS = (
    ("pue", "1", "power usage effectiveness (facility / IT energy)"),
    ("grid_gco2_per_kwh", "gCO2e/kWh", "grid carbon intensity (null: not given)"),
    ("usd_per_hour", "USD/h", "GPU price per hour (null: not given)"),
    ("energy_scope", "", "what the energy figures cover (GPU board, or CPU package)"),
    ("energy_boundary", "", "the scope with the PUE applied, in words"),
)


@dataclass
class Budget(Section):
    assumptions: dict = about("", "the assumptions behind the budget figures", ASSUMPTION_KEYS)
    quantized: dict = about("", "budget figures of the quantized run", BUDGET_KEYS)
    native: dict = about("", "budget figures of the native run", BUDGET_KEYS)


@dataclass
class Serving(Section):
    framework: str = about("", "the serving framework the model describes")
    execution: str = about("", "its execution mode (eager: no CUDA graphs, no torch.compile)")
    bitsandbytes_version: str = about("", "the bitsandbytes release predicted")
    bitsandbytes_version_source: str = about("", "where that release comes from (recorded, "
                                                 "--bnb-version, or assumed)")
    statement: str = about("", "the serving assumption in one sentence")


@dataclass
class Ratios(Section):
    energy: Band = about("1", "J per query, quantized / native (power model)")
    energy_hli: float = about("1", "the same by the paper's HLI (TDP x latency)")
    speed: Band = about("1", "tok/s, quantized / native")
    cor: Band = about("1", "Casting Overhead Ratio (eq. 9): TPS_ref / TPS_p - 1 from step times")


THRESHOLD_KEYS = (
    ("value", "(batch or parameters)", "first crossing: null or 'inf' where there is none"),
    ("kind", "", "crossing (trapped below), reverse (trapped above), trapped_everywhere, "
                 "never_trapped, native_oom (B*: the native model does not fit)"),
    ("band", "(as value)", "[16th, 84th] percentile over all draws; 'inf' / 0: beyond the "
                           "search range on the side the draw's verdict implies"),
    ("range", "(as value)", "the range searched"),
    ("reason", "", "the answer in words"),
    ("crossings", "", "every crossing of the central curves: [{value, side}]"),
    ("draws", "", "shares of draws with no crossing (p_no_crossing = p_trapped_everywhere + "
                  "p_never_trapped), with more than one (p_multiple_crossings), the median, "
                  "n_draws and the censoring rule"),
    ("memory", "", "N* only: whether a model of that size fits the device (device_gib, "
                   "quantized_gib, native_gib, fits_quantized, fits_native, "
                   "largest_fitting_quantized_params, largest_fitting_native_params, batch)"),
)


@dataclass
class Paper(Section):
    alpha_j_per_bit: float = about("J/bit", "alpha: energy per weight bit streamed per hop (eq. 19)")
    gamma_j: float = about("J", "gamma: the precision-independent energy per hop")
    phi_j: float = about("J", "phi(h, p): the casting energy per hop at this precision")
    b_star_eq18: float = about("sequences", "B* by the paper's eq. 18 from alpha and phi")
    note: str = about("", "how these were derived (the physical model at batch 1)")


TRUST_KEYS = (
    ("t_si", "1", "T_SI = accuracy / native accuracy"), ("source", "", "provenance"),
    ("status", "", "published, measured, extrapolated, assumed, ..."),
    ("(others)", "", "task, depth, accuracies, per-hop error and flags of the trust estimate "
                     "(qtsim.model.trust.TrustEstimate.to_dict)"),
)


@dataclass
class SustainabilityIndex(Section):
    policy: str = about("", "SI aggregation: linear (eq. 6) or geometric (Remark 3.1)")
    weights: list = about("1", "pillar weights (trust, efficiency, sustainability)")
    t_si: float = about("1", "trust pillar T_SI (eq. 2)")
    e_si: float = about("1", "efficiency pillar E_SI (eq. 3-4)")
    s_si: float = about("1", "sustainability pillar S_SI = E_ref / E (power model)")
    s_si_hli: float = about("1", "S_SI with the paper's HLI energy")
    si: float = about("1", "the Sustainability Index of the quantized run (native: 1)")
    si_band: list = about("1", "[16th, 84th] percentile of SI over the draws")
    si_native: float = about("1", "the native run's SI (1 by definition)")
    trust: dict = about("", "the trust estimate behind T_SI", TRUST_KEYS)
    capped: bool = about("bool", "whether the pillars above are capped at 1 (they are not)")
    capping: str = about("", "the capping rule of si_capped, in words")
    si_capped: float = about("1", "SI with every pillar capped at 1 (the paper's [0, 1])")
    s_si_log: dict = about("1", "eq. 5's log form of S_SI with chi in several units: it "
                                "depends on them",
                           (("kgCO2e", "1", "chi in kgCO2e"), ("gCO2e", "1", "chi in gCO2e"),
                            ("J", "1", "chi in joules"),
                            ("ratio", "1", "the plain ratio eq. 5 approaches")))
    carbon_kg_per_kwh: float = about("kgCO2e/kWh", "carbon intensity used by the kgCO2e form")
    energy_method: str = about("", "which energy the pillars use")


@dataclass
class Host(Section):
    name: str = about("", "the host/software part that issues the GPU's work")
    overlap: bool = about("bool", "host and device timelines overlap (CUDA) or add (CPU)")
    rule: str = about("", "the composition rule in words (DESIGN sec. 2a)")


@dataclass
class ModelError(Section):
    source: str = about("", "validated (held-out measurements) or prior")
    q68: dict = about("1", "68% half-width of |log(measured / predicted)| per quantity")
    q95: dict = about("1", "95% half-width per quantity")
    rho: float = about("1", "correlation of the error across kernel families")
    basis: str = about("", "where the figures come from")


@dataclass
class ProfileInfo(Section):
    name: str = about("", "profile name")
    source: str = about("", "spec, calibrated or published")
    origin: str = about("", "shipped, or the user file it was read from")
    recomputed: list = about("", "constants recomputed at load (from the current priors)")
    unidentified: dict = about("", "constants the calibration did not identify, and why")
    notes: list = about("", "notes that travel with the profile")
    memory_gib: float = about("GiB", "device memory")
    calibrated: bool = about("bool", "source is calibrated")
    priors: int = about("", "how many constants are priors (not measured)")
    date: str = about("", "profile date")
    device: str = about("", "the device the profile describes or was measured on")
    location: str = about("", "where the profile was read from")
    uncertainty: str = about("", "what the bands cover, in words")
    model_error: ModelError = about("", "the model's own out-of-sample error added to the draws")


@dataclass
class TrapReport(Section):
    """The whole ``qtsim trap`` answer (JSON: :meth:`to_dict`, one object)."""

    query: Query = about("", "what was asked")
    verdict: Verdict = about("", "the verdicts and what they rest on")
    bitsandbytes: dict = about("", "the BitsAndBytesConfig settings that apply",
                               (("load_in_8bit", "bool", "LLM.int8()"),
                                ("load_in_4bit", "bool", "4-bit (NF4 or FP4)"),
                                ("bnb_4bit_quant_type", "", "nf4 or fp4"),
                                ("bnb_4bit_use_double_quant", "bool", "double quantisation of "
                                                                      "the 4-bit scales"),
                                ("bnb_4bit_compute_dtype", "", "the 4-bit layers' compute dtype"),
                                ("llm_int8_threshold", "", "LLM.int8() outlier threshold (6 or 0)"),
                                ("(any)", "", "null where the key does not apply to the "
                                              "precision")))
    quantized: Side = about("", "the quantized run")
    native: Side = about("", "its native 16-bit reference")
    budget: Budget = about("", "energy, carbon and money per query and per token")
    serving: Serving = about("", "the execution model every verdict depends on")
    ratios: Ratios = about("", "quantized against native")
    b_star: Threshold = about("sequences", "critical batch B*: where quantized J/query equals "
                                           "native (physical model)", THRESHOLD_KEYS)
    n_star: Threshold = about("parameters", "critical model scale N*: the parameter count "
                                            "where they are equal", THRESHOLD_KEYS)
    paper: Paper = about("", "the paper's constants derived from the physical model")
    si: SustainabilityIndex = about("", "the Sustainability Index and its pillars (eq. 1-6)")
    host: Host = about("", "the host part")
    profile: ProfileInfo = about("", "the hardware profile and its provenance")


def _section_type(cls, name: str):
    """The :class:`Section` type of field ``name`` of ``cls`` (None for anything else)."""
    hint = typing.get_type_hints(cls).get(name)
    return hint if isinstance(hint, type) and issubclass(hint, Section) else None


def json_fields(cls=TrapReport, prefix: str = "") -> list[dict[str, str]]:
    """Every JSON key of the report, depth first: ``{"key", "unit", "description"}`` with the
    key as a dotted path (``quantized.j_per_query.low``)."""
    rows = []
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        sub = _section_type(cls, f.name)
        unit, desc = f.metadata.get("unit", ""), f.metadata.get("description", "")
        if sub is Band:
            rows.append({"key": path, "unit": unit, "description": desc + " (value, low, high)"})
            continue
        rows.append({"key": path, "unit": "" if sub else unit, "description": desc})
        if sub is not None:
            rows += json_fields(sub, path + ".")
        for k, u, d in f.metadata.get("keys", ()):
            rows.append({"key": f"{path}.{k}", "unit": u, "description": d})
    return rows


def markdown_table(rows: list[dict[str, str]], first: str) -> str:
    """A Markdown table of ``rows`` (``first``: the column holding the name)."""
    lines = [f"| {first} | unit | meaning |", "|---|---|---|"]
    for r in rows:
        desc = r["description"].replace("|", "/")
        lines.append(f"| `{r[first]}` | {r['unit']} | {desc} |")
    return "\n".join(lines)


#: ``qtsim trap --format csv``: one row per configuration, always these columns in this order
#: (a header line, then the row), so runs stack with ``tail -n +2``. Empty cell: no value (a
#: band without draws, a threshold that does not exist); ``inf``: trapped at every size or batch
#: searched. Column -> (unit, meaning): the schema docs/formats-outputs.md is generated from.
CSV_FIELDS = {
    "gpu": ("", "hardware profile name"), "model": ("", "model architecture name"),
    "precision": ("", "the quantized precision assessed"),
    "native": ("", "its 16-bit reference"), "batch": ("sequences", "concurrent sequences B"),
    "new_tokens": ("tokens", "new tokens per query K"),
    "prompt_tokens": ("tokens", "prompt length per query"),
    "model_params": ("parameters", "the model's parameter count"),
    "fits": ("0/1", "the quantized model fits in device memory"),
    "native_fits": ("0/1", "the native model fits in device memory"),
    "peak_memory_gib": ("GiB", "peak device memory, quantized"),
    "native_peak_memory_gib": ("GiB", "peak device memory, native"),
    "device_memory_gib": ("GiB", "device memory"),
    "verdict_energy": ("", "verdict on energy per query (as JSON verdict.energy; 'only option "
                           "(native does not fit)' where only the quantized model fits)"),
    "verdict_time": ("", "verdict on tok/s (the same words)"),
    "verdict_si": ("", "verdict on SI (the same words)"),
    "p_trapped_energy": ("1", "share of draws trapped on energy"),
    "p_trapped_time": ("1", "share of draws slower than native"),
    "p_trapped_si": ("1", "share of draws with SI below native"),
    "j_per_query": ("J", "energy per query, quantized (power states)"),
    "j_per_query_low": ("J", "its 16th percentile over the draws"),
    "j_per_query_high": ("J", "its 84th percentile"),
    "native_j_per_query": ("J", "energy per query, native"),
    "native_j_per_query_low": ("J", "its 16th percentile"),
    "native_j_per_query_high": ("J", "its 84th percentile"),
    "tok_per_s": ("tokens/s", "throughput, quantized, all sequences"),
    "tok_per_s_low": ("tokens/s", "its 16th percentile"),
    "tok_per_s_high": ("tokens/s", "its 84th percentile"),
    "native_tok_per_s": ("tokens/s", "throughput, native"),
    "native_tok_per_s_low": ("tokens/s", "its 16th percentile"),
    "native_tok_per_s_high": ("tokens/s", "its 84th percentile"),
    "energy_ratio": ("1", "J per query, quantized / native"),
    "energy_ratio_low": ("1", "its 16th percentile"), "energy_ratio_high": ("1", "its 84th percentile"),
    "energy_ratio_hli": ("1", "the same by the paper's HLI (TDP x latency)"),
    "speed_ratio": ("1", "tok/s, quantized / native"),
    "speed_ratio_low": ("1", "its 16th percentile"), "speed_ratio_high": ("1", "its 84th percentile"),
    "cor": ("1", "Casting Overhead Ratio (eq. 9)"),
    "cor_low": ("1", "its 16th percentile"), "cor_high": ("1", "its 84th percentile"),
    "si": ("1", "Sustainability Index of the quantized run (native: 1)"),
    "si_low": ("1", "its 16th percentile"), "si_high": ("1", "its 84th percentile"),
    "t_si": ("1", "trust pillar"), "e_si": ("1", "efficiency pillar"),
    "s_si": ("1", "sustainability pillar"),
    "trust_status": ("", "where T_SI comes from: published, measured, extrapolated, ..."),
    "b_star": ("sequences", "critical batch B* (first crossing; inf: trapped at every batch "
                            "searched, 0: never)"),
    "b_star_low": ("sequences", "16th percentile over all draws (censored: inf / 0 beyond the "
                                "range)"),
    "b_star_high": ("sequences", "84th percentile"),
    "b_star_kind": ("", "crossing, reverse, trapped_everywhere, never_trapped, native_oom"),
    "b_star_eq18": ("sequences", "B* by the paper's eq. 18"),
    "n_star": ("parameters", "critical model scale N*"),
    "n_star_low": ("parameters", "16th percentile over all draws (censored)"),
    "n_star_high": ("parameters", "84th percentile"),
    "n_star_kind": ("", "crossing, reverse, trapped_everywhere, never_trapped"),
    "profile": ("", "hardware profile name"),
    "profile_source": ("", "spec, calibrated or published"),
    "profile_priors": ("", "how many of its constants are priors"),
    "bitsandbytes_version": ("", "the bitsandbytes release every figure assumes"),
}
CSV_COLUMNS = tuple(CSV_FIELDS)


def generated_markdown() -> str:
    """The generated part of docs/formats-outputs.md: the JSON keys and CSV columns of
    ``qtsim trap`` and the fields of :class:`~qtsim.model.results.Evaluation`."""
    rows = [{"column": n, "unit": u, "description": d} for n, (u, d) in CSV_FIELDS.items()]
    return GENERATED.format(json=markdown_table(json_fields(), "key"),
                            csv=markdown_table(rows, "column"),
                            evaluation=markdown_table(field_table(Evaluation), "name"))


def main() -> None:  # pragma: no cover - prints the generated part of docs/formats-outputs.md
    sys.stdout.write(generated_markdown())


GENERATED = """<!-- generated by `python -m qtsim.report.trap_report`: do not edit by hand -->
### `qtsim trap --format json`

One object; nested keys are written as dotted paths. Numbers are floats unless the unit says
otherwise; a band is `{{"value", "low", "high"}}`; `inf` is written as the string `"inf"`.

{json}

### `qtsim trap --format csv`

A header line, then one row per configuration, always these columns in this order (runs stack
with `tail -n +2`). An empty cell: no value (a band without draws, a threshold that does not
exist, a figure of what cannot run); `inf`: trapped at every size or batch searched.

{csv}

### `Simulator.evaluate` (Python)

`qtsim.simulate.simulator.Simulator.evaluate` returns a
`qtsim.model.results.Evaluation` of arrays shaped like the workload (with a leading axis of
Monte-Carlo draws when `draws=True`): attributes (`e.j_per_query`) or, read-only, keys
(`e["j_per_query"]`).

{evaluation}
<!-- end of generated part -->
"""


if __name__ == "__main__":  # pragma: no cover
    main()
