"""Run held-out validation points: predictions first, then the real decode, stored together."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qtsim.calibration.measure.raw import PointResult, RawStore
from qtsim.calibration.probes.contention import DriftSpec
from qtsim.calibration.probes.plan import DecodeSpec
from qtsim.simulate.simulator import Simulator
from qtsim.validate.predict import PREDICTION_DRAWS, predict_point


@dataclass
class ValidationSpec:
    """A full decode at a held-out point, carrying the profile's predictions for it.

    The predictions (``pred_*``) are computed from the profile when the spec is made, i.e.
    before anything is measured, and are written into the point's attributes beside the
    measurement.
    """

    decode: DecodeSpec
    predictions: dict[str, Any] = field(default_factory=dict)

    def point_id(self) -> str:
        return self.decode.point_id()

    def base_attrs(self, ctx) -> dict[str, Any]:
        return {**self.decode.base_attrs(ctx), **self.predictions, "purpose": "validation"}

    def estimate_s(self, device) -> float:
        return self.decode.estimate_s(device)

    def run(self, ctx) -> PointResult:
        result = self.decode.run(ctx)
        result.attrs.update(self.predictions)
        result.attrs["purpose"] = "validation"
        return result


def validation_specs(profile, points, configs: dict, reps: int = 3, *, overlap=(),
                     outliers: bool = False) -> list[ValidationSpec]:
    """A :class:`ValidationSpec` per :class:`~qtsim.validate.plan.ValidationPoint`, carrying the
    ``profile``'s predictions for it (:func:`qtsim.validate.predict.predict_point`).

    ``configs``: model -> (config, name) (:func:`qtsim.validate.plan.plan_points`); points in
    ``overlap`` (they calibrated the profile) are labelled ``overlap``, the others ``held-out``;
    ``outliers`` injects activation outliers into INT8 models so LLM.int8() takes its fp16 path.
    """
    sim = Simulator(profile, n_draws=PREDICTION_DRAWS)
    specs = []
    for pt in points:
        cfg, name = configs[pt.model]
        w = pt.workload
        dec = DecodeSpec(name, cfg, w.precision, pt.batch, w.prompt_tokens, w.new_tokens, reps,
                         double_quant=w.bnb.double_quant, threshold=w.bnb.int8_threshold,
                         outlier_injection=outliers and w.precision == "int8")
        pred = predict_point(sim, cfg, name, pt)
        pred["holdout"] = "overlap" if pt in overlap else "held-out"
        specs.append(ValidationSpec(dec, pred))
    return specs


#: calibration decodes re-measured before and after the held-out runs (16-bit and one quantized
#: path at batch 1: short, and both kinds of kernels)
DRIFT_PRECISIONS = ("fp16", "bf16", "nf4")


def drift_probes(profile, where: str = "before") -> list:
    """Reference points of ``profile``'s calibration to measure again around held-out runs:
    calibration decodes at batch 1 read from its raw file (``[provenance] raw_data``), each a
    :class:`~qtsim.calibration.probes.contention.DriftSpec` carrying what the calibration measured
    there (``ref_t_generate_s``), so validation can tell how far the machine moved since.
    Empty when the raw file is not at hand (the report then says drift was not measured)."""
    raw = profile.provenance.get("raw_data") or ""
    if not raw or not Path(raw).is_file():
        return []
    frame = RawStore(raw, readonly=True).summary_frame("decode")
    if not len(frame):
        return []
    cal = frame[(frame.get("purpose", "calibration") == "calibration") & (frame["batch"] == 1)
                & frame["precision"].isin(DRIFT_PRECISIONS)]
    if "bnb_4bit_use_double_quant" in cal:
        cal = cal[~cal["bnb_4bit_use_double_quant"].fillna(False).astype(bool)]
    base = cal.sort_values("model").groupby("precision").head(1)
    out = []
    for _, r in base.iterrows():
        spec = DecodeSpec(str(r["model"]), json.loads(r["config_json"]), str(r["precision"]), 1,
                          int(r["prompt_len"]), int(r["new_tokens"]), int(r.get("n_reps") or 3))
        ref = {"ref_t_generate_s": float(r["t_generate_s"]), "ref_source": str(raw),
               "drift_when": where}
        out.append(DriftSpec(spec, 0 if where == "before" else 1, ref))
    return out
