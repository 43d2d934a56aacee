"""Run held-out validation points: predictions first, then the real decode, stored together."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qtsim.calibration.plan import DecodeSpec
from qtsim.calibration.raw import PointResult


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
