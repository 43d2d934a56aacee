"""Predictions for validation points, made before they are measured (or again, from a refit).

:func:`predict_point` gives the physical model's and the paper model's (eq. 19) predictions that are stored beside
each measurement; :func:`repredict` recomputes them for recorded rows with another profile.
"""

from __future__ import annotations

import json
import math

import numpy as np

from qtsim.model import physical
from qtsim.model.architecture import from_config
from qtsim.model.stats import band
from qtsim.model.workload import DEFAULT_INT8_THRESHOLD, Workload
from qtsim.simulate.simulator import Simulator
from qtsim.simulate.surface import paper_energy
from qtsim.validate.plan import ValidationPoint, point_workload

#: Monte-Carlo draws behind a prediction's band, stored at measurement time or re-made
PREDICTION_DRAWS = 200


def predict_point(sim: Simulator, config: dict, name: str, pt: ValidationPoint) -> dict:
    """Physical-model and paper-model predictions for one point, made before it is measured."""
    c = from_config(config, name=name).counts()
    w = pt.workload
    q = sim.evaluate(c, w)
    _, lo, hi = band(sim.evaluate(c, w, draws=True)["latency_s"])
    return {
        "pred_step_s": float(q["step_s"]), "pred_latency_s": float(q["latency_s"]),
        "pred_latency_low_s": float(lo), "pred_latency_high_s": float(hi),
        "pred_j_per_query": float(q["j_per_query"]),
        "pred_j_per_query_hli": float(q["j_per_query_hli"]),
        "pred_j_per_query_paper": paper_energy_j(sim, c, w), "pred_peak_bytes": float(q["peak_bytes"]),
        "pred_steady_bytes": steady_bytes(sim.profile, c, w),
        "pred_profile": sim.profile.name, "pred_profile_source": sim.profile.source,
        "pred_kernel_family": w.family,
    }


def steady_bytes(profile, counts, w: Workload) -> float:
    """The predicted memory a decode's ``steady_memory_bytes`` is scored against
    (:data:`qtsim.calibration.probes.decode.STEADY_MEMORY_KIND`): on a GPU weights + KV cache +
    workspace (the runtime overhead excluded), on a CPU the weight bytes alone."""
    if profile.hardware.get("device_type") == "cpu":
        return float(np.ravel(counts.weight_bytes(w.precision if w.precision != "fp4" else "nf4",
                                                  w.double_quant))[0])
    return float(np.ravel(physical.peak_memory_bytes(
        counts, w.precision, w.batch, w.new_tokens, w.prompt_tokens, w.double_quant, 0.0))[0])


def paper_energy_j(sim: Simulator, counts, workload: Workload) -> float:
    """J per query of the paper's energy functional (eq. 19) with constants from ``sim``'s
    profile (:func:`qtsim.simulate.surface.paper_energy`): phi applies to quantized precisions
    only."""
    at = workload.replace(batch=np.atleast_1d(np.asarray(workload.batch, float)))
    return float(np.ravel(paper_energy(sim, counts, at)["j_per_query_paper"])[0])


def row_point(row) -> ValidationPoint:
    """The point a recorded validation row (:func:`qtsim.validate.score.measured_frame`)
    measured, with the bitsandbytes settings its raw attributes record."""
    dq = row.get("bnb_4bit_use_double_quant")
    thr = row.get("llm_int8_threshold")
    return ValidationPoint(str(row["model"]), point_workload(
        str(row["precision"]), int(row["batch"]), int(row["new_tokens"]), int(row["prompt_len"]),
        _recorded(dq, False), float(_recorded(thr, DEFAULT_INT8_THRESHOLD))))


def _recorded(value, default):
    """A raw attribute, or ``default`` where the point does not record it (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default
    return value.item() if hasattr(value, "item") else value


def repredict(df, sim: Simulator):
    """``df`` (validation rows, :func:`qtsim.validate.score.measured_frame`) with every
    ``pred_*`` column recomputed by ``sim``'s profile from each point's recorded config: scores
    a refitted profile on recorded held-out runs. The predictions stored at measurement time
    are kept as ``stored_pred_*``."""
    out = df.copy()
    rows = [predict_point(sim, json.loads(r["config_json"]), str(r["model"]), row_point(r))
            for _, r in out.iterrows()]
    for k in rows[0] if rows else []:
        if k in out:
            out[f"stored_{k}"] = out[k]
        out[k] = [x[k] for x in rows]
    return out
