"""One schema for hardware profiles and host parts (DESIGN.md sec. 4): every rule, stated once.

A profile (``hardware_profiles/*.toml``) and a host part (``hardware_profiles/hosts/*.toml``) share
one shape: a head table (``[hardware]`` or ``[host]``), ``[provenance]`` and ``[physical.NAME]``
constants, each ``{value, stderr, unit, source, basis}`` (:class:`Param`); a profile also carries
``[constants]`` and ``[fit]``, whose ``[fit.model_error]`` has the shape of
:data:`MODEL_ERROR_HALF_WIDTHS`. :data:`PROFILE` and :data:`HOST` say what each must hold and
:func:`check` applies them: every reader calls it, and a defect is one line naming the file and
the key (the CLI prints it and exits 2).
"""

from __future__ import annotations

import functools
import math
import re
import tomllib
from dataclasses import dataclass
from typing import NoReturn

from qtsim.errors import ProfileError, suggest
from qtsim.model.paths import FAMILIES, path_param_names, resolve_path
from qtsim.model.physical import GLOBAL_PARAMS

SCHEMA_VERSION = 1
#: where a constant's value comes from (``[physical.NAME] source``)
SOURCES = ("spec", "prior", "published", "calibrated", "fixed", "assumed", "derived")
#: constants that must be > 0, not merely >= 0 (a bandwidth divides)
POSITIVE_PARAMS = ("mem_bw_gbs",)
#: ``[hardware]`` datasheet numbers: unit and plausible range (dense, not sparse); outside it is a
#: typo. ``qtsim profiles new`` holds user-entered figures to these ranges.
DATASHEET = {
    "memory_gib": ("GiB", 0.5, 4096.0),
    "mem_bw_gbs": ("GB/s", 10.0, 100_000.0),
    "fp16_tflops": ("TFLOPS", 0.1, 100_000.0),
    "int8_tops": ("TOPS", 0.1, 200_000.0),
    "tdp_w": ("W", 5.0, 5_000.0),
}
#: host constants are named by these prefixes (host time per op, per launch, per step, per call)
HOST_PARAM_PREFIXES = ("h_op", "h_launch", "h_step", "h_call_", "h_fused4bit", "h_prefill")
#: every ``[hardware]`` key qtsim reads or writes; anything else (``mem_bw_gbsx``) is a typo that
#: would be silently ignored, so it is refused
HARDWARE_KEYS = (
    "name", "aliases", "vendor", "architecture", "device_type", "memory_gib", "mem_bw_gbs",
    "fp16_tflops", "int8_tops", "fp8_tflops", "fp4_tflops", "tdp_w", "idle_w", "memory_type",
    "segment",
    "native_formats", "native_dtype", "compute_dtype_4bit", "runtime_overhead_gib", "sources",
    "device_name", "logical_cores", "cpu_threads", "t_call_includes_dispatch")
#: the tables a profile holds
PROFILE_TABLES = ("schema_version", "hardware", "provenance", "constants", "physical", "fit")
#: the fields of one ``[physical.NAME]`` constant
PARAM_FIELDS = ("value", "stderr", "unit", "source", "basis")
#: constants of the physical model outside the kernel-path, layer and host families that
#: :func:`is_known_param` matches by pattern (the power and energy constants come from
#: :data:`qtsim.model.physical.GLOBAL_PARAMS` and from the spec priors' own names)
EXTRA_PARAMS = ("t_kernel_s", "t_step_s", "t_layer_s", "t_layertok_s", "t_vocab_s", "p_idle_w",
                "p_awake_w", "p_cap_w",
                "prefill_tok_scale", "h_op_s", "h_launch_s", "h_step_s", "h_prefill_s",
                "h_fused4bit_max_batch")
#: ``[fit.model_error.QUANTITY]``: 68% (required) and 95% band half-widths of
#: |log(measured / predicted)|, finite and >= 0
MODEL_ERROR_HALF_WIDTHS = ("q68", "q95")


@dataclass(frozen=True)
class Param:
    """One physical constant with its standard error, unit and provenance."""

    value: float
    stderr: float
    unit: str
    source: str
    basis: str = ""

    @property
    def relative_stderr(self) -> float:
        return self.stderr / abs(self.value) if self.value else math.inf

    def to_table(self) -> dict:
        """The ``[physical.NAME]`` table of this constant."""
        return {"value": self.value, "stderr": self.stderr, "unit": self.unit,
                "source": self.source, "basis": self.basis}


@dataclass(frozen=True)
class DocSchema:
    """What one kind of file must hold; messages name ``head`` and the key."""

    head: str  # the table naming the hardware or host
    head_required: tuple[str, ...]  # keys the head table must have
    head_positive: tuple[str, ...]  # of those, positive finite numbers
    provenance_sources: tuple[str, ...]  # allowed [provenance] source, the default first
    required_params: tuple[str, ...]  # constants it must have
    native_path: bool  # must hold the coefficients of its native 16-bit path (or b1/bn split)
    param_prefixes: tuple[str, ...] = ()  # allowed constant names (empty: any)
    schema_version: bool = True  # top-level schema_version = SCHEMA_VERSION required
    default_source: str = ""  # a constant's source when it states none ("" = required)
    default_unit: str = ""


PROFILE = DocSchema(
    head="hardware", head_required=("name", "device_type", "memory_gib", "tdp_w"),
    head_positive=("memory_gib", "tdp_w"),
    provenance_sources=("spec", "calibrated", "published"),
    required_params=GLOBAL_PARAMS, native_path=True)
HOST = DocSchema(
    head="host", head_required=("name",), head_positive=(),
    provenance_sources=("prior", "published", "calibrated"),
    required_params=("h_op_s",), native_path=False, param_prefixes=HOST_PARAM_PREFIXES,
    schema_version=False, default_source="prior", default_unit="s")


def parse(text: str, schema: DocSchema, where: str) -> tuple[dict, dict[str, Param]]:
    """Parse TOML ``text`` and :func:`check` it: (the document, its constants as Params)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        _fail(where, f"not valid TOML ({e})")
    return doc, check(doc, schema, where)


def check(doc: dict, schema: DocSchema, where: str) -> dict[str, Param]:
    """Check a parsed profile or host document against ``schema``; its constants as Params.

    Raises a one-line :class:`ProfileError` ``"WHERE: [TABLE] KEY ..."`` at the first defect.
    """
    if schema.schema_version and doc.get("schema_version") != SCHEMA_VERSION:
        _fail(where, f"schema_version must be {SCHEMA_VERSION}, got {doc.get('schema_version')!r}")
    head = doc.get(schema.head)
    if not isinstance(head, dict):
        _fail(where, f"missing [{schema.head}] table")
    _check_head(head, schema, where)
    src = _table(doc, "provenance", where).get("source", schema.provenance_sources[0])
    if src not in schema.provenance_sources:
        _fail(where, f"[provenance] source must be {_or(schema.provenance_sources)}, got {src!r}")
    raw = doc.get("physical")
    if not isinstance(raw, dict) or not raw:
        _fail(where, "missing [physical] constants")
    if schema is PROFILE:
        _check_profile_names(doc, head, raw, where)
    physical = {k: _param(k, entry, schema, where) for k, entry in raw.items()}
    missing = [k for k in schema.required_params if k not in physical]
    if missing:
        _fail(where, f"[physical] lacks {', '.join(missing)}")
    if schema.native_path:
        _check_native_path(physical, head.get("native_dtype", "fp16"), where)
    if schema is PROFILE:
        _check_power(head, physical, where)
    _check_model_error(_table(doc, "fit", where).get("model_error"), where)
    return physical


def is_known_param(name: str) -> bool:
    """Whether ``name`` is a constant the physical model reads: a kernel-path coefficient
    (``t_call_<path>_s``...), a per-family layer floor, a host constant, a prefill scale, or one
    of the named global, power and energy constants."""
    return name in _known_names() or bool(_PARAM_RE.match(name))


_PATHS = "|".join(sorted({*FAMILIES, "fp32"}, key=len, reverse=True))
_PARAM_RE = re.compile(
    rf"^(?:(?:t_call|t_weight|t_tokweight|h_call)_(?:{_PATHS})(?:_b1|_bn)?_s"
    rf"|t_layer_(?:{_PATHS})(?:_b1|_bn)?_s|t_layertok_(?:{_PATHS})_s"
    rf"|prefill_tok_scale_(?:{_PATHS}))$")


@functools.cache
def _known_names() -> frozenset[str]:
    """The named constants (every spec prior is one of them or matches :data:`_PARAM_RE`:
    tests/test_profiles.py checks it)."""
    return frozenset((*GLOBAL_PARAMS, *EXTRA_PARAMS))


def _check_profile_names(doc: dict, head: dict, raw: dict, where: str) -> None:
    """Refuse unknown tables, ``[hardware]`` keys, constants and constant fields: a misspelled
    name would otherwise be read as absent and its value silently ignored."""
    for name, known, what in ((list(doc), PROFILE_TABLES, "table"),
                              (list(head), HARDWARE_KEYS, "[hardware] key")):
        for k in name:
            if k not in known:
                _fail(where, f"unknown {what} {k!r}{suggest(k, known)}")
    for k, entry in raw.items():
        if not is_known_param(k):
            _fail(where, f"[physical.{k}] is not a constant of qtsim's model"
                         f"{suggest(k, sorted(_known_names()))}")
        for f in entry if isinstance(entry, dict) else ():
            if f not in PARAM_FIELDS:
                _fail(where, f"[physical.{k}] unknown field {f!r}{suggest(f, PARAM_FIELDS)}")


def _check_power(head: dict, physical: dict, where: str) -> None:
    """Datasheet figures inside their plausible ranges (:data:`DATASHEET`); no idle or other
    power above the board's limit (``tdp_w``)."""
    for key, (unit, lo, hi) in DATASHEET.items():
        v = head.get(key)
        if v is not None and (not _is_number(v) or not lo <= v <= hi):
            _fail(where, f"[hardware] {key} = {v!r} is outside {lo:g}-{hi:g} {unit} (a datasheet "
                         "figure, dense: `qtsim profiles new` makes a profile from five of them)")
    tdp = float(head["tdp_w"])
    idle = head.get("idle_w")
    if idle is not None and (not _is_number(idle) or not 0 <= idle <= tdp):
        _fail(where, f"[hardware] idle_w = {idle!r} must lie between 0 and tdp_w = {tdp:g} W")
    cap = physical.get("p_cap_w")  # a measured power limit (a CPU's RAPL PL1) may exceed TDP
    limit = max(tdp, cap.value if cap is not None else 0.0)
    for k, p in physical.items():
        if p.unit == "W" and k != "p_cap_w" and p.value > limit * (1 + 1e-9):
            _fail(where, f"[physical.{k}] {p.value:g} W exceeds [hardware] tdp_w = {tdp:g} W, the "
                         "board's power limit" + (f" (and p_cap_w = {limit:g} W)" if cap else ""))


def _fail(where: str, msg: str) -> NoReturn:
    raise ProfileError(f"{where}: {msg}")


def _table(doc: dict, name: str, where: str) -> dict:
    """An optional top-level table (empty when absent)."""
    t = doc.get(name, {})
    if not isinstance(t, dict):
        _fail(where, f"[{name}] must be a table")
    return t


def _or(words) -> str:
    return ", ".join(words[:-1]) + " or " + words[-1]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_head(head: dict, schema: DocSchema, where: str) -> None:
    """Required keys present; positive keys positive and finite; no nan/inf anywhere."""
    t = schema.head
    for key in schema.head_required:
        if key not in head:
            _fail(where, f"[{t}] lacks {key!r}")
    for key in schema.head_positive:
        v = head[key]
        if not _is_number(v) or not (v > 0) or math.isinf(v):
            _fail(where, f"[{t}] {key} must be a positive number, got {v!r}")
    for key, v in head.items():  # nan or inf anywhere in the head is a broken file, not a value
        if isinstance(v, float) and not math.isfinite(v):
            _fail(where, f"[{t}] {key} must be a finite number, got {v!r}")


def _param(k: str, entry, schema: DocSchema, where: str) -> Param:
    """One ``[physical.NAME]`` table checked and read: value, stderr finite numbers >= 0."""
    if schema.param_prefixes and not k.startswith(schema.param_prefixes):
        _fail(where, f"[physical.{k}] is not a host constant "
                     f"(host constants start with {', '.join(schema.param_prefixes)})")
    if not isinstance(entry, dict) or "value" not in entry or "stderr" not in entry:
        _fail(where, f"[physical.{k}] needs value and stderr")
    try:
        val, se = float(entry["value"]), float(entry["stderr"])
    except (TypeError, ValueError):
        _fail(where, f"[physical.{k}] value and stderr must be numbers")
    if not (math.isfinite(val) and math.isfinite(se)) or val < 0 or se < 0:
        _fail(where, f"[physical.{k}] value and stderr must be finite and >= 0, got {val}, {se}")
    if k in POSITIVE_PARAMS and val <= 0:
        _fail(where, f"[physical.{k}] must be > 0")
    src = entry.get("source", schema.default_source)
    if src not in SOURCES:
        _fail(where, f"[physical.{k}] source must be one of {', '.join(SOURCES)}, got {src!r}")
    return Param(val, se, str(entry.get("unit", schema.default_unit)), src,
                 str(entry.get("basis", "")))


def _check_native_path(physical: dict, native: str, where: str) -> None:
    """The native 16-bit path's coefficients, unsplit or split at batch 1 / batch n."""
    for side in ("b1", "bn"):
        try:
            resolve_path(physical, f"{native}_{side}")
        except ProfileError:
            _fail(where, f"[physical] lacks the native {native} path "
                         f"({', '.join(path_param_names(native))} or its _b1/_bn split)")


def _check_model_error(rec, where: str) -> None:
    """``[fit.model_error]``: a table; ``rho`` in [0, 1]; each quantity row's half-widths >= 0."""
    if rec is None:
        return
    if not isinstance(rec, dict):
        _fail(where, "[fit.model_error] must be a table")
    rho = rec.get("rho", 0.0)
    if not _is_number(rho) or not 0.0 <= rho <= 1.0:
        _fail(where, f"[fit.model_error] rho must be a number in [0, 1], got {rho!r}")
    for q, row in rec.items():
        if not isinstance(row, dict):
            continue
        for key in MODEL_ERROR_HALF_WIDTHS:
            v = row.get(key, None if key == "q68" else 0.0)
            if not _is_number(v) or not math.isfinite(v) or v < 0:
                _fail(where, f"[fit.model_error.{q}] {key} must be a finite number >= 0, "
                             f"got {v!r}")
