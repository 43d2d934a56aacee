"""Trust pillar inputs: accuracies from a trust table, with provenance (DESIGN.md sec. 2).

Accuracy of real LLMs cannot be measured here without their weights, so T_SI (eq. 2) comes from
a table:

- the shipped ``data/reference/trust_table.csv``: the paper's published accuracies (sec. 3.1,
  4.3, 4.3.1, 4.5), status ``published``;
- or a user's CSV (``--trust FILE``) with columns ``model,task,precision,accuracy`` and optional
  ``source``, ``kind``, ``depth``, ``status``, ``note``; status ``measured`` unless the row says
  ``published``.

A table may hold one task at several depths (the trust probe's CSV, ``qtsim trust probe``:
one row per hop count k, ``depth`` = k): the row at the depth asked for is used, else the
deepest, and T_SI divides by the reference row at the same depth. Its ``precision`` column may
name a kernel-path family (``int8_t0``: LLM.int8() at threshold 0; ``nf4dq``: NF4 with double
quantisation; :mod:`qtsim.model.paths`), which wins over the plain precision's row when the
query runs that family.

``kind`` is ``accuracy`` (a task accuracy in [0, 1]; T_SI = acc_p / acc_ref, eq. 2) or ``ratio``
(the row already holds T_SI = acc_p / acc_ref, for figures published only as a relative loss).

Reasoning depth. The paper argues (eq. 7, Thm. A.5) that quantization noise compounds per
logical step: accuracy is a product over steps. qtsim's compounding model (DESIGN.md sec. 2) is

    T(p, M) = T_ref(M) (1 - eps_p)^M   =>   T_SI(p, M) = (1 - eps_p)^M,

with eps_p the extra per-step error of precision p. One table row at the task's depth M0 fixes
``eps_p = 1 - T_SI0 ** (1 / M0)`` (:func:`fit_eps`), and T_SI at another depth M is
``T_SI0 ** (M / M0)`` (:func:`t_si_at_depth`), flagged ``extrapolated``. Task depths M0
(:data:`TASK_DEPTH`, logical steps, not tokens):

- GSM8K: the paper (sec. 4.2) gives 2-8 arithmetic steps per problem; M0 = 5, the middle.
- MathQA: the paper calls it deeper than GSM8K but gives no count; M0 = 8, the top of GSM8K's
  range, taken as a floor. Override with a ``depth`` column in your table.

When neither table has the model and precision, T_SI is *assumed* (1.0, no accuracy loss,
unless the caller passes another value) and the status and source say so: never silently.
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from importlib import resources

from qtsim.errors import QtsimError, read_user_file
from qtsim.errors import QtsimError as _Err
from qtsim.model.architecture import load_architecture

TASK_DEPTH = {"gsm8k": 5.0, "mathqa": 8.0}
DEFAULT_DEPTH = 5.0  # tasks the table does not know: GSM8K's documented default
STATUSES = ("reference", "measured", "published", "extrapolated", "assumed")
SHIPPED_TABLE = "trust_table.csv"
ASSUMED_SOURCE = ("assumed: no accuracy loss (no published or user figure for this model and "
                  "precision; pass --trust FILE)")


@dataclass(frozen=True)
class TrustEstimate:
    """T_SI for one (model, precision) and where it comes from.

    ``status``: ``reference`` (the native precision itself, 1 by definition), ``measured`` (a
    user's table), ``published`` (the paper), ``extrapolated`` (a table row moved to another
    reasoning depth by the compounding model) or ``assumed`` (no figure: ``t_si`` is an
    assumption, stated in ``source``).
    """

    t_si: float
    status: str
    source: str
    accuracy: float | None = None
    accuracy_ref: float | None = None
    task: str = ""
    depth: float | None = None  # reasoning depth M this T_SI is for (logical steps)
    depth_ref: float | None = None  # depth M0 of the table row it comes from
    eps_per_step: float | None = None  # the compounding model's eps_p
    note: str = ""

    @property
    def label(self) -> str:
        """One word for reports: measured, published, extrapolated, assumed or reference."""
        return self.status

    def to_dict(self):
        return {"t_si": self.t_si, "status": self.status, "source": self.source,
                "accuracy": self.accuracy, "accuracy_ref": self.accuracy_ref, "task": self.task,
                "depth": self.depth, "depth_ref": self.depth_ref,
                "eps_per_step": self.eps_per_step, "note": self.note}


# ---- the compounding model (pure functions) ---------------------------------------------------
def fit_eps(t_si_ref, depth_ref):
    """Per-step extra error eps_p from T_SI at depth M0: 1 - T_SI0^(1/M0) (DESIGN.md sec. 2)."""
    if not (t_si_ref > 0) or not (depth_ref > 0):
        raise QtsimError(f"cannot fit eps from T_SI {t_si_ref} at depth {depth_ref}: both must be > 0")
    return 1.0 - float(t_si_ref) ** (1.0 / float(depth_ref))


def t_si_compound(eps_per_step, depth):
    """T_SI(p, M) = (1 - eps_p)^M: the trust ratio after M compounding logical steps (eq. 7)."""
    return (1.0 - float(eps_per_step)) ** float(depth)


def t_si_at_depth(t_si_ref, depth_ref, depth):
    """T_SI moved from depth M0 to depth M: T_SI0^(M / M0) (same eps_p)."""
    return t_si_compound(fit_eps(t_si_ref, depth_ref), depth)


def task_depth(task: str) -> float:
    """Documented default reasoning depth M0 of a task (GSM8K 5, MathQA 8; others 5)."""
    return TASK_DEPTH.get(str(task).lower(), DEFAULT_DEPTH)


# ---- tables -----------------------------------------------------------------------------------
def _norm_model(name: str) -> str:
    n = name.lower()
    for suffix in ("-instruct", "-base", "-v0.3", "-v0.1"):
        n = n.replace(suffix, "")
    return n


def _parse_rows(reader, where: str, default_status: str, prefix: str) -> list[dict]:
    need = {"model", "task", "precision", "accuracy"}
    if not reader.fieldnames or not need <= set(reader.fieldnames):
        raise QtsimError(f"{where}: trust table needs columns {', '.join(sorted(need))}")
    rows = []
    for i, r in enumerate(reader, start=2):
        try:
            acc = float(r["accuracy"])
        except (TypeError, ValueError):
            raise QtsimError(f"{where}:{i}: accuracy {r['accuracy']!r} is not a number") from None
        kind = (r.get("kind") or "accuracy").strip().lower()
        if kind not in ("accuracy", "ratio"):
            raise QtsimError(f"{where}:{i}: kind must be accuracy or ratio, got {kind!r}")
        if kind == "accuracy" and not 0.0 <= acc <= 1.0:
            raise QtsimError(f"{where}:{i}: accuracy must be a fraction in [0, 1], got {acc}")
        if kind == "ratio" and not 0.0 < acc <= 1.5:
            raise QtsimError(f"{where}:{i}: a ratio row's accuracy column holds T_SI in (0, 1.5], got {acc}")
        depth_txt = (r.get("depth") or "").strip()
        try:
            depth = float(depth_txt) if depth_txt else task_depth(r["task"])
        except ValueError:
            raise QtsimError(f"{where}:{i}: depth {depth_txt!r} is not a number") from None
        if not depth > 0:
            raise QtsimError(f"{where}:{i}: depth must be > 0, got {depth}")
        status = (r.get("status") or default_status).strip().lower()
        if status not in ("measured", "published"):
            raise QtsimError(f"{where}:{i}: status must be measured or published, got {status!r}")
        rows.append({"model": r["model"].strip(), "task": r["task"].strip().lower(),
                     "precision": r["precision"].strip().lower(), "accuracy": acc, "kind": kind,
                     "depth": depth, "status": status, "note": (r.get("note") or "").strip(),
                     "source": f"{prefix}{(r.get('source') or '').strip() or where}"})
    return rows


def read_trust_table(path: str | None = None) -> list[dict]:
    """Rows ``{model, task, precision, accuracy, kind, depth, status, note, source}``.

    ``path=None`` reads the shipped table (the paper's published figures).
    """
    if path is None:
        text = (resources.files("qtsim.data.reference") / SHIPPED_TABLE).read_text()
        return _parse_rows(csv.DictReader(text.splitlines()), SHIPPED_TABLE, "published",
                           "published: ")
    text = read_user_file(path, QtsimError, "no such trust table")
    return _parse_rows(csv.DictReader(text.splitlines()), str(path), "measured", "user: ")


def _at_depth(rows: list[dict], depth: float | None) -> dict:
    """The row at reasoning depth ``depth`` if the table has one, else the deepest row."""
    if depth is not None:
        for r in rows:
            if math.isclose(r["depth"], float(depth)):
                return r
    return max(rows, key=lambda r: r["depth"])


def _ratio(rows: list[dict], precisions, reference: str, depth: float | None = None):
    """(T_SI, acc, acc_ref, row) from one task's rows, or None.

    ``precisions``: the names to look for, most specific first (a kernel-path family such as
    ``nf4dq`` or ``int8_t0``, then the plain precision). A task measured at several depths
    (a probe's hop counts) gives the row at ``depth``, else its deepest; the reference row is
    the one at the same depth.
    """
    acc = []
    for p in precisions:
        acc = [r for r in rows if r["precision"] == p]
        if acc:
            break
    if not acc:
        return None
    row = _at_depth(acc, depth)
    if row["kind"] == "ratio":
        return row["accuracy"], None, None, row
    refs = [r for r in rows if r["precision"] in (reference, "fp16", "bf16")
            and r["kind"] == "accuracy" and math.isclose(r["depth"], row["depth"])]
    if not refs or refs[0]["accuracy"] <= 0:
        return None
    return row["accuracy"] / refs[0]["accuracy"], row["accuracy"], refs[0]["accuracy"], row


@functools.cache
def _shipped_rows() -> tuple[dict, ...]:
    return tuple(read_trust_table())


@functools.cache
def _published_arch(model: str):
    """The shipped architecture a published row's model name stands for (None when qtsim ships
    no config of it)."""
    try:
        return load_architecture(_norm_model(model))
    except _Err:
        return None


def _candidate_rows(model: str, arch, table: str | None, task: str | None):
    """(rows, how they matched) to look T_SI up in, best first: the user's table matched by the
    model's name (the user's own naming), then the shipped published table matched by
    architecture (the same decoder class and shapes as the model the paper evaluated), never by
    name alone. Also a note when a published model of that name has other shapes."""
    key = _norm_model(model)
    groups, note = [], ""
    if table is not None:
        mine = [r for r in read_trust_table(table) if _norm_model(r["model"]) == key]
        groups.append((mine, ""))
    if arch is None:
        arch = _published_arch(model)
    published = []
    for r in _shipped_rows():
        pa = _published_arch(r["model"])
        if pa is None or arch is None:
            continue
        if pa.shape_key == arch.shape_key:
            published.append(r)
        elif _norm_model(r["model"]) == key and not note:
            note = (f"a published figure exists for {r['model']}, but this {model!r} config is "
                    f"another network ({arch.shape_text()} vs {pa.shape_text()}): not used")
    groups.append((published, "matched by architecture"))
    if task is not None:
        groups = [([r for r in g if r["task"] == task.lower()], how) for g, how in groups]
    return groups, note


def lookup_trust(model: str, precision: str, reference: str = "fp16",
                 table: str | None = None, task: str | None = None,
                 depth: float | None = None, assume: float = 1.0, arch=None,
                 family: str | None = None) -> TrustEstimate:
    """T_SI = acc(precision) / acc(reference) for ``model`` (eq. 2), or an explicit assumption.

    Parameters
    ----------
    model, precision, reference : names; model variants (-instruct, -v0.3) match their base
    table : a user CSV; its rows (matched by model name) come first, the shipped table of the
        paper's figures (matched by architecture) fills in what it lacks
    task : restrict to one task (default: GSM8K first, then the others alphabetically)
    depth : reasoning depth M (logical steps) to report T_SI at; when it differs from the
        row's depth M0 the compounding model moves it and the status is ``extrapolated``
    assume : T_SI assumed when no row exists (default 1.0: no loss), stated in ``source``
    arch : the model's :class:`~qtsim.model.architecture.Architecture`; published figures
        apply only to the network the paper evaluated (same class and shapes), whatever the
        name. Without it, a shipped model of that name stands in.
    family : the kernel-path family the precision runs with its bitsandbytes settings
        (:func:`qtsim.model.paths.path_family`: ``int8_t0``, ``nf4dq``, ...); rows under that
        name win over rows under the plain precision
    """
    if precision in ("fp16", "bf16") or precision == reference:
        return TrustEstimate(1.0, "reference", "the reference precision itself", depth=depth)
    groups, mismatch = _candidate_rows(model, arch, table, task)
    for mine, how in groups:
        for t in sorted({r["task"] for r in mine}, key=lambda t: (t != "gsm8k", t)):
            names = [x for x in (family, precision) if x]
            got = _ratio([r for r in mine if r["task"] == t], names, reference, depth)
            if got is None:
                continue
            t0, acc, acc_ref, row = got
            m0 = row["depth"]
            eps = fit_eps(t0, m0) if t0 <= 1.0 else None
            note = row["note"]
            source = row["source"]
            if how and _norm_model(row["model"]) != _norm_model(model):
                source += f" ({row['model']}, {how}: {model} has the same shapes)"
            if depth is None or math.isclose(float(depth), m0) or eps is None:
                return TrustEstimate(t0, row["status"], source, acc, acc_ref, t, m0, m0,
                                     eps, note)
            t_m = t_si_compound(eps, depth)
            src = (f"extrapolated from {source} ({t} at depth M0 = {m0:g} steps, "
                   f"T_SI0 = {t0:.3f}, eps = {eps:.4f}/step) to depth M = {float(depth):g}: "
                   "T_SI = (1 - eps)^M")
            return TrustEstimate(t_m, "extrapolated", src, acc, acc_ref, t, float(depth), m0,
                                 eps, note)
    src = ASSUMED_SOURCE if assume == 1.0 else (
        f"assumed: T_SI = {assume:g} given by the caller (no published or user figure for this "
        "model and precision)")
    if mismatch:
        src += f"; {mismatch}"
    return TrustEstimate(float(assume), "assumed", src, depth=depth)
