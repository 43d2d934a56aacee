"""A surface as an :class:`xarray.Dataset`: the quantities' names, units and dims, and their files.

A surface (:func:`qtsim.simulate.surface.simulate`) is one Dataset on the dims ``DIMS``:

- coordinates ``gpu``, ``precision`` (with ``bits``, the paper's p), ``model`` (with
  ``n_params`` and ``synthetic``) and ``batch``;
- one variable per quantity of ``QUANTITIES`` (its dims, ``units`` and ``description``), with
  draws also ``NAME_low``/``NAME_high`` (16th/84th percentiles) and ``p_trapped_*`` (shares of
  draws trapped); NaN wherever the configuration does not fit in device memory (its own run's
  figures), or it or its 16-bit reference does not (every comparison, verdict and share):
  ``fits`` and ``native_fits`` say which, so nothing that cannot run reads as if it ran;
- ``trust_status`` and ``trust_source`` (precision, model): where every T_SI comes from;
- attributes: provenance, as the file holds them (``note``, ``profile_*``, ``profiles_json``...).

Files are netCDF4/HDF5 (``engine="h5netcdf"``): every variable is an HDF5 dataset named as the
quantity with its ``units``, and the coordinates are HDF5 dimension scales, so h5py, netCDF
tools and pandas (``Dataset.to_dataframe``) read them without qtsim. xarray is imported only
where a surface is built or read, never by ``qtsim trap``.
"""

from __future__ import annotations

import json
import numbers
from typing import TYPE_CHECKING

import numpy as np

from qtsim.errors import QtsimError
from qtsim.model.stats import BAND
from qtsim.simulate.thresholds import KIND_CODES

if TYPE_CHECKING:
    import xarray as xr

    Surface = xr.Dataset

DIMS = ("gpu", "precision", "model", "batch")

#: name -> (units, description, dims).
QUANTITIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "latency_s": ("s", "wall time of one batch of queries (prefill + K-1 decode steps)", DIMS),
    "step_s": ("s", "mean decode step time (one token for each of B sequences)", DIMS),
    "tok_per_s": ("tokens/s", "generated tokens per second, all B sequences", DIMS),
    "j_per_query": ("J", "energy per query from the integrated power model (what an NVML energy counter would read, eq. 4)", DIMS),
    "j_per_query_hli": ("J", "energy per query by the paper's HLI, TDP x latency / B (sec. 3.1): latency in disguise", DIMS),
    "j_per_query_paper": ("J", "energy per query by the paper's eq. 19, K [gamma + alpha p / B + phi], constants from the profile at batch 1", DIMS),
    "avg_power_w": ("W", "average board power over the query (power model)", DIMS),
    "peak_memory_gib": ("GiB", "peak device memory: weights, full KV cache, dequantisation workspace, runtime overhead", DIMS),
    "fits": ("1", "1 when the configuration fits in device memory", DIMS),
    "native_fits": ("1", "1 when the native 16-bit configuration fits in device memory", DIMS),
    "cor": ("1", "Casting Overhead Ratio, eq. 8/9: tau_p / tau_ref - 1 from decode step times", DIMS),
    "energy_ratio": ("1", "quantized / native J per query (power model)", DIMS),
    "energy_ratio_hli": ("1", "quantized / native J per query (HLI): equals the latency ratio", DIMS),
    "energy_ratio_paper": ("1", "quantized / native J per query (eq. 19)", DIMS),
    "speed_ratio": ("1", "quantized / native tok/s", DIMS),
    "delta_j": ("J", "quantized minus native J per query (power model); > 0 trapped on energy", DIMS),
    "trapped_energy": ("1", "1 when quantized J/query > native (power model); NaN where it or native does not fit", DIMS),
    "trapped_energy_hli": ("1", "1 when quantized J/query > native (HLI, i.e. when it is slower); NaN where it or native does not fit", DIMS),
    "trapped_energy_paper": ("1", "1 when quantized J/query > native by eq. 19 (NaN where it or native does not fit); algebra of eq. 19 puts this at B > B* of eq. 18 (Thm. 4.3 says below: see qtsim reproduce, C15)", DIMS),
    "trapped_time": ("1", "1 when quantized tok/s < native; NaN where it or native does not fit", DIMS),
    "trapped_si": ("1", "1 when SI < SI(native) = 1 (Prop. 3.2 on the precision grid); NaN where it or native does not fit", DIMS),
    "t_si": ("1", "trust pillar T_SI, eq. 2 (see trust_status: measured, published, extrapolated or assumed)", DIMS),
    "e_si": ("1", "economic pillar E_SI, eq. 3 (alpha_E = 0.5): harmonic mean of tok/s and VRAM gains", DIMS),
    "s_si": ("1", "energy pillar S_SI = E_ref / E, same grid (sec. 3.1 III), power-model energy", DIMS),
    "s_si_hli": ("1", "energy pillar S_SI with HLI energy (the paper's method)", DIMS),
    "s_si_paper": ("1", "energy pillar S_SI with eq. 19 energy", DIMS),
    "si": ("1", "Sustainability Index, eq. 6 (or Remark 3.1), power-model S_SI", DIMS),
    "si_hli": ("1", "Sustainability Index with the HLI S_SI (the paper's method)", DIMS),
    "alpha_j_per_bit": ("J/bit", "eq. 19 alpha: weight-movement energy per hop per bit, from the profile at batch 1", ("gpu", "precision", "model")),
    "gamma_j": ("J", "eq. 19 gamma: precision-independent energy per hop", ("gpu", "precision", "model")),
    "phi_j": ("J", "eq. 19 phi(h, p): casting energy per hop (0 at native)", ("gpu", "precision", "model")),
    "b_star_paper": ("sequences", "critical batch by eq. 10/18, alpha (pi - p) / phi (0 where phi <= 0); eq. 19 is trapped above it", ("gpu", "precision", "model")),
    "b_star": ("sequences", "critical batch B* from the physical model: quantized J/query = native (see b_star_kind)", ("gpu", "precision", "model")),
    "b_star_kind": ("code", "0 crossing (trapped below B*), 1 reverse (trapped above), 2 trapped everywhere searched (B* > range), 3 never trapped, 4 native does not fit", ("gpu", "precision", "model")),
    "b_star_max": ("sequences", "top of the B* search: min(4096, native memory limit)", ("gpu", "precision", "model")),
    "n_star": ("parameters", "critical model scale N* along the family's synthetic sizes: quantized J/query = native (see n_star_kind; NaN where that size does not fit: n_star_fits)", ("gpu", "precision", "batch")),
    "n_star_fits": ("1", "1 when a model of the family at N* fits in device memory at this batch (quantized), 0 when it does not (then n_star is NaN: no answer that cannot run), NaN without a crossing", ("gpu", "precision", "batch")),
    "n_star_kind": ("code", "0 crossing (trapped below N*), 1 reverse (trapped above), 2 trapped at every size searched, 3 never trapped", ("gpu", "precision", "batch")),
}

#: coordinate -> (dim, units, description).
COORDS = {
    "gpu": ("gpu", "", "hardware profile name"),
    "precision": ("precision", "", "weight precision"),
    "bits": ("precision", "bits", "the paper's p: bits per weight element"),
    "model": ("model", "", "model name, or FAMILY~SIZE for a synthetic size"),
    "n_params": ("model", "parameters", "total parameter count"),
    "synthetic": ("model", "1", "1 for a synthetic size of the N* family (Architecture.scaled)"),
    "batch": ("batch", "sequences", "batch size B (concurrent sequences)"),
}

#: trust table variable -> (key of a TrustEstimate dict, description); dims (precision, model).
TRUST = {
    "trust_status": ("status", "where T_SI comes from: reference, measured, published, "
                               "extrapolated or assumed"),
    "trust_source": ("source", "the trust figure's source, or the assumption made"),
}


def dims_of(name: str) -> tuple[str, ...]:
    """Dims of a quantity, its ``_low``/``_high`` band or a ``p_trapped_*`` share."""
    if name.startswith("p_"):
        return DIMS
    return QUANTITIES[name.removesuffix("_low").removesuffix("_high")][2]


def units_description(name: str) -> tuple[str, str]:
    """(units, description) of a quantity, band (16th/84th percentile) or share of draws."""
    if name.startswith("p_"):
        return "1", f"share of Monte-Carlo draws {name[2:].replace('_', ' ')}"
    base = name.removesuffix("_low").removesuffix("_high")
    unit, desc = QUANTITIES[base][:2]
    if name != base:
        pct = BAND[0] if name.endswith("_low") else BAND[1]
        desc = f"{pct:g}th percentile over draws of: {desc}"
    return unit, desc


# ---- building ---------------------------------------------------------------------------------
def make_surface(coords: dict, data: dict, trust: list, attrs: dict) -> Surface:
    """The Dataset of one surface.

    ``coords``: gpu, precision, bits, model, n_params, synthetic, batch (lists or arrays);
    ``data``: quantity name -> array on :func:`dims_of` (no copy is made); ``trust``: one
    ``TrustEstimate.to_dict()`` with ``precision`` and ``model`` per (precision, model);
    ``attrs``: provenance as :func:`qtsim.simulate.surface.simulate` gathers it (``profiles``
    a list of dicts, ``disclaimer``), turned into what a netCDF file can hold.
    """
    import xarray as xr

    dtypes = {"bits": np.int16, "n_params": float, "synthetic": bool, "batch": float}
    coord_vars = {name: xr.Variable(dim, np.asarray(coords[name], dtypes.get(name)),
                                    {"units": unit, "description": desc})
                  for name, (dim, unit, desc) in COORDS.items()}
    data_vars = {}
    for name, arr in data.items():
        unit, desc = units_description(name)
        data_vars[name] = xr.Variable(dims_of(name), arr, {"units": unit, "description": desc})
    by_key = {(t["precision"], t["model"]): t for t in trust}
    for name, (key, desc) in TRUST.items():
        table = [[str(by_key[(p, m)][key]) for m in coords["model"]] for p in coords["precision"]]
        data_vars[name] = xr.Variable(("precision", "model"), np.array(table, dtype=str),
                                      {"units": "", "description": desc})
    # coordinates first: h5netcdf then writes each dimension scale before the variables that
    # attach to it, instead of re-attaching every variable when the scale replaces its placeholder
    return xr.Dataset(coords=coord_vars, attrs=_file_attrs(attrs)).assign(data_vars)


def _file_attrs(a: dict) -> dict:
    """Provenance as netCDF attributes: strings, numbers and 1-D arrays (booleans as 0/1)."""
    out = {"title": "qtsim simulate surface", "note": a["disclaimer"], "command": ""}
    for k in ("qtsim_version", "new_tokens", "prompt_tokens", "policy", "n_draws", "seed",
              "bnb_4bit_use_double_quant", "llm_int8_threshold", "bnb_4bit_compute_dtype",
              "n_star_family", "trust_depth", "trust_table", "energy_methods"):
        out[k] = int(a[k]) if isinstance(a[k], bool) else a[k]
    out["si_weights"] = np.asarray(a["si_weights"], float)
    out["band_percentiles"] = np.asarray(a["band_percentiles"], float)
    for k in ("name", "source", "date", "device", "location", "bitsandbytes_version"):
        out[f"profile_{k}"] = [str(p.get(k, "")) for p in a["profiles"]]
    out["profiles_json"] = json.dumps(a["profiles"])
    out["b_star_kind_codes"] = json.dumps(KIND_CODES)
    return out


# ---- reading a surface ------------------------------------------------------------------------
def quantities(surface: Surface) -> list[str]:
    """The names of the quantity variables (bands and shares included, the trust table not)."""
    return [k for k in surface.data_vars if k not in TRUST]


def n_points(surface: Surface) -> int:
    """Grid points: gpu x precision x model x batch."""
    return int(np.prod([surface.sizes[d] for d in DIMS]))


def grid_line(surface: Surface, n_draws: int, seconds: float) -> str:
    """One line on a computed grid: its axes, points, draws and how long it took."""
    g, p, m, nb = (surface.sizes[d] for d in DIMS)
    return (f"{g} GPU x {p} precision x {m} model x {nb} batch = {n_points(surface)} points"
            f"{f', {n_draws} draws' if n_draws else ''} in {seconds:.2f} s")


def profiles(surface: Surface) -> list[dict]:
    """Every profile's name, source, date, device, location, TDP and count of priors."""
    return json.loads(surface.attrs["profiles_json"])


def trust_status(surface: Surface) -> dict[tuple[str, str], str]:
    """(precision, model) -> where its T_SI comes from."""
    st = surface["trust_status"]
    return {(str(p), str(m)): str(st.values[i, j])
            for i, p in enumerate(st["precision"].values)
            for j, m in enumerate(st["model"].values)}


# ---- files ------------------------------------------------------------------------------------
def encoding(surface: Surface, compress: bool) -> dict:
    """Storage of every variable: plain by default (writing is then disk-bound, about 0.1 s
    per 10^6 points of every quantity); ``compress``: gzip level 1 after byte shuffling, about
    3.5x smaller files for about 1.3 s more per 10^6 points. No fill value: NaN is a value
    (undefined, e.g. B* where there is no crossing)."""
    enc = {}
    for name, var in surface.variables.items():
        enc[name] = {"_FillValue": None}
        if compress and var.size > 4096:
            enc[name].update(compression="gzip", compression_opts=1, shuffle=True)
    return enc


def write_hdf5(surface: Surface, path, command: str = "", compress: bool = False) -> None:
    """netCDF4/HDF5: one dataset per quantity, coordinates as dimension scales, units and
    descriptions; file attributes carry the provenance and ``command``. Numbers are scalar
    attributes (as 0-d arrays: h5netcdf would make a Python number a 1-element array)."""
    attrs = {k: np.asarray(v) if isinstance(v, numbers.Number) else v
             for k, v in {**surface.attrs, "command": command}.items()}
    try:
        surface.assign_attrs(attrs).to_netcdf(path, engine="h5netcdf",
                                              encoding=encoding(surface, compress))
    except OSError as e:
        raise QtsimError(f"{path}: cannot write HDF5 ({e})") from None


def read_hdf5(path) -> Surface:
    """The Dataset :func:`write_hdf5` wrote, loaded into memory."""
    import xarray as xr

    try:
        return xr.load_dataset(path, engine="h5netcdf")
    except OSError as e:
        raise QtsimError(f"{path}: cannot read HDF5 ({e})") from None


def long_frame(surface: Surface):
    """Long format, a row per value: gpu, precision, model, n_params, batch, quantity, value,
    unit, bitsandbytes_version (the release that GPU's figures assume). Per-model quantities have an empty batch; per-batch ones (N*) the model
    ``family:NAME`` and an empty n_params. n_params and batch are strings (6 significant
    digits), value a float."""
    import pandas as pd

    n_params = {str(m): f"{n:.6g}" for m, n in zip(surface["model"].values,
                                                   surface["n_params"].values, strict=True)}
    family = f"family:{surface.attrs.get('n_star_family', '')}"
    frames = []
    for name in quantities(surface):
        da = surface[name]
        df = da.reset_coords(drop=True).to_series().rename("value").reset_index()
        df["batch"] = df["batch"].map("{:g}".format) if "batch" in da.dims else ""
        df["model"] = df["model"] if "model" in da.dims else family
        df["n_params"] = df["model"].map(n_params).fillna("")
        df["quantity"], df["unit"] = name, da.attrs["units"]
        df["value"] = df["value"].astype(float)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    # the bitsandbytes release every verdict of that GPU depends on, beside each value
    stack = {str(p["name"]): str(p.get("bitsandbytes_version", "")) for p in profiles(surface)}
    out["bitsandbytes_version"] = out["gpu"].astype(str).map(stack).fillna("")
    cols = ["gpu", "precision", "model", "n_params", "batch", "quantity", "value", "unit",
            "bitsandbytes_version"]
    return out[cols]


def write_csv(surface: Surface, path) -> int:
    """Write :func:`long_frame` with a header (values to 6 significant digits, RFC 4180 line
    ends as the csv module writes them); returns the number of rows."""
    frame = long_frame(surface)
    try:
        frame.to_csv(path, index=False, float_format="%.6g", na_rep="nan",
                     lineterminator="\r\n")
    except OSError as e:
        raise QtsimError(f"{path}: cannot write CSV ({e})") from None
    return len(frame)
