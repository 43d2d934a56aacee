"""Spec-derived hardware profiles: datasheet facts plus priors for what no datasheet gives.

Every constant a datasheet cannot give is a *prior*: a value with a wide standard error and,
beside it, where it came from. ``qtsim calibrate`` replaces priors with measurements. Sources of
the priors (``data/reference/peer_measurements.md``):

- bitsandbytes maintainers' H100 table (HF generate, Llama-3.1-8B, 224 quantizable linear calls
  per token): BF16 24.4 ms/token at batch 1, NF4 33.2 ms, INT8 (threshold 0) 52.1 ms, LLM.int8()
  (threshold 6) 82.0 ms; at batch 8 BF16 25.5 ms/step and NF4 47.6 ms/step. Per-call deltas:
  NF4 +39 us, INT8-t0 +124 us, LLM.int8() +257 us at batch 1; NF4 +98 us at batch 8.
- NVIDIA aiconfigurator: effective bandwidth 0.8 x datasheet.
- Splitwise-sim: H100 75 W idle, about 380 W in decode (of 700 W TDP).

Regenerate the shipped files with ``python -m qtsim.profiles.priors hardware_profiles/``.
"""

from __future__ import annotations

import csv
import functools
import sys
from datetime import date
from importlib import resources
from pathlib import Path

import numpy as np

from qtsim import __version__
from qtsim.model.architecture import load_architecture
from qtsim.model.precision import hardware_dtypes
from qtsim.profiles.hardware import HardwareProfile, Param, write_profile
from qtsim.simulate.simulator import paper_constants_table

BNB_TABLE = "bitsandbytes maintainers' H100 HF-generate table (data/reference/peer_measurements.md)"
HBM = ("hopper", "ampere", "blackwell-dc")
ALIASES = {
    "l4": ["nvidia-l4"], "a100-40gb": ["a100-40", "a100-sxm4-40gb"],
    "a100-80gb": ["a100", "a100-80", "a100-sxm4-80gb"], "h100-sxm": ["h100", "h100-80gb", "h100-sxm5"],
    "h100-pcie": ["h100pcie"], "h200": ["h200-sxm", "h200-141gb"],
    "rtx-pro-6000-blackwell": ["rtx-pro-6000", "rtx6000-pro", "rtx-6000-pro"], "b200": ["b200-sxm"],
    "t4": ["tesla-t4", "nvidia-t4"], "a10g": ["nvidia-a10g"], "a10": ["nvidia-a10"],
    "l40s": ["nvidia-l40s"], "rtx-4090": ["4090", "rtx4090", "geforce-rtx-4090"],
    "rtx-6000-ada": ["rtx6000-ada", "rtx-6000-ada-generation"],
}
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
    """The shipped joint fit to the bitsandbytes maintainers' rows (:mod:`qtsim.calibration.public`),
    written by ``python -m qtsim.profiles.priors``: fitted device factors and host constants with stderr."""
    import copy

    return copy.deepcopy(_public_fit())


@functools.cache
def _public_fit() -> dict:
    import tomllib

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
    prof.fit = {"public_rows": {k: v for k, v in fit["fit"].items() if not isinstance(v, dict)}}
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
        "name": name, "aliases": ALIASES.get(name, []), "vendor": "nvidia",
        "architecture": row["architecture"], "device_type": "cuda",
        "memory_gib": round(float(row["memory_gb"]) * 1e9 / 2**30, 2),
        "mem_bw_gbs": float(row["mem_bw_gbs"]), "fp16_tflops": float(row["fp16_dense_tflops"]),
        "int8_tops": float(row["int8_dense_tops"]), "tdp_w": tdp,
        "idle_w": round(IDLE_FRACTION * tdp, 1), "native_formats": native_formats,
        "native_dtype": "fp16", "runtime_overhead_gib": 0.6,
        "memory_type": "hbm" if _is_hbm(row) else "gddr",
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
    """The ``[physical]`` device constants of a spec row: datasheet-derived values and priors."""
    dev = fit["device"]
    bw = float(row["mem_bw_gbs"])
    tflops = float(row["fp16_dense_tflops"])
    tdp = float(row["tdp_w"])
    hbm = _is_hbm(row)
    eta, eta_se = dev["eta_bw"]["value"], dev["eta_bw"]["stderr"]
    t_kernel = dev["t_kernel_s"]["value"]
    src = f"joint fit to the published rows ({PUBLIC_FIT}, {fit['provenance']['table']})"
    p = {
        "mem_bw_gbs": _prior(eta * bw, max(eta_se / eta, 0.16), "GB/s", f"{eta:.3g} x datasheet bandwidth ({src}; aiconfigurator uses 0.8)"),
        "t_kernel_s": _prior(t_kernel, 0.5, "s", f"device time per kernel launched ({src})"),
        "p_static_w": _prior(0.3 * tdp, 0.5, "W", "0.3 x TDP while the device works at small batch (Splitwise: 380 W decode of 700 W on H100)"),
        "p_idle_w": _prior(IDLE_FRACTION * tdp, 0.5, "W", "idle power while the device waits for the host (Splitwise: 75 W of 700 W on H100)"),
        "e_byte_j": _prior(6e-11 if hbm else 1.2e-10, 0.5, "J/byte", "HBM about 4 pJ/bit plus on-chip movement" if hbm else "GDDR about 7.5 pJ/bit plus on-chip movement"),
        "e_flop_j": _prior(0.5 * tdp / (tflops * 1e12), 0.5, "J/FLOP", "half the TDP spread over dense 16-bit tensor throughput"),
    }
    p.update(_path_priors(tflops, float(row["int8_dense_tops"]), eta * bw * 1e9, t_kernel))
    p["t_weight_fp16_s"] = Param(0.0, 0.0, "s/weight", "fixed", "reference path: bytes/BW only, by definition")
    return p


def _path_priors(tflops: float, tops: float, bw_eff: float, t_kernel: float) -> dict[str, Param]:
    """Per-path priors: t_call (0, stderr one kernel), t_weight (dequantisation) and
    t_tokweight (2 FLOPs per weight at half the dense throughput), ``bw_eff`` in bytes/s."""
    t_fp16 = 2.0 / (0.5 * tflops * 1e12)
    t_int8 = 2.0 / (0.5 * tops * 1e12)
    deq = float(f"{4.0 / bw_eff:.6g}")  # write an fp16 copy and read it back: 4 bytes per weight
    kernel_basis = "device per-call cost beyond its kernels x t_kernel_s: 0, stderr one kernel"
    p = {}
    for path, tok, w in (("fp16", t_fp16, 0.0), ("bf16", t_fp16, 0.0), ("int8", t_int8, 0.0),
                         ("int8_t0", t_int8, 0.0), ("nf4_b1", t_fp16, 0.0), ("nf4_bn", t_fp16, deq)):
        p[f"t_call_{path}_s"] = Param(0.0, float(f"{t_kernel:.6g}"), "s", "prior", kernel_basis)
        p[f"t_weight_{path}_s"] = (
            _prior(w, 0.5, "s/weight", "dequantisation: a 16-bit copy written and read back, 4 bytes per weight at effective bandwidth")
            if w else Param(0.0, float(f"{0.25 / bw_eff:.6g}"), "s/weight", "prior", "no per-step casting on this path; stderr a quarter byte per weight of bandwidth time"))
        p[f"t_tokweight_{path}_s"] = _prior(tok, 0.5, "s/(weight*token)", "2 FLOPs per weight at half the datasheet dense throughput" + (" (int8)" if "int8" in path else ""))
    return p


def write_spec_profiles(outdir: str | Path) -> list[Path]:
    fit = public_fit()
    return [write_profile(spec_profile(r, fit), Path(outdir) / f"{r['gpu']}.toml") for r in spec_rows()]


PUBLIC_TABLE = "bitsandbytes maintainers' HF-generate decode table (data/reference/bnb_maintainers_decode.csv)"
#: the software stack of the published table's rows
PUBLIC_STACK = {"python": "3.x (not stated)", "torch": "2.5.1", "transformers": "4.46.3",
                "bitsandbytes": "0.45.0.dev"}


def refit_public(outdir: str | Path) -> list[Path]:
    """Fit the published rows (all of them), write ``data/reference/public_fit.toml`` and the
    host parts ``hf-eager-server`` (the H100 server's host) and ``hf-eager-desktop`` (the RTX
    4090's) under ``OUTDIR/hosts``. The default server host gets a spread that covers the
    desktop host, so bands widen where the host is unknown."""
    from qtsim.calibration import public
    from qtsim.profiles.hardware import atomic_write_text, dumps_toml
    from qtsim.profiles.hosts import write_host

    rows = public.read_rows()
    f = public.fit(rows)
    ref = resources.files("qtsim.data.reference") / PUBLIC_FIT
    written = [atomic_write_text(dumps_toml(_public_fit_doc(f, rows)), Path(str(ref)))]
    _public_fit.cache_clear()  # the spec profiles written next must see the new fit
    speed = f.values["host_speedup"]
    for name, scale, spread, desc in (
            ("hf-eager-server", 1.0, (speed - 1.0) / speed,
             "HF transformers generate, eager, on a datacentre GPU server (the H100 SXM host of the "
             "published table); the default: its stderr spans the faster desktop host"),
            ("hf-eager-desktop", speed, 0.0,
             "HF transformers generate, eager, on a desktop (the RTX 4090 host of the published "
             f"table: {speed:.2f}x faster host work than the server)")):
        part = _public_host(f, len(rows), name, scale, spread, desc)
        written.append(write_host(part, Path(outdir) / "hosts" / f"{name}.toml"))
    return written


def _public_fit_doc(f, rows: list[dict]) -> dict:
    """``public_fit.toml``: the fitted device factors and host constants with stderr, and the
    fit's statistics and relative residuals per published row."""
    obs = np.array([r["step_s"] for r in rows])
    resid = (f.fit_pred - obs) / obs

    def rounded(keys):
        return {k: {"value": float(f"{f.values[k]:.6g}"), "stderr": float(f"{f.stderr[k]:.4g}")}
                for k in keys}

    return {
        "provenance": {"table": PUBLIC_TABLE, "date": date.today().isoformat(), "qtsim_version": __version__,
                       "model": "qtsim.model.physical timelines (overlap on) via qtsim.calibration.public"},
        "device": rounded(("eta_bw", "t_kernel_s")),
        "host": rounded(k for k in f.values if k.startswith("h_") or k == "host_speedup"),
        "fit": {"n_rows": len(rows), "aic": f.aic, "bic": f.bic,
                "mape_pct": float(100 * np.mean(np.abs(resid))),
                "max_ape_pct": float(100 * np.max(np.abs(resid))),
                "residuals": {f"{r['gpu']}/{r['model']}/{r['path']}/b{int(r['batch'])}": float(f"{x:.4g}")
                              for r, x in zip(rows, resid, strict=True)}},
    }


def _public_host(f, n_rows: int, name: str, scale: float, spread: float, desc: str):
    """A host part from the public fit: its host constants / ``scale`` (the host speed-up), the
    relative stderr widened by ``spread`` (so the default host covers the faster one)."""
    from qtsim.calibration import public
    from qtsim.profiles.hosts import HostPart

    speed, speed_se = f.values["host_speedup"], f.stderr["host_speedup"]
    basis = f"joint fit to the {PUBLIC_TABLE}" + (f", / host speed-up {speed:.3g}" if scale != 1.0 else "")
    phys = {}
    for k in ("h_op_s", "h_step_s") + tuple(f"h_call_{p}_s" for p in public.QUANT_PATHS):
        v = f.values[k] / scale
        rel = np.hypot(f.stderr[k] / max(f.values[k], 1e-30), speed_se / speed if scale != 1.0 else 0.0)
        if f.values[k] < 1e-7:  # pinned at its bound: the traced operations explain it
            phys[k] = Param(0.0, 0.0, "s", "published", basis + "; pinned at 0 by the fit")
            continue
        se = v * float(np.hypot(rel, spread))
        phys[k] = Param(float(f"{v:.6g}"), float(f"{se:.4g}"), "s", "published", basis)
    phys["h_fused4bit_max_batch"] = Param(public.FUSED_4BIT_MAX_BATCH, 0.0, "sequences", "published",
                                          "bitsandbytes 0.45 (this stack) has no fused 4-bit GEMM: batch >= 2 dequantises then runs a 16-bit GEMM")
    launch = public.H_LAUNCH_S / scale
    phys["h_launch_s"] = Param(launch, 0.5 * launch, "s", "prior",
                               "CUDA launch cost per kernel on the host (typical cudaLaunchKernel through torch)")
    return HostPart({"name": name, "description": desc, "stack": PUBLIC_STACK,
                     "execution": "HF transformers generate, eager (no CUDA graphs)"},
                    {"source": "published", "date": date.today().isoformat(), "basis": PUBLIC_TABLE},
                    phys, {"aic": f.aic, "bic": f.bic, "n_rows": n_rows})


def main(argv=None) -> None:
    """``python -m qtsim.profiles.priors [OUTDIR] [--refit]``: regenerate the spec-derived profiles."""
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m qtsim.profiles.priors",
        description="Write the spec-derived hardware profiles (one TOML per row of "
                    "data/reference/gpu_specs.csv) into OUTDIR.")
    ap.add_argument("outdir", nargs="?", default="hardware_profiles",
                    help="folder to write (default: hardware_profiles)")
    ap.add_argument("--refit", action="store_true",
                    help="first refit the published rows (public_fit.toml and OUTDIR/hosts)")
    args = ap.parse_args(argv)
    if args.refit:
        for f in refit_public(args.outdir):
            print(f)
    for f in write_spec_profiles(args.outdir):
        print(f)


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    main(sys.argv[1:])
