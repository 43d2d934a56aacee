"""Spec-derived hardware profiles: datasheet facts plus priors for what no datasheet gives.

Every constant a datasheet cannot give is a *prior*: a value with a wide standard error and,
beside it, where it came from. ``qtsim calibrate`` replaces priors with measurements. Sources of
the priors (``data/reference/peer_measurements.md``):

- the joint fit of the timeline and power model to public rows
  (``data/reference/public_fit.toml``, :mod:`qtsim.calibration.fit.public`): the bitsandbytes
  maintainers' decode latencies on an H100 SXM and an RTX 4090, and NVML-metered HF
  ``generate`` runs on RTX 4090 / 4090D, A100 and T4. It gives the bandwidth efficiency, the device time per kernel, each kernel path's device work per
  weight, and the power states of a GPU class as forms of its datasheet facts
  (:func:`power_priors`, :mod:`qtsim.model.power`);
- NVIDIA aiconfigurator: effective bandwidth 0.8 x datasheet (the fit's prior);
- Splitwise-sim: H100 75 W idle of 700 W TDP (the deep-idle prior).

Regenerate the shipped files with
``python -m qtsim.calibration.fit.spec_profiles hardware_profiles/`` (refit the public rows first
with ``python -m qtsim.calibration.fit.public_refit``, which also does this).
"""

from __future__ import annotations

import copy
import csv
import functools
import tomllib
from datetime import date
from importlib import resources

import numpy as np

from qtsim import __version__
from qtsim.model import power
from qtsim.model.architecture import load_architecture
from qtsim.model.physical import DEQ_BYTES_PER_WEIGHT
from qtsim.model.precision import hardware_dtypes
from qtsim.profiles import gpus
from qtsim.profiles.constants import paper_constants_table
from qtsim.profiles.profile import HardwareProfile
from qtsim.profiles.schema import Param

BNB_TABLE = "bitsandbytes maintainers' H100 HF-generate table (data/reference/peer_measurements.md)"
HBM = ("hopper", "ampere", "blackwell-dc")
#: GPUs with GDDR memory (the rest HBM): a GDDR byte costs about twice the energy
GDDR_PREFIXES = ("l4", "rtx", "t4", "l40")
GDDR_NAMES = ("a10", "a10g")
REFERENCE_MODEL = "mistral-7b"  # the paper's main model: [constants] are derived for it
IDLE_FRACTION = 0.1  # idle power / TDP prior (Splitwise: 75 W of 700 W on H100)


def spec_rows() -> list[dict]:
    text = (resources.files("qtsim.data.reference") / "gpu_specs.csv").read_text()
    return list(csv.DictReader(text.splitlines()))


def _prior(value, rel, unit, basis, source="prior"):
    value = float(f"{float(value):.6g}")
    return Param(value, float(f"{abs(value) * rel:.6g}"), unit, source, basis)


PUBLIC_FIT = "public_fit.toml"  # data/reference: the joint device/host fit to published rows


def public_fit() -> dict:
    """The shipped joint fit to public rows (:mod:`qtsim.calibration.fit.public`), written by
    ``python -m qtsim.calibration.fit.public_refit``: fitted device factors, host constants and power
    coefficients with stderr, the campaigns' spreads, the model error and held-out scores."""
    return copy.deepcopy(_public_fit())


@functools.cache
def _public_fit() -> dict:
    return tomllib.loads((resources.files("qtsim.data.reference") / PUBLIC_FIT).read_text())


def spec_profile(row: dict, fit: dict | None = None) -> HardwareProfile:
    """A device-only profile from one row of ``gpu_specs.csv`` with documented priors.

    Host constants are not here: they describe the host and its software stack, and come from a
    host part (:mod:`qtsim.profiles.hosts`) at prediction time. The device priors that no datasheet gives
    (effective bandwidth fraction, device time per kernel) come from the joint fit to the
    published rows (``data/reference/public_fit.toml``), with their spread.
    """
    fit = fit or public_fit()
    name = row["gpu"]
    prov = {
        "source": "spec", "date": date.today().isoformat(), "device": f"{name} (datasheet)",
        "driver": "", "qtsim_version": __version__, "n_measurements": 0, "raw_data": "",
        "raw_sha256": "",
        "notes": "Device part only: datasheet facts and priors with wide stderr (host constants come from a host part, `--host`). Run `qtsim calibrate` on this GPU to replace them.",
    }
    prof = HardwareProfile(_spec_hardware(row), prov, _device_priors(row, fit))
    prof.fit = {"public_rows": {k: v for k, v in fit["fit"].items() if not isinstance(v, dict)},
                "model_error": fit["model_error"]}
    prof.constants = spec_constants(prof)
    return prof


def spec_constants(prof: HardwareProfile, reference_model: str = REFERENCE_MODEL) -> dict:
    """The ``[constants]`` table of a spec-derived profile: the paper's alpha, gamma, phi and
    eq. 18 B* for ``reference_model`` with the default host part."""
    table = paper_constants_table(prof, load_architecture(reference_model).counts(),
                                  reference_model)
    table["host"] = "derived with the default host part (qtsim.profiles.hosts.DEFAULT_HOST)"
    return table


def _spec_hardware(row: dict) -> dict:
    """The ``[hardware]`` table of a ``gpu_specs.csv`` row: datasheet facts, aliases, idle prior."""
    name = row["gpu"]
    tdp = float(row["tdp_w"])
    native_formats = hardware_dtypes({"architecture": row["architecture"], "native_formats": [
        "fp16", "bf16", "int8", *(f for f in row["native_low_precision"].split() if f != "int8")]})
    return {
        "name": name, "aliases": gpus.aliases(name), "vendor": "nvidia",
        "architecture": row["architecture"], "device_type": "cuda",
        "memory_gib": round(float(row["memory_gb"]) * 1e9 / 2**30, 2),
        "mem_bw_gbs": float(row["mem_bw_gbs"]), "fp16_tflops": float(row["fp16_dense_tflops"]),
        "int8_tops": float(row["int8_dense_tops"]), "tdp_w": tdp,
        "idle_w": round(IDLE_FRACTION * tdp, 1), "native_formats": native_formats,
        "memory_type": "hbm" if _is_hbm(row) else "gddr",
        "segment": row.get("segment") or "datacenter",
        "native_dtype": "fp16", "runtime_overhead_gib": 0.6,
        "sources": [row["source"]],
    }


def spec_row(hardware: dict) -> dict:
    """The ``gpu_specs.csv`` row a spec profile's ``[hardware]`` table stands for: the inverse of
    :func:`_spec_hardware`, so a profile's datasheet facts can be re-derived into its constants
    (:func:`derived_device_constants`)."""
    native = [f for f in hardware.get("native_formats", []) if f not in ("fp16", "bf16", "int8")]
    return {
        "gpu": str(hardware.get("name", "")), "architecture": str(hardware.get("architecture", "")),
        "memory_gb": float(hardware["memory_gib"]) * 2**30 / 1e9,
        "mem_bw_gbs": float(hardware["mem_bw_gbs"]),
        "fp16_dense_tflops": float(hardware["fp16_tflops"]),
        "int8_dense_tops": float(hardware["int8_tops"]), "tdp_w": float(hardware["tdp_w"]),
        "native_low_precision": " ".join(["int8", *native]),
        "memory_type": str(hardware.get("memory_type") or ""), "source": "",
        "segment": str(hardware.get("segment") or ""),
    }


#: ``[hardware]`` keys the spec-derived ``[physical]`` constants are computed from
DERIVED_FROM = ("mem_bw_gbs", "fp16_tflops", "int8_tops", "tdp_w", "memory_type", "segment")


def spec_prior_names() -> tuple[str, ...]:
    """Names of the constants a spec-derived profile holds (those of :func:`_device_priors`):
    the schema knows them as constants of the model."""
    row = {"gpu": "x", "architecture": "", "memory_gb": 16, "mem_bw_gbs": 1000,
           "fp16_dense_tflops": 100, "int8_dense_tops": 200, "tdp_w": 300,
           "native_low_precision": "int8", "memory_type": "hbm"}
    return tuple(_device_priors(row, public_fit()))


def derived_device_constants(hardware: dict) -> dict[str, Param]:
    """The ``[physical]`` device constants a spec-derived profile with this ``[hardware]`` table
    holds (:func:`_device_priors` on :func:`spec_row`): what its datasheet facts imply."""
    return _device_priors(spec_row(hardware), public_fit())


def _is_hbm(row: dict) -> bool:
    """HBM or GDDR: the row's ``memory_type`` (hbm | gddr) where given, else by name."""
    mem_type = str(row.get("memory_type") or "").lower()
    name = row["gpu"]
    return mem_type == "hbm" if mem_type else not (name.startswith(GDDR_PREFIXES) or name in GDDR_NAMES)


def _device_priors(row: dict, fit: dict) -> dict[str, Param]:
    """The ``[physical]`` device constants of a spec row: datasheet-derived values and priors
    from the joint fit to public rows (``public_fit.toml``): bandwidth efficiency, device time
    per kernel and per-weight device work of each kernel path, and the power states of the
    row's GPU class (:func:`power_priors`)."""
    dev = fit["device"]
    bw = float(row["mem_bw_gbs"])
    eta, eta_se = dev["eta_bw"]["value"], dev["eta_bw"]["stderr"]
    t_kernel = dev["t_kernel_s"]["value"]
    src = f"joint fit to public rows ({PUBLIC_FIT})"
    p = {
        "mem_bw_gbs": _prior(eta * bw, max(eta_se / eta, 0.08), "GB/s", f"{eta:.3g} x datasheet bandwidth ({src}; aiconfigurator uses 0.8)"),
        "t_kernel_s": Param(float(f"{t_kernel:.6g}"), float(f"{max(dev['t_kernel_s']['stderr'], 0.5 * t_kernel):.4g}"), "s", "prior", f"device time per kernel launched ({src})"),
        **power_priors(row, fit),
    }
    p.update(_path_priors(float(row["fp16_dense_tflops"]), float(row["int8_dense_tops"]),
                          eta * bw * 1e9, t_kernel, dev))
    p["t_weight_fp16_s"] = Param(0.0, 0.0, "s/weight", "fixed", "reference path: bytes/BW only, by definition")
    return p


def power_priors(row: dict, fit: dict, n_draws: int = 2000) -> dict[str, Param]:
    """The power states of a GPU from its datasheet facts (TDP, bandwidth, dense FP16 rate,
    market segment) through the class forms of :mod:`qtsim.model.power`, with the coefficients
    and their covariance from the joint fit to metered public runs (``public_fit.toml``
    ``[power]``). stderr: the spread of each state over draws of the coefficients, floored at
    the between-campaign meter spread. Deep idle is a stated prior (not fitted: no public row
    sees it), the board limit the datasheet TDP."""
    pw = fit["power"]
    names = list(pw["names"])
    mean = np.array([pw[k]["value"] for k in names])
    cov = np.asarray(pw["covariance"], float)
    rng = np.random.default_rng(0)
    x = rng.multivariate_normal(mean, cov, n_draws) if cov.size else mean[None, :]
    c = {k: x[:, i] for i, k in enumerate(names)}
    c0 = {k: pw[k]["value"] for k in names}
    tdp, bw, tflops = float(row["tdp_w"]), float(row["mem_bw_gbs"]), float(row["fp16_dense_tflops"])
    seg = row.get("segment") or "datacenter"
    flop_share, flop_share_se = pw["flop_share"]["value"], pw["flop_share"]["stderr"]

    def states(k):
        awake = power.awake_power_w(tdp, seg, k["awake_base_w"], k["awake_per_tdp"], k["awake_desktop"])
        return awake, power.byte_energy_j(tdp, bw, k["byte_share"]), power.flop_energy_j(tdp, awake, tflops, flop_share)

    a0, b0, f0 = (float(np.ravel(v)[0]) for v in states(c0))
    ad, bd, _ = states(c)
    floor = fit["host_spread"]["meter_sd_log"]
    src = f"joint fit of the power states to metered public runs ({PUBLIC_FIT}: {fit['fit']['n_obs']} observations, {fit['fit']['n_campaigns']} campaigns)"
    seg_txt = f", x {c0['awake_desktop']:.3g} on a {seg} board (its driver drops clocks between kernels)" if seg in power.LOW_CLOCK_SEGMENTS else ""
    idle = IDLE_FRACTION * tdp
    return {
        "p_awake_w": Param(float(f"{a0:.4g}"), float(f"{max(np.std(ad), floor * a0):.3g}"), "W", "prior",
                           f"awake (context open, clocks up, waiting for the host): {c0['awake_base_w']:.3g} W + {c0['awake_per_tdp']:.3g} x TDP{seg_txt} ({src})"),
        "p_idle_w": _prior(min(idle, a0), 0.5, "W", "deep idle, no context: 0.1 x TDP (Splitwise-sim: 75 W of 700 W on H100), at most the awake power; not spent while decoding"),
        "e_byte_j": Param(float(f"{b0:.4g}"), float(f"{max(np.std(bd), floor * b0):.3g}"), "J/byte", "prior",
                          f"streaming at the datasheet bandwidth dissipates {c0['byte_share']:.3g} x TDP ({src})"),
        "e_flop_j": Param(float(f"{f0:.4g}"), float(f"{f0 * flop_share_se / flop_share:.3g}"), "J/FLOP", "prior",
                          f"a dense 16-bit GEMM at the datasheet rate draws {flop_share:.2g} of the headroom between awake power and TDP (stated prior: batch-1 public rows cannot see it)"),
        "p_cap_w": Param(tdp, 0.0, "W", "spec", "board power limit = TDP (datasheet); above it the device lowers its clocks (power capping stretches device time)"),
    }


def _path_priors(tflops: float, tops: float, bw_eff: float, t_kernel: float,
                 dev: dict) -> dict[str, Param]:
    """Per-path priors: t_call (0, stderr one kernel), t_weight (device work per weight beyond
    streaming it: the fitted ``x_<path>`` bytes at the effective bandwidth, each bounded below by
    what the path must move) and t_tokweight (2 FLOPs per weight at half the dense throughput),
    ``bw_eff`` in bytes/s."""
    t_fp16 = 2.0 / (0.5 * tflops * 1e12)
    t_int8 = 2.0 / (0.5 * tops * 1e12)
    kernel_basis = "device per-call cost beyond its kernels x t_kernel_s: 0, stderr one kernel"
    x_basis = {
        "nf4_b1": "bitsandbytes' batch-1 4-bit GEMV: device work beyond streaming the 4-bit weights",
        "nf4_bn": f"dequantise-then-GEMM (bitsandbytes < 0.50 at batch >= 2): at least {DEQ_BYTES_PER_WEIGHT:g} bytes per weight (a 16-bit copy written and read back)",
        "int8": "LLM.int8(): device work per weight beyond streaming the int8 weights",
    }
    p = {}
    for path, tok, x in (("fp16", t_fp16, None), ("bf16", t_fp16, None), ("int8", t_int8, "x_int8"),
                         ("int8_t0", t_int8, "x_int8"), ("nf4_b1", t_fp16, "x_nf4_b1"),
                         ("nf4_bn", t_fp16, "x_deq")):
        p[f"t_call_{path}_s"] = Param(0.0, float(f"{t_kernel:.6g}"), "s", "prior", kernel_basis)
        if x is None:
            p[f"t_weight_{path}_s"] = Param(0.0, float(f"{0.25 / bw_eff:.6g}"), "s/weight", "prior", "no per-step casting on this path; stderr a quarter byte per weight of bandwidth time")
        else:
            v, se = dev[x]["value"], max(dev[x]["stderr"], 0.25)
            v = v if v >= 1e-3 else 0.0  # at its lower bound: the path moves no extra bytes
            p[f"t_weight_{path}_s"] = Param(float(f"{v / bw_eff:.6g}"), float(f"{se / bw_eff:.4g}"), "s/weight", "prior",
                                            f"{x_basis[path.replace('_t0', '')]}: {v:.3g} bytes/weight at effective bandwidth (joint fit to public rows, {PUBLIC_FIT})")
        p[f"t_tokweight_{path}_s"] = _prior(tok, 0.5, "s/(weight*token)", "2 FLOPs per weight at half the datasheet dense throughput" + (" (int8)" if "int8" in path else ""))
    return p
