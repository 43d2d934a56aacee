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

Regenerate the shipped files with ``python -m qtsim.priors hardware_profiles/``.
"""

from __future__ import annotations

import csv
import sys
from datetime import date
from importlib import resources
from pathlib import Path

from qtsim import __version__
from qtsim.architecture import load_architecture
from qtsim.profiles import HardwareProfile, Param, write_profile
from qtsim.simulator import paper_constants_table

BNB_TABLE = "bitsandbytes maintainers' H100 HF-generate table (data/reference/peer_measurements.md)"
HBM = ("hopper", "ampere", "blackwell-dc")
ALIASES = {
    "l4": ["nvidia-l4"], "a100-40gb": ["a100-40", "a100-sxm4-40gb"],
    "a100-80gb": ["a100", "a100-80", "a100-sxm4-80gb"], "h100-sxm": ["h100", "h100-80gb", "h100-sxm5"],
    "h100-pcie": ["h100pcie"], "h200": ["h200-sxm", "h200-141gb"],
    "rtx-pro-6000-blackwell": ["rtx-pro-6000", "rtx6000-pro", "rtx-6000-pro"], "b200": ["b200-sxm"],
}
REFERENCE_MODEL = "mistral-7b"  # the paper's main model: [constants] are derived for it
IDLE_FRACTION = 0.1  # idle power / TDP prior (Splitwise: 75 W of 700 W on H100)


def spec_rows() -> list[dict]:
    text = (resources.files("qtsim.data.reference") / "gpu_specs.csv").read_text()
    return list(csv.DictReader(text.splitlines()))


def _prior(value, rel, unit, basis, source="prior"):
    value = float(f"{float(value):.6g}")
    return Param(value, float(f"{abs(value) * rel:.6g}"), unit, source, basis)


def spec_profile(row: dict) -> HardwareProfile:
    """A profile from one row of ``gpu_specs.csv`` with documented priors."""
    name = row["gpu"]
    bw = float(row["mem_bw_gbs"])
    tflops = float(row["fp16_dense_tflops"])
    tops = float(row["int8_dense_tops"])
    tdp = float(row["tdp_w"])
    hbm = not name.startswith(("l4", "rtx"))
    native_formats = ["fp16", "bf16", "int8"] + [f for f in row["native_low_precision"].split() if f != "int8"]
    hw = {
        "name": name, "aliases": ALIASES.get(name, []), "vendor": "nvidia",
        "architecture": row["architecture"], "device_type": "cuda",
        "memory_gib": round(float(row["memory_gb"]) * 1e9 / 2**30, 2), "mem_bw_gbs": bw,
        "fp16_tflops": tflops, "int8_tops": tops, "tdp_w": tdp,
        "idle_w": round(IDLE_FRACTION * tdp, 1), "native_formats": native_formats,
        "native_dtype": "fp16", "runtime_overhead_gib": 0.6,
        "sources": [row["source"]],
    }
    t_fp16 = 2.0 / (0.5 * tflops * 1e12)
    t_int8 = 2.0 / (0.5 * tops * 1e12)
    bw_eff = 0.8 * bw * 1e9
    deq = float(f"{4.0 / bw_eff:.6g}")  # write an fp16 copy and read it back: 4 bytes per weight
    host = "host-bound HF eager decode; per-call floor from " + BNB_TABLE
    p = {
        "mem_bw_gbs": _prior(0.8 * bw, 0.15, "GB/s", "0.8 x datasheet bandwidth (aiconfigurator mem_bw_empirical_scaling_factor)"),
        "t_step_s": _prior(1.5e-3, 0.7, "s", "HF generate per-step loop (logits processors, cache update); no datasheet gives it"),
        "t_layer_s": _prior(5.0e-4, 0.5, "s", "0.75 ms per Llama layer at batch 1 on H100 (" + BNB_TABLE + ") less 7 linear calls"),
        "p_static_w": _prior(0.3 * tdp, 0.5, "W", "0.3 x TDP while decoding at small batch (Splitwise: 380 W decode of 700 W on H100, lower when host-bound)"),
        "e_byte_j": _prior(6e-11 if hbm else 1.2e-10, 0.5, "J/byte", "HBM about 4 pJ/bit plus on-chip movement" if hbm else "GDDR about 7.5 pJ/bit plus on-chip movement"),
        "e_flop_j": _prior(0.5 * tdp / (tflops * 1e12), 0.5, "J/FLOP", "half the TDP spread over dense 16-bit tensor throughput"),
    }

    def path(name_, call, call_basis, weight, tok, rel_call=0.5):
        p[f"t_call_{name_}_s"] = _prior(call, rel_call, "s", call_basis)
        p[f"t_weight_{name_}_s"] = _prior(weight, 1.0, "s/weight",
                                          "dequantisation: 4 bytes per weight at effective bandwidth" if weight else "no per-step casting on this path (prior 0, stderr 1 byte/weight of bandwidth time)") \
            if weight else Param(0.0, float(f"{1.0 / bw_eff:.6g}"), "s/weight", "prior", "no per-step casting on this path; stderr one byte per weight of bandwidth time")
        p[f"t_tokweight_{name_}_s"] = _prior(tok, 0.5, "s/(weight*token)", "2 FLOPs per weight at half the datasheet dense throughput")

    path("fp16", 3.0e-5, host, 0.0, t_fp16)
    p["t_weight_fp16_s"] = Param(0.0, 0.0, "s/weight", "fixed", "reference path: bytes/BW only, by definition")
    path("bf16", 3.0e-5, host, 0.0, t_fp16)
    path("int8", 3.0e-5 + 2.57e-4, host + " (+257 us per call, LLM.int8() threshold 6)", 0.0, t_int8)
    path("int8_t0", 3.0e-5 + 1.24e-4, host + " (+124 us per call, threshold 0)", 0.0, t_int8)
    path("nf4_b1", 3.0e-5 + 3.9e-5, host + " (+39 us per call, fused GEMV at batch 1)", 0.0, t_fp16)
    path("nf4_bn", 3.0e-5 + 7.5e-5, host + " (+98 us per call at batch 8 less dequantisation time)", deq, t_fp16)
    prov = {
        "source": "spec", "date": date.today().isoformat(), "device": f"{name} (datasheet)",
        "driver": "", "qtsim_version": __version__, "n_measurements": 0, "raw_data": "",
        "raw_sha256": "",
        "notes": "Datasheet facts; every constant marked prior is an informed guess with a wide stderr. Run `qtsim calibrate` on this GPU to replace them.",
    }
    prof = HardwareProfile(hw, prov, p)
    prof.constants = paper_constants_table(prof, load_architecture(REFERENCE_MODEL).counts(),
                                           REFERENCE_MODEL)
    return prof


def write_spec_profiles(outdir: str | Path) -> list[Path]:
    return [write_profile(spec_profile(r), Path(outdir) / f"{r['gpu']}.toml") for r in spec_rows()]


def main(argv=None) -> None:
    """``python -m qtsim.priors [OUTDIR]``: regenerate the spec-derived profiles."""
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m qtsim.priors",
        description="Write the spec-derived hardware profiles (one TOML per row of "
                    "data/reference/gpu_specs.csv) into OUTDIR.")
    ap.add_argument("outdir", nargs="?", default="hardware_profiles",
                    help="folder to write (default: hardware_profiles)")
    args = ap.parse_args(argv)
    for f in write_spec_profiles(args.outdir):
        print(f)


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    main(sys.argv[1:])
