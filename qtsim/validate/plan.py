"""Which held-out points a validation run measures: plans, grids and the hold-out check.

A :class:`ValidationPoint` is one architecture (``model``) at one
:class:`~qtsim.model.workload.Workload` (precision with its bitsandbytes settings, batch, new and
prompt tokens). Points come from a plan file (:func:`read_plan`) or from a grid of command-line
lists (:func:`grid_points`); :func:`plan_points` serves ``qtsim validate`` and ``qtsim fleet
validate`` alike. :func:`holdout_conflicts` finds the points whose model and batch calibrated the
profile (the circularity the validation exists to avoid).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path

from qtsim.errors import QtsimError, read_user_file
from qtsim.model.architecture import from_config, load_config
from qtsim.model.precision import get_precision
from qtsim.model.workload import DEFAULT_INT8_THRESHOLD, FOUR_BIT, BnbSettings, Workload
from qtsim.profiles.profile import HardwareProfile

#: a plan's defaults: new tokens K and prompt tokens per query
PLAN_NEW_TOKENS = 32
PLAN_PROMPT_TOKENS = 16


def point_workload(precision: str, batch: int, new_tokens: int, prompt_tokens: int,
                   double_quant: bool = False,
                   int8_threshold: float = DEFAULT_INT8_THRESHOLD) -> Workload:
    """The :class:`Workload` a validation point decodes.

    Settings its precision ignores are dropped (so a plan may set them for every point):
    double quantisation applies to NF4/FP4 only, the LLM.int8() threshold to INT8 only.
    """
    return Workload(get_precision(precision).name, int(batch), int(new_tokens),
                    int(prompt_tokens), point_bnb(precision, double_quant, int8_threshold))


def point_bnb(precision: str, double_quant: bool = False,
              int8_threshold: float = DEFAULT_INT8_THRESHOLD) -> BnbSettings:
    """The bitsandbytes settings that apply to ``precision`` (see :func:`point_workload`)."""
    p = get_precision(precision).name
    return BnbSettings(bool(double_quant) and p in FOUR_BIT,
                       int8_threshold if p == "int8" else DEFAULT_INT8_THRESHOLD)


@dataclass(frozen=True)
class ValidationPoint:
    """One held-out point: the architecture ``model`` (shipped name or config.json path) served
    the ``workload`` (its batch a whole number of sequences)."""

    model: str
    workload: Workload

    @property
    def batch(self) -> int:
        """Sequences decoded together (the hold-out check and decode specs key on it)."""
        return int(self.workload.batch)

    def to_dict(self) -> dict:
        """Plain values (JSON) that :meth:`from_dict` reads back, e.g. for a fleet's Ray jobs."""
        w = self.workload
        return {"model": self.model, "precision": w.precision, "batch": int(w.batch),
                "new_tokens": int(w.new_tokens), "prompt_tokens": int(w.prompt_tokens),
                "double_quant": w.bnb.double_quant, "int8_threshold": w.bnb.int8_threshold}

    @classmethod
    def from_dict(cls, d: dict) -> ValidationPoint:
        return cls(d["model"], point_workload(d["precision"], d["batch"], d["new_tokens"],
                                              d["prompt_tokens"], d.get("double_quant", False),
                                              d.get("int8_threshold", DEFAULT_INT8_THRESHOLD)))


def grid_points(models, precisions, batches, template: Workload) -> list[ValidationPoint]:
    """Every model x precision x batch, at ``template``'s tokens and bitsandbytes settings."""
    t = template
    return [ValidationPoint(m, point_workload(p, b, t.new_tokens, t.prompt_tokens,
                                              t.bnb.double_quant, t.bnb.int8_threshold))
            for m in models for p in precisions for b in batches]


def read_plan(path: str) -> tuple[dict, list[ValidationPoint]]:
    """A validation plan (TOML): ``[validation]`` defaults and ``[[points]]`` (model, precision,
    batch; optional new_tokens, prompt_tokens, and bitsandbytes settings under transformers'
    names ``bnb_4bit_use_double_quant`` and ``llm_int8_threshold``, in ``[validation]`` for every
    point or per point), or ``[grid]`` with lists to cross."""
    text = read_user_file(path, QtsimError, "no such validation plan")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise QtsimError(f"{path}: not valid TOML ({e})") from None
    opts = doc.get("validation", {})
    defaults = {"new_tokens": int(opts.get("new_tokens", PLAN_NEW_TOKENS)),
                "prompt_tokens": int(opts.get("prompt_tokens", PLAN_PROMPT_TOKENS)),
                "bnb_4bit_use_double_quant": opts.get("bnb_4bit_use_double_quant", False),
                "llm_int8_threshold": opts.get("llm_int8_threshold", DEFAULT_INT8_THRESHOLD)}
    rows = []
    for i, row in enumerate(doc.get("points", [])):
        missing = [k for k in ("model", "precision", "batch") if k not in row]
        if missing:
            raise QtsimError(f"{path}: points[{i}] lacks {missing[0]!r}")
        rows.append({**defaults, **row})
    g = doc.get("grid")
    if g:
        rows += [{**defaults, "model": m, "precision": pr, "batch": b}
                 for m in g["models"] for pr in g["precisions"] for b in g["batches"]]
    if not rows:
        raise QtsimError(f"{path}: the plan lists no points ([[points]] or [grid])")
    return opts, [_plan_point(path, r) for r in rows]


def _plan_point(path, row: dict) -> ValidationPoint:
    """One plan row, checked (one-line errors naming the plan)."""
    get_precision(str(row["precision"]))
    dq = row["bnb_4bit_use_double_quant"]
    if not isinstance(dq, bool):
        raise QtsimError(f"{path}: bnb_4bit_use_double_quant must be true or false, got {dq!r}")
    try:
        bnb = point_bnb(str(row["precision"]), dq, row["llm_int8_threshold"])
    except QtsimError as e:
        raise QtsimError(f"{path}: {e}".replace("--int8-threshold", "llm_int8_threshold")) from None
    b, k, pr = int(row["batch"]), int(row["new_tokens"]), int(row["prompt_tokens"])
    if b < 1 or k < 2 or pr < 1:
        raise QtsimError(f"{path}: {row['model']} {row['precision']} batch {b} new_tokens {k} "
                         f"prompt_tokens {pr}: batch >= 1, new_tokens >= 2 and prompt_tokens >= 1 "
                         "needed")
    return ValidationPoint(str(row["model"]),
                           Workload(get_precision(str(row["precision"])).name, b, k, pr, bnb))


@dataclass(frozen=True)
class ValidationRequest:
    """The points a validation run asks for: a plan file (``plan_path``), or every ``models`` x
    ``precisions`` x ``batches`` at ``template``'s tokens and bitsandbytes settings, measured
    ``reps`` times (a plan's own ``reps`` wins)."""

    plan_path: str | None = None
    models: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ("fp16", "int8", "nf4")
    batches: tuple[int, ...] = (1, 4)
    template: Workload = Workload(new_tokens=PLAN_NEW_TOKENS, prompt_tokens=PLAN_PROMPT_TOKENS)
    reps: int = 3


def plan_points(request: ValidationRequest):
    """(points, reps, {model path: (config without qtsim keys, name)}) of a validation run.

    From a plan file (model paths relative to it) or the request's grid; every architecture is
    checked (unsupported ones refused) before anything is measured.
    """
    reps = request.reps
    if request.plan_path:
        opts, points = read_plan(request.plan_path)
        reps = int(opts.get("reps", reps))
        base = Path(request.plan_path).parent
        points = [p if Path(p.model).is_absolute() or not (base / p.model).exists()
                  else dataclasses.replace(p, model=str(base / p.model)) for p in points]
    elif request.models:
        points = grid_points(request.models, request.precisions, request.batches,
                             request.template)
    else:
        raise QtsimError("give --model (with --precision/--batch) or --plan")
    configs = {}
    for pt in points:
        if pt.model not in configs:
            cfg, name, _ = load_config(pt.model)
            from_config(cfg, name=name)
            configs[pt.model] = ({k: v for k, v in cfg.items() if not k.startswith("_qtsim")}, name)
    return points, reps, configs


def calibrated_points(profile: HardwareProfile, points, model_names: dict[str, str]) -> list:
    """The points whose model *and* batch were used in the profile's calibration decodes.

    ``model_names`` maps each point's model argument to the architecture name the raw data
    records. Calibration microbenchmarks (single linear layers) never conflict.
    """
    used = set(profile.provenance.get("calibrated_points", []))
    return [pt for pt in points
            if f"decode:{model_names.get(pt.model, pt.model)}:b{pt.batch}" in used]


def holdout_conflicts(profile: HardwareProfile, points, model_names: dict[str, str]) -> list[str]:
    """One line per point of :func:`calibrated_points`, for refusals and reports."""
    return [f"{pt.model} batch {pt.batch} was used to calibrate {profile.name}"
            for pt in calibrated_points(profile, points, model_names)]
