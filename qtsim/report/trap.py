"""``qtsim trap``: will quantizing this model on this GPU trap us? (the planner's question)

:func:`assess_trap` composes the simulator, the SI pillars (eq. 1-6) and the trust table into one
report: verdicts on energy, time and SI (Prop. 3.2), the numbers behind them with uncertainty
bands from the profile's stderr, COR (eq. 9), B* (physical, and the paper's eq. 18), N*, and
the profile's provenance.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json

import numpy as np

from qtsim.model import sustainability as si
from qtsim.model import timeline
from qtsim.model.architecture import Architecture, check_context, load_architecture
from qtsim.model.results import Evaluation
from qtsim.model.stats import GIB, band, check_draws, gib_texts
from qtsim.model.trust import lookup_trust
from qtsim.model.verdicts import costs_more, si_trapped, slower, verdict
from qtsim.model.workload import Workload
from qtsim.profiles.hardware import (
    load_profile,
    profile_notes,
    profile_origin,
    unidentified_constants,
)
from qtsim.profiles.profile import HardwareProfile
from qtsim.report import budget
from qtsim.report.budget import GPU_BOARD, BudgetAssumptions
from qtsim.report.serving import bnb_version, serving_assumption
from qtsim.report.trap_report import (
    CSV_COLUMNS,
    Band,
    Budget,
    Host,
    ModelError,
    Paper,
    PowerStates,
    ProfileInfo,
    Query,
    Ratios,
    Serving,
    Side,
    SustainabilityIndex,
    TrapReport,
    Verdict,
)
from qtsim.simulate.memory import check_trap_draws
from qtsim.simulate.simulator import Simulator


def _stat(central, draws) -> Band:
    med, lo, hi = band(np.asarray(draws).ravel())
    return Band(float(np.asarray(central)), float(lo), float(hi))


def assess_trap(profile: HardwareProfile, arch: Architecture, workload: Workload,
                trust_table: str | None = None, policy: str = "linear", n_draws: int = 400,
                seed: int = 0, host=None,
                assumptions: budget.BudgetAssumptions | None = None,
                bnb_release: str | None = None) -> TrapReport:
    """The full trap report (:class:`~qtsim.report.trap_report.TrapReport`; its fields, units
    and meanings are the JSON and CSV schema, docs/formats-outputs.md).

    ``workload``: the quantized precision with its bitsandbytes settings (used for every figure,
    B* and N* included), the batch and the tokens. ``host``: the host/software part (name or
    file, :mod:`qtsim.profiles.hosts`); None = the profile's own or the default host.
    ``assumptions``: PUE, grid intensity and GPU price behind the budget figures.
    ``bnb_release``: the bitsandbytes release predicted (default: the profile's recorded one,
    else the current release, stated as assumed: :mod:`qtsim.model.stack`).
    """
    check_draws(n_draws, allow_zero=False)
    check_trap_draws(n_draws)
    sim = Simulator(profile, n_draws=n_draws, seed=seed, host=host, bnb_version=bnb_release)
    profile = sim.profile
    assumptions = dataclasses.replace(assumptions or budget.BudgetAssumptions(),
                                      scope=budget.profile_energy_scope(profile))
    workload.bnb.check([workload.precision], profile)
    counts = arch.counts()
    q, n, d = sim.compare(counts, workload)
    qd, nd, dd = sim.compare(counts, workload, draws=True)
    trust = lookup_trust(arch.name, workload.precision, profile.native, trust_table, arch=arch,
                         family=workload.family)
    rep = TrapReport(
        query=_query(profile, arch, workload),
        verdict=_verdicts(q, n, d, qd, nd, dd, trust.t_si, policy),
        bitsandbytes=workload.bnb.bnb_config(workload.precision, profile),
        quantized=_side(q, qd),
        native=_side(n, nd),
        budget=Budget(assumptions.to_dict(),
                      *(budget.figures(float(x.j_per_query), float(x.tok_per_s), assumptions)
                        for x in (q, n))),
        serving=_serving(profile),
        ratios=Ratios(energy=_stat(d["energy_ratio"], dd["energy_ratio"]),
                      energy_hli=float(d["energy_ratio_hli"]),
                      speed=_stat(d["speed_ratio"], dd["speed_ratio"]),
                      cor=_stat(d["cor"], dd["cor"])),
        b_star=sim.b_star(counts, workload, draws=True),
        n_star=sim.n_star(arch, workload, draws=True),
        paper=_paper(sim.paper_constants(counts, workload)),
        si=_si(q, n, qd, nd, trust, policy),
        host=_host(profile),
        profile=_profile(sim, n_draws),
    )
    _complete_verdict(rep, sim, counts, workload, q, n)
    return rep


def _complete_verdict(rep: TrapReport, sim: Simulator, counts, workload: Workload, q, n) -> None:
    """What the verdict rests on: memory, the stack, and whether the awake-power prior decides
    it (the energy ratio at the edges of its 68% range); no verdict on what cannot run."""
    profile, v = sim.profile, rep.verdict
    v.fits_note = _fits_note(q, n, workload, profile)
    v.fits, v.native_fits = bool(q.fits), bool(n.fits)
    v.bitsandbytes_version = bnb_version(profile)
    if "p_awake_w" in profile.physical and profile.overlap:
        v.awake_sensitivity = sim.verdict_range(counts, workload, "p_awake_w")
    v.headline = fits_headline(rep)
    if not q.fits:  # no verdict on a configuration that cannot run
        v.if_it_fit = {"energy": v.energy, "time": v.time, "si": v.si}
        v.energy = v.time = v.si = "does not fit"


def trap_text(gpu: str | None, profile_path: str | None, model: str, workload: Workload,
              trust_table: str | None = None, policy: str = "linear", n_draws: int = 400,
              host=None, assumptions: budget.BudgetAssumptions | None = None,
              fmt: str = "text", bnb_release: str | None = None) -> str:
    """``qtsim trap``: the report for ``model`` on a profile (``gpu`` name or ``profile_path``)
    at ``workload``, as ``fmt`` (text, json or csv: :func:`format_text`, the JSON of
    :func:`assess_trap`, or :func:`csv_text`)."""
    prof = load_profile(gpu, profile_path)
    arch = load_architecture(model)
    check_context(arch, workload.prompt_tokens, workload.new_tokens)
    report = assess_trap(prof, arch, workload, trust_table, policy, n_draws=n_draws, host=host,
                         assumptions=assumptions, bnb_release=bnb_release)
    if fmt == "json":
        return json.dumps(report.to_dict(), indent=2)
    if fmt == "csv":
        return csv_text(report)
    return format_text(report)


def _serving(profile: HardwareProfile) -> Serving:
    """The execution model and the bitsandbytes release every verdict depends on."""
    return Serving("transformers generate", "eager", bnb_version(profile),
                   (profile.bnb or {}).get("source", ""), serving_assumption(profile))


def _trust_text(t: dict) -> str:
    """T_SI and where it comes from; a measured figure also says its task, depth and accuracies."""
    text = f"{t['t_si']:.3f} ({t['source']})"
    if t.get("status") == "measured":
        accs = (f", accuracy {t['accuracy']:.3f} vs {t['accuracy_ref']:.3f}"
                if t.get("accuracy") is not None and t.get("accuracy_ref") is not None else "")
        depth = f" at depth {t['depth']:g}" if t.get("depth") is not None else ""
        text = f"{t['t_si']:.3f} (measured: {t.get('task', '')}{depth}{accs}; {t['source']})"
    return text


def _query(profile: HardwareProfile, arch: Architecture, w: Workload) -> Query:
    return Query(profile.name, arch.name, w.precision, profile.native, w.batch, w.new_tokens,
                 w.prompt_tokens, arch.n_params)


def _side(c: Evaluation, dr: Evaluation) -> Side:
    """One configuration's figures: central values with their 68% bands over the draws."""
    return Side(
        tok_per_s=_stat(c.tok_per_s, dr.tok_per_s),
        j_per_query=_stat(c.j_per_query, dr.j_per_query),
        j_per_query_hli=_stat(c.j_per_query_hli, dr.j_per_query_hli),
        latency_s=_stat(c.latency_s, dr.latency_s),
        step_s=_stat(c.step_s, dr.step_s),
        host_s=float(c.host_s), device_s=float(c.device_s),
        binding=str(timeline.binding(c.host_s, c.device_s)),
        avg_power_w=_stat(c.avg_power_w, dr.avg_power_w),
        power_states=PowerStates(*(float(np.ravel(c[k])[0]) for k in (
            "busy_frac", "busy_w", "awake_frac", "awake_w", "cap_stretch"))),
        peak_memory_gib=float(c.peak_bytes) / GIB,
        fits=bool(c.fits),
    )


def _verdicts(q, n, d, qd, nd, dd, t_si: float, policy: str) -> Verdict:
    """Trapped on energy, time and SI (Prop. 3.2), each with the share of draws trapped."""
    si_q = float(si.pillars(q, n, t_si, policy)["si"])
    si_d = si.pillars(qd, nd, t_si, policy)["si"]
    share_e = float(np.mean(costs_more(qd.j_per_query, nd.j_per_query)))
    share_t = float(np.mean(slower(dd["speed_ratio"])))
    share_si = float(np.mean(si_trapped(si_d)))
    return Verdict(
        energy=verdict(bool(costs_more(q.j_per_query, n.j_per_query)), share_e),
        time=verdict(bool(slower(d["speed_ratio"])), share_t),
        si=verdict(bool(si_trapped(si_q)), share_si),
        p_trapped_energy=share_e, p_trapped_time=share_t, p_trapped_si=share_si,
    )


def _fits_note(q: dict, n: dict, w: Workload, profile: HardwareProfile) -> str:
    """Why memory, not the comparison, decides (or '' when both fit)."""
    if not n["fits"] and q["fits"]:
        need, cap = gib_texts(float(n["peak_bytes"]) / GIB, profile.memory_bytes / GIB)
        return (f"the native {profile.native} model needs {need} and does not fit in {cap}: "
                "quantization is the only way to run it here, whatever it costs")
    if not q["fits"]:
        need, cap = gib_texts(float(q["peak_bytes"]) / GIB, profile.memory_bytes / GIB)
        return (f"even the {w.precision} model needs {need} and does not fit in {cap} at batch "
                f"{w.batch}")
    return ""


def _paper(pc: dict) -> Paper:
    return Paper(float(pc["alpha_j_per_bit"]), float(pc["gamma_j"]), float(pc["phi_j"]),
                 float(pc["b_star_paper"]),
                 "alpha, gamma, phi derived from the physical model at batch 1 "
                 "(E_hop = gamma + alpha p + phi); B* by the paper's eq. 18")


def _si(q, n, qd, nd, trust, policy: str) -> SustainabilityIndex:
    """The SI pillars (eq. 1-6), SI with its band, and the trust estimate behind T_SI."""
    t_si = trust.t_si
    pil = si.pillars(q, n, t_si, policy)
    e_si, s_si, s_si_hli, si_q = (float(pil[k]) for k in ("e_si", "s_si", "s_si_hli", "si"))
    si_d = si.pillars(qd, nd, t_si, policy)["si"]
    return SustainabilityIndex(
        policy=policy, weights=list(si.DEFAULT_WEIGHTS), t_si=t_si,
        e_si=e_si, s_si=s_si, s_si_hli=s_si_hli, si=si_q,
        si_band=[float(x) for x in band(np.asarray(si_d).ravel())[1:]],
        si_native=1.0, trust=trust.to_dict(),
        capped=False, capping=si.CAPPING,
        si_capped=float(si.capped_si(t_si, e_si, s_si, policy=policy)),
        s_si_log=si.s_si_log_by_unit(float(n.j_per_query), float(q.j_per_query)),
        carbon_kg_per_kwh=si.DEFAULT_CARBON_KG_PER_KWH,
        energy_method="power model (what an energy counter reads); s_si_hli uses the paper's "
                      "HLI (TDP x latency)")


def _host(profile: HardwareProfile) -> Host:
    return Host(profile.host_name, profile.overlap,
                "asynchronous launches: host and device overlap between synchronisations "
                "(DESIGN sec. 2a)" if profile.overlap else
                "host and device are one processor: their times add")


def _profile(sim: Simulator, n_draws: int) -> ProfileInfo:
    profile = sim.profile
    return ProfileInfo(
        name=profile.name, source=profile.source, origin=profile_origin(profile),
        recomputed=list(profile.provenance.get("recomputed") or []),
        unidentified=unidentified_constants(profile),
        notes=profile_notes(profile, origin=False),
        memory_gib=profile.memory_bytes / GIB,
        calibrated=profile.source == "calibrated",
        priors=profile.n_priors,
        date=profile.provenance.get("date", ""),
        device=profile.provenance.get("device", ""),
        location=profile.path or "",
        uncertainty=(f"{n_draws} Monte-Carlo draws of the profile's constants plus the "
                     "model's own error; bands are 16th-84th percentiles"),
        model_error=_model_error(sim))


def _band(lo, hi, fmt=lambda x: f"{x:.3g}") -> str:
    """``[low, high]``: a comma, never a dash that a minus sign would run into."""
    return f"[{fmt(lo)}, {fmt(hi)}]"


def _model_error(sim: Simulator) -> ModelError:
    me = sim.model_error or {}
    return ModelError(me.get("source", "none"), me.get("q68", {}), me.get("q95", {}),
                      me.get("rho"), me.get("basis", ""))


def _fmt(stat: Band, unit="", digits=3):
    return f"{stat.value:.{digits}g}{unit} " + _band(stat.low, stat.high,
                                                       lambda x: f"{x:.{digits}g}")


def fits_headline(r: TrapReport) -> str:
    """The first line when memory decides the answer, else ''."""
    qy, qn, nt = r.query, r.quantized, r.native
    p, nat = qy.precision.upper(), qy.native.upper()
    cap = r.profile.memory_gib
    q_gib, n_gib, cap_gib = gib_texts(qn.peak_memory_gib, nt.peak_memory_gib, cap or 0.0)
    has = f"; {qy.gpu} has {cap_gib}" if cap else f" on {qy.gpu}"
    at = f" (batch {qy.batch})"
    if not qn.fits and not nt.fits:
        return (f"DOES NOT FIT: {qy.model} needs {q_gib} at {p} and {n_gib} "
                f"at {nat}{has}{at}: no verdict, it runs in neither")
    if not qn.fits:
        return (f"DOES NOT FIT: {qy.model} needs {q_gib} at {p} ({nat}: "
                f"{n_gib}){has}{at}: no verdict")
    if not nt.fits:
        return (f"ONLY {p} FITS: {qy.model} needs {n_gib} at {nat} but {q_gib} "
                f"at {p}{has}{at}: quantizing is the only way to run it here, whatever the "
                "comparison below says")
    return ""


def format_text(r: TrapReport) -> str:
    """A report a person reads in ten seconds."""
    qy, qn, nt, ra, sx = r.query, r.quantized, r.native, r.ratios, r.si
    v = {**r.verdict.to_dict(), **(r.verdict.if_it_fit or {})}
    p, nat = qy.precision.upper(), qy.native.upper()
    head = "TRAPPED" if v["energy"] == "trapped" else (
        "NOT TRAPPED" if v["energy"] == "not trapped" else "UNCERTAIN")
    si_band = _band(*sx.si_band, lambda x: f"{x:.3f}")
    fit_head = r.verdict.headline or ""
    if fit_head and not qn.fits:
        head = "IF IT FIT, " + head  # the comparison below is hypothetical
    lines = [fit_head] if fit_head else []
    lines += [
        f"{head} on energy: {p} vs {nat} for {qy.model} on {qy.gpu}, batch {qy.batch}, "
        f"{qy.new_tokens} new tokens ({qy.prompt_tokens}-token prompt)"
        + (f"; {_bnb_text(r.bitsandbytes)}" if r.bitsandbytes else "")
        + _stack_text(r),
        f"  energy  {v['energy']:<30s} J/query {p} {_fmt(qn.j_per_query)} vs {nat} {_fmt(nt.j_per_query)}"
        f"  ratio {_fmt(ra.energy, 'x')}",
        f"  time    {v['time']:<30s} tok/s   {p} {_fmt(qn.tok_per_s)} vs {nat} {_fmt(nt.tok_per_s)}"
        f"  ratio {_fmt(ra.speed, 'x')}",
        f"  SI      {v['si']:<30s} SI {p} {sx.si:.3f} {si_band} vs {nat} 1.000"
        f"  (T {sx.t_si:.3f}, E {sx.e_si:.3f}, S {sx.s_si:.3f})",
        f"  COR {_fmt(ra.cor)} (eq. 9)   HLI energy ratio {ra.energy_hli:.3g}x (TDP x latency, the paper's method)",
        f"  B*  {_threshold_text(r.b_star.to_dict(), 'batch')}   paper eq. 18: {r.paper.b_star_eq18:.3g} (eq. 19 is trapped above it)",
        f"  N*  {_threshold_text(r.n_star.to_dict(), 'params')}",
        f"  step    {p} {_step_text(qn)}; {nat} {_step_text(nt)}",
        f"  power   {p} {_power_text(qn)}",
        f"          {nat} {_power_text(nt)}",
        f"  memory  {p} {qn.peak_memory_gib:.1f} GiB, {nat} {nt.peak_memory_gib:.1f} GiB",
    ]
    hinge = r.verdict.awake_sensitivity
    if hinge and hinge["flips"]:
        lo, hi = hinge["range"]
        lines.append(f"  NOTE    the energy verdict hinges on the awake-power prior: it flips within "
                     f"its 68% range ({lo:.0f}-{hi:.0f} W; energy ratio "
                     f"{hinge['energy_ratio'][0]:.2f}x-{hinge['energy_ratio'][2]:.2f}x); "
                     "meter this GPU idling with a context open (`qtsim calibrate`) to settle it")
    if r.budget:
        lines.append(_budget_text(r.budget, p, nat))
    lines.append(f"  trust: T_SI {_trust_text(sx.trust)}")
    pr = r.profile
    src = ("calibrated" if pr.calibrated else f"{pr.source}-derived with {pr.priors} priors "
           "(wide bands; run `qtsim calibrate` on this GPU to narrow them)")
    origin = "" if (pr.origin or "shipped") == "shipped" else f"{pr.origin}; "
    lines.append(f"  profile: {pr.name} ({origin}{src}; {pr.device}, {pr.date})")
    lines += [f"  profile note: {n}" for n in pr.notes or []]
    lines.append(f"  host: {r.host.name}")
    if r.serving:
        lines.append(f"  {r.serving.statement}")
    me = pr.model_error
    lines.append(f"  SI pillars uncapped (paper: [0, 1]); capped SI {sx.si_capped:.3f}; "
                 f"eq. 5 log form S_SI {sx.s_si_log['kgCO2e']:.3f} (kgCO2e), "
                 f"{sx.s_si_log['J']:.3f} (J): unit-dependent")
    lines.append(f"  [a, b] = 68% band: the profile's uncertainty plus the model's own error "
                 f"(+-{100 * me.q68.get('latency_s', 0):.0f}% latency, {me.source}); "
                 "every figure is a prediction, not a measurement")
    return "\n".join(lines)


def _stack_text(r: TrapReport) -> str:
    """'; bitsandbytes 0.50.2 (assumed)': the release the verdict depends on, beside it."""
    sv = r.serving
    if sv is None or not sv.bitsandbytes_version:
        return ""
    why = str(sv.bitsandbytes_version_source or "").split(":")[0]
    return f"; bitsandbytes {sv.bitsandbytes_version}" + (f" ({why})" if why else "")


def _bnb_text(cfg: dict) -> str:
    """The BitsAndBytesConfig settings that apply, as the user would write them."""
    keys = ("llm_int8_threshold", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype")
    return ", ".join(f"{k}={cfg[k]}" for k in keys if cfg.get(k) is not None)


def _budget_text(b: Budget, p: str, nat: str) -> str:
    def one(f):
        out = f"{f['kwh_per_million_queries']:.3g} kWh/M queries"
        if f["gco2e_per_query"] is not None:
            out += f", {f['gco2e_per_query']:.3g} gCO2e/query"
        if f["usd_per_million_tokens"] is not None:
            out += f", ${f['usd_per_million_tokens']:.3g}/M tokens"
        return out

    a = b.assumptions
    text = BudgetAssumptions(a["pue"], a["grid_gco2_per_kwh"], a["usd_per_hour"],
                             a.get("energy_scope", GPU_BOARD)).describe()
    return f"  budget  {p} {one(b.quantized)} vs {nat} {one(b.native)}  ({text})"


def _power_text(side: Side) -> str:
    """'62 W average [55, 70]: busy 31% of the step at ~120 W, waiting for the host 69% at 43 W
    (awake)' for one configuration, with the power cap's slow-down where it binds."""
    st = side.power_states
    text = (f"{_fmt(side.avg_power_w, ' W')} average: busy {100 * st.busy_frac:.0f}% of the "
            f"step at ~{st.busy_w:.0f} W")
    if st.awake_frac >= 0.005:
        text += f", waiting for the host {100 * st.awake_frac:.0f}% at {st.awake_w:.0f} W (awake)"
    if st.cap_stretch > 1.005:
        text += f"; power-capped: clocks down, device time x{st.cap_stretch:.2f}"
    return text


def _step_text(side: Side) -> str:
    """'35.1 ms, host-bound (host 34.0 ms, device 20.8 ms)' for one decode step."""
    return (f"{side.step_s.value * 1e3:.3g} ms, {side.binding} "
            f"(host {side.host_s * 1e3:.3g} ms, device {side.device_s * 1e3:.3g} ms)")


def _threshold_text(t: dict, unit: str) -> str:
    v = t["value"]
    lo, hi = t["band"]

    def fmt(x):
        if x == "inf":
            return "above range"
        if x is not None and x == 0:
            return "below range"
        return f"{x:.3g}" if unit == "batch" else f"{x / 1e9:.3g}B"

    extra = ""
    dr = t.get("draws")
    if dr:
        extra = f"; {100 * dr['p_no_crossing']:.0f}% of draws never cross"
        if dr.get("p_multiple_crossings", 0) >= 0.005:
            extra += f", {100 * dr['p_multiple_crossings']:.0f}% cross more than once"
    if len(t.get("crossings", [])) > 1:
        extra += "; crossings at " + ", ".join(f"{fmt(c['value'])} ({c['side']})" for c in t["crossings"])
    mem = t.get("memory")
    if mem and "fits_quantized" in mem:
        extra += (f"; a model that size {'fits' if mem['fits_quantized'] else 'does NOT fit'} in "
                  f"{mem['device_gib']:.0f} GiB at this precision (needs {mem['quantized_gib']:.0f} GiB; "
                  f"largest that fits {fmt(mem['largest_fitting_quantized_params'])})")
    b = f" {_band(lo, hi, fmt)}" if lo is not None and hi is not None else ""
    if t["kind"] in ("crossing", "reverse"):
        side = "trapped below" if t["kind"] == "crossing" else "trapped above"
        if "kernel switch" in t["reason"]:
            side += ": the verdict flips where bitsandbytes leaves its batch-1 GEMV kernel"
        elif "fused 4-bit GEMM ends" in t["reason"]:
            side += (": the verdict flips where bitsandbytes' fused 4-bit GEMM ends and "
                     "dequantisation starts")
        return f"{fmt(v)}{b} ({side}{extra})"
    return f"none: {t['reason']}{b}{extra}"




def csv_row(r: TrapReport) -> dict:
    """The report as one flat row keyed by :data:`CSV_COLUMNS`."""
    qy, v, qn, nt, ra, sx = r.query, r.verdict, r.quantized, r.native, r.ratios, r.si
    row = {"gpu": qy.gpu, "model": qy.model, "precision": qy.precision,
           "native": qy.native, "batch": qy.batch, "new_tokens": qy.new_tokens,
           "prompt_tokens": qy.prompt_tokens, "model_params": qy.model_params,
           "fits": int(qn.fits), "native_fits": int(nt.fits),
           "peak_memory_gib": qn.peak_memory_gib, "native_peak_memory_gib": nt.peak_memory_gib,
           "device_memory_gib": r.profile.memory_gib,
           "verdict_energy": v.energy, "verdict_time": v.time, "verdict_si": v.si,
           "p_trapped_energy": v.p_trapped_energy, "p_trapped_time": v.p_trapped_time,
           "p_trapped_si": v.p_trapped_si, "energy_ratio_hli": ra.energy_hli,
           "si": sx.si, "si_low": sx.si_band[0], "si_high": sx.si_band[1],
           "t_si": sx.t_si, "e_si": sx.e_si, "s_si": sx.s_si,
           "trust_status": sx.trust.get("status", ""),
           "b_star_eq18": r.paper.b_star_eq18,
           "profile": r.profile.name, "profile_source": r.profile.source,
           "profile_priors": r.profile.priors,
           "bitsandbytes_version": r.serving.bitsandbytes_version if r.serving else ""}
    for prefix, side in (("", qn), ("native_", nt)):
        for k in ("j_per_query", "tok_per_s"):
            st = getattr(side, k)
            row[f"{prefix}{k}"], row[f"{prefix}{k}_low"], row[f"{prefix}{k}_high"] = \
                st.value, st.low, st.high
    for st, name in ((ra.energy, "energy_ratio"), (ra.speed, "speed_ratio"), (ra.cor, "cor")):
        row[name], row[f"{name}_low"], row[f"{name}_high"] = st.value, st.low, st.high
    for k in ("b_star", "n_star"):
        t = getattr(r, k).to_dict()
        row[k], (row[f"{k}_low"], row[f"{k}_high"]), row[f"{k}_kind"] = t["value"], t["band"], t["kind"]
    _blank_hypothetical(row, qn.fits, nt.fits)
    return {c: _cell(row.get(c)) for c in CSV_COLUMNS}


#: CSV columns of the quantized run's own figures, of the native run's, and of their comparison
_RUN = ("j_per_query", "tok_per_s")
_COMPARISON = ("p_trapped_energy", "p_trapped_time", "p_trapped_si", "energy_ratio",
               "energy_ratio_hli", "speed_ratio", "cor", "si", "si_low", "si_high", "e_si", "s_si")


def _blank_hypothetical(row: dict, fits: bool, native_fits: bool) -> None:
    """Empty the cells of what cannot run, so nothing hypothetical sits in a column of real
    figures: the quantized run's own where it does not fit, the native run's where it does not,
    and every comparison (ratios, shares of draws, SI) where either does not (the verdict
    columns say why: "does not fit", "only option")."""
    def blank(names):
        for n in names:
            for c in (n, f"{n}_low", f"{n}_high"):
                if c in row:
                    row[c] = None

    if not fits:
        blank(_RUN)
    if not native_fits:
        blank(f"native_{n}" for n in _RUN)
        if fits:
            row.update(verdict_energy="only option (native does not fit)",
                       verdict_time="only option (native does not fit)",
                       verdict_si="only option (native does not fit)")
    if not (fits and native_fits):
        blank(_COMPARISON)


def csv_text(report: TrapReport) -> str:
    """One row per configuration under a fixed header (:data:`CSV_COLUMNS`)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerow(csv_row(report))
    return buf.getvalue().rstrip("\n")


def _cell(x):
    if x is None:
        return ""
    if isinstance(x, float):
        if np.isnan(x):
            return ""
        return f"{x:.6g}"
    return x
