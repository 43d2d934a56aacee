"""Trust pillar inputs: accuracies from a trust table, with provenance (DESIGN.md sec. 2).

Accuracy cannot be measured without model weights, so T_SI (eq. 2) comes from a table: the
paper's published accuracies shipped in ``data/reference/paper_figures.csv`` (rows with
``quantity == accuracy``), or a user's CSV with columns ``model,task,precision,accuracy,source``.
When neither has the model, T_SI = 1 is *assumed* and the report says so.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from qtsim.errors import QtsimError


@dataclass(frozen=True)
class TrustEstimate:
    t_si: float
    status: str  # "published", "user", "assumed"
    source: str
    accuracy: float | None = None
    accuracy_ref: float | None = None
    task: str = ""

    def to_dict(self):
        return {"t_si": self.t_si, "status": self.status, "source": self.source,
                "accuracy": self.accuracy, "accuracy_ref": self.accuracy_ref, "task": self.task}


def _norm_model(name: str) -> str:
    n = name.lower()
    for suffix in ("-instruct", "-base", "-v0.3", "-v0.1"):
        n = n.replace(suffix, "")
    return n


def read_trust_table(path: str | None = None) -> list[dict]:
    """Rows ``{model, task, precision, accuracy, source}`` from the shipped table or a CSV."""
    if path is None:
        text = (resources.files("qtsim.data.reference") / "paper_figures.csv").read_text()
        rows = []
        for r in csv.DictReader(text.splitlines()):
            if r["quantity"] == "accuracy":
                rows.append({"model": r["model"], "task": r["task"], "precision": r["precision"],
                             "accuracy": float(r["value"]),
                             "source": f"published: paper {r['where_in_paper']} ({r['gpu']})"})
        return rows
    p = Path(path)
    if not p.is_file():
        raise QtsimError(f"{path}: no such trust table")
    rows = []
    with p.open() as fh:
        reader = csv.DictReader(fh)
        need = {"model", "task", "precision", "accuracy"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise QtsimError(f"{path}: trust table needs columns {', '.join(sorted(need))}")
        for i, r in enumerate(reader, start=2):
            try:
                acc = float(r["accuracy"])
            except ValueError:
                raise QtsimError(f"{path}:{i}: accuracy {r['accuracy']!r} is not a number") from None
            if not 0.0 <= acc <= 1.0:
                raise QtsimError(f"{path}:{i}: accuracy must be a fraction in [0, 1], got {acc}")
            rows.append({**r, "accuracy": acc, "source": f"user: {r.get('source') or path}"})
    return rows


def lookup_trust(model: str, precision: str, reference: str = "fp16",
                 table: str | None = None, task: str | None = None) -> TrustEstimate:
    """T_SI = acc(precision) / acc(reference) for ``model`` (eq. 2), or an explicit assumption."""
    if precision in ("fp16", "bf16"):
        return TrustEstimate(1.0, "reference", "the reference precision itself")
    rows = read_trust_table(table)
    key = _norm_model(model)
    mine = [r for r in rows if _norm_model(r["model"]) == key and (task is None or r["task"] == task)]
    for t in sorted({r["task"] for r in mine}, key=lambda t: (t != "gsm8k", t)):
        acc = [r for r in mine if r["task"] == t and r["precision"] == precision]
        ref = [r for r in mine if r["task"] == t and r["precision"] in (reference, "fp16", "bf16")]
        if acc and ref:
            status = "user" if table else "published"
            return TrustEstimate(acc[0]["accuracy"] / ref[0]["accuracy"], status,
                                 acc[0]["source"], acc[0]["accuracy"], ref[0]["accuracy"], t)
    return TrustEstimate(1.0, "assumed",
                         "assumed: no accuracy loss (no published or user figure for this model "
                         "and precision; pass --trust FILE)")
