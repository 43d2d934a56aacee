"""Per-node fits and the fleet summary: one profile per gathered slot (``qtsim fit``'s
:func:`~qtsim.calibration.fit.profile_builder.build_profile`, no torch), the spread of every
fitted constant between units of one hardware model (CSV, JSON, a plot), and the held-out
validation summary per slot.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from pathlib import Path

import numpy as np

from qtsim.calibration.fit.profile_builder import build_profile
from qtsim.calibration.fleet.head import Manifest
from qtsim.calibration.fleet.slots import atomic_write_bytes, require_ray
from qtsim.calibration.measure.raw import RawStore
from qtsim.errors import FitError
from qtsim.profiles.hardware import read_profile
from qtsim.validate.score import cor_and_verdicts, error_table, measured_frame, verdict_summary


def _fit_one(raw_bytes: bytes, raw_path: str, name: str) -> tuple:
    """Fit one gathered raw file, sent as bytes so any worker can fit it: (profile TOML text,
    fit MAPE per stage), or (None, reason). The profile names ``raw_path`` as its raw data
    (same bytes, same checksum)."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d) / Path(raw_path).name
        tmp.write_bytes(raw_bytes)
        try:
            prof, fit = build_profile(tmp, name)
        except FitError as e:
            return None, f"fit: {e}"

    prof.provenance["raw_data"] = raw_path
    prof.physical = {k: dataclasses.replace(p, basis=p.basis.replace(str(tmp), raw_path))
                     for k, p in prof.physical.items()}
    return prof.to_toml(), {s.name: round(100 * s.mape, 2) for s in fit.stages if s.n_points}



def fit_nodes(m: Manifest, echo=print, use_ray: bool = True) -> dict:
    """Fit one profile per gathered slot (``OUT/nodes/<slot>/<hardware>-<slot>.toml``), the
    fits spread over the cluster's CPUs as Ray tasks (no torch needed). Returns slot ->
    HardwareProfile; a fit that fails marks the slot ``fit_failed`` with the reason."""
    profiles, todo = {}, {}
    for name, st in m.doc["slots"].items():
        if st["status"] not in ("done", "fit_failed") or "raw" not in st:
            continue
        if st.get("profile") and (m.out / st["profile"]).is_file() and st["status"] == "done":
            profiles[name] = read_profile(m.out / st["profile"])
            continue
        hw = (st.get("unit") or {}).get("hardware", "device")
        raw = m.out / st["raw"]
        todo[name] = (raw.read_bytes(), str(raw), f"{hw}-{name}")
    if use_ray and todo:
        ray = require_ray()
        remote = ray.remote(_fit_one).options(num_cpus=1)
        results = dict(zip(todo, ray.get([remote.remote(*a) for a in todo.values()]), strict=True))
    else:
        results = {n: _fit_one(*a) for n, a in todo.items()}
    for name, (toml_text, stages) in results.items():
        if toml_text is None:
            m.update(name, status="fit_failed", reason=stages)
            echo(f"  {name}: fit failed: {stages}")
            continue
        dest = Path(todo[name][1]).parent / f"{todo[name][2]}.toml"
        atomic_write_bytes(dest, toml_text.encode())
        m.update(name, status="done", profile=str(dest.relative_to(m.out)), fit_mape_pct=stages)
        profiles[name] = read_profile(dest)
        echo(f"  {name}: profile {dest} (fit MAPE "
             f"{', '.join(f'{k} {v}%' for k, v in stages.items())})")
    return profiles



def group_key(unit: dict | None, profile=None) -> str:
    """The hardware model units are compared within: qtsim's name plus the device string."""
    unit = unit or {}
    hw = unit.get("hardware") or (profile.hardware.get("device_name") if profile else "?")
    dev = unit.get("device") or (profile.provenance.get("device") if profile else "")
    return f"{hw} ({dev})" if dev else str(hw)



def spread_table(values: dict[str, dict[str, float]]):
    """Per constant, the spread between units: n, mean, sd (ddof 1), min, max, CV = sd/|mean|.
    ``values``: unit -> {constant: value}. Only constants every unit has."""
    import pandas as pd

    units = list(values)
    names = sorted(set.intersection(*(set(v) for v in values.values()))) if values else []
    rows = []
    for k in names:
        x = np.array([values[u][k] for u in units], float)
        mean = float(np.mean(x))
        sd = float(np.std(x, ddof=1)) if x.size > 1 else math.nan
        rows.append({"constant": k, "n_units": int(x.size), "mean": mean, "sd": sd,
                     "min": float(np.min(x)), "max": float(np.max(x)),
                     "cv": sd / abs(mean) if mean and math.isfinite(sd) else math.nan,
                     **{f"unit:{u}": float(values[u][k]) for u in units}})
    return pd.DataFrame(rows)



def _fitted(p) -> bool:
    """A constant the fit determined: calibrated, or derived with a standard error of its own
    (the bandwidth); not priors, assumptions, definitions or ties to another constant."""
    return p.source == "calibrated" or (p.source == "fixed" and p.stderr > 0
                                        and "tied" not in p.basis)



def fleet_summary(m: Manifest, profiles: dict, echo=print) -> dict:
    """``OUT/fleet_summary.csv`` (one row per hardware model x constant), ``.json`` (with
    every slot's status and reason) and ``fleet_spread.png``. Constants compared: those the
    fits calibrated (not priors, not fixed or assumed ones)."""
    import pandas as pd

    groups: dict[str, dict[str, dict[str, float]]] = {}
    for name, prof in profiles.items():
        st = m.slot(name)
        vals = {k: float(p.value) for k, p in prof.physical.items() if _fitted(p)}
        groups.setdefault(group_key(st.get("unit"), prof), {})[name] = vals
    tables = []
    for g, vals in groups.items():
        t = spread_table(vals)
        t.insert(0, "hardware_model", g)
        tables.append(t)
    frame = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    m.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(m.out / "fleet_summary.csv", index=False)
    doc = {"campaign": m.doc["campaign"], "kind": m.doc["kind"], "settings": m.doc["settings"],
           "slots": {n: {k: v for k, v in s.items()} for n, s in m.doc["slots"].items()},
           "groups": {g: {"units": list(v), "spread": [
               {k: (None if isinstance(x, float) and not math.isfinite(x) else x)
                for k, x in r.items() if not k.startswith("unit:")}
               for r in frame[frame["hardware_model"] == g].to_dict("records")]}
               for g, v in groups.items()}}
    (m.out / "fleet_summary.json").write_text(json.dumps(doc, indent=2, default=str))
    png = plot_spread(frame, m.out / "fleet_spread.png") if len(frame) else None
    return {"frame": frame, "json": doc, "png": png}



def plot_spread(frame, path) -> Path:
    """Each unit's fitted constant divided by its hardware model's mean (1 = the mean), one
    row per constant, one panel per hardware model, CV beside each row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(frame["hardware_model"]))
    nmax = max(int((frame["hardware_model"] == g).sum()) for g in groups)
    fig, axes = plt.subplots(1, len(groups), figsize=(7.5 * len(groups), 1.0 + 0.32 * nmax),
                             squeeze=False)
    for ax, g in zip(axes[0], groups, strict=True):
        sub = frame[frame["hardware_model"] == g].reset_index(drop=True)
        ucols = [c for c in sub.columns if c.startswith("unit:") and sub[c].notna().any()]
        for j, c in enumerate(ucols):
            rel = sub[c].to_numpy(float) / sub["mean"].to_numpy(float)
            ax.scatter(rel, np.arange(len(sub)), s=22, label=c[len("unit:"):], zorder=3,
                       marker="os^Dv<>"[j % 7])
        ax.axvline(1.0, color="0.5", lw=0.8)
        ax.set_yticks(np.arange(len(sub)))
        ax.set_yticklabels([f"{k}  (CV {100 * cv:.1f}%)" if math.isfinite(cv) else k
                            for k, cv in zip(sub["constant"], sub["cv"], strict=True)],
                           fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("unit value / mean over units")
        ax.set_title(f"{g}: {len(ucols)} units", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Spread of fitted constants between units of the same hardware model", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path



def validation_summary(m: Manifest, profiles_by_slot: dict, echo=print):
    """Per slot: the validation report's errors (latency, step, J/query MAPE and bias) and
    verdict agreement, ``OUT/nodes/<slot>/errors.csv``; fleet rows in
    ``OUT/fleet_validation.csv`` and ``.json``, with the spread per hardware model."""
    import pandas as pd

    rows = []
    for name, st in m.doc["slots"].items():
        if st["status"] != "done":
            rows.append({"slot": name, "status": st["status"], "reason": st.get("reason", "")})
            continue
        raw = m.out / st["raw"]
        df = measured_frame(RawStore(raw, readonly=True).summary_frame("decode"))
        errors = error_table(df)
        errors.to_csv(raw.parent / "errors.csv", index=False)
        df.to_csv(raw.parent / "points.csv", index=False)
        allrow = errors[errors["group"] == "all"].set_index("quantity")
        prof = profiles_by_slot[name]
        verdicts = cor_and_verdicts(df, prof.native)
        row = {"slot": name, "status": "done", "hardware_model": group_key(st.get("unit")),
               "profile": prof.name, "points": len(df),
               "verdicts": verdict_summary(verdicts) if not verdicts.empty else ""}
        for q in ("latency_s", "step_s", "j_per_query"):
            if q in allrow.index:
                row[f"{q}_mape_pct"] = float(allrow.loc[q, "mape_pct"])
                row[f"{q}_bias_pct"] = float(allrow.loc[q, "bias_pct"])
        rows.append(row)
        echo(f"  {name}: {len(df)} held-out points, latency MAPE "
             f"{row.get('latency_s_mape_pct', float('nan')):.1f}%, verdicts {row['verdicts']}")
    frame = pd.DataFrame(rows)
    frame.to_csv(m.out / "fleet_validation.csv", index=False)
    (m.out / "fleet_validation.json").write_text(json.dumps(
        {"campaign": m.doc["campaign"], "rows": frame.to_dict("records")}, indent=2, default=str))
    return frame
