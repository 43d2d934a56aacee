"""The paper's constants of a profile: alpha, gamma, phi(h, p) and eq. 18 B*, derived from its
physical constants (the ``[constants]`` table every profile carries).

Both ways a profile is made need them (spec-derived: :mod:`qtsim.profiles.priors`; calibrated:
:mod:`qtsim.calibration.fit.profile_builder`), and the simulator reports them
(:meth:`qtsim.simulate.simulator.Simulator.paper_constants`), so they live here, below all three.
"""

from __future__ import annotations

import numpy as np

from qtsim.model import paper, physical
from qtsim.model.architecture import ArchCounts
from qtsim.model.precision import get_precision
from qtsim.model.stats import band
from qtsim.model.workload import Workload
from qtsim.profiles.profile import HardwareProfile


def paper_constants(profile: HardwareProfile, counts: ArchCounts, workload: Workload,
                    params: dict) -> dict:
    """The paper's alpha, gamma, phi(h, p) (:func:`qtsim.model.physical.paper_constants`) and
    eq. 18 B* of ``workload``'s precision (with its bitsandbytes settings), derived at batch 1
    (``workload.batch`` and tokens are ignored) from ``params`` (central values, or draws of
    shape (n, 1)) of ``profile`` (already combined with its host part and stack)."""
    c = physical.paper_constants(counts, workload, params, profile.tdp_w, profile.native,
                                 profile.compute_dtype_4bit, overlap=profile.overlap)
    c["b_star_paper"] = paper.b_star(c["alpha_j_per_bit"], c["phi_j"],
                                     get_precision(workload.precision).bits)
    return c


def paper_constants_table(profile: HardwareProfile, counts: ArchCounts, reference_model: str,
                          precisions=("int8", "nf4"), n_draws: int = 400) -> dict:
    """The ``[constants]`` table of a profile: the paper's alpha, gamma, phi(h, p) and eq. 18 B*.

    Derived from the physical constants at batch 1 for ``reference_model`` (the paper's
    constants carry no model-size dependence, so they only mean something for a stated model);
    stderr is half the 16-84% range over Monte-Carlo draws of the profile's constants (equal to
    the standard deviation for a normal, and robust for B*, a ratio whose draws can pass near
    phi = 0). Also
    the model-free hardware alpha: J per bit of weight streamed, (e_byte + p_static / BW) / 8.
    """
    prof = profile.for_serving()
    flags = prof.model_flags()
    v = {**prof.values(), **flags}
    d = {**prof.draws(n_draws, 0), **flags}

    def per_bit(p):
        return (p["e_byte_j"] + p["p_awake_w"] / (p["mem_bw_gbs"] * 1e9)) / 8.0

    def stat(central, draws):  # robust to ratios whose draws pass near a pole (B* = alpha / phi)
        _, lo, hi = band(np.asarray(draws, float).ravel())
        return float(np.asarray(central)), float((hi - lo) / 2.0)

    a, a_se = stat(per_bit(v), per_bit(d))
    table = {"reference_model": reference_model, "reference_batch": 1, "context_tokens": 0,
             "alpha_j_per_weight_bit": float(f"{a:.6g}"), "alpha_j_per_weight_bit_stderr": float(f"{a_se:.4g}"),
             "note": ("the paper's constants (eq. 18, 19) derived from this profile's physical constants "
                      "at batch 1 for the reference model; stderr = half the 16-84% range over Monte-Carlo draws")}
    for p in precisions:
        w = Workload(p)
        c, cd = paper_constants(prof, counts, w, v), paper_constants(prof, counts, w, d)
        row = {}
        for k in ("alpha_j_per_bit", "gamma_j", "phi_j", "b_star_paper"):
            val, se = stat(c[k], cd[k])
            name = "b_star_eq18" if k == "b_star_paper" else k
            row[name] = float(f"{val:.6g}")
            row[f"{name}_stderr"] = float(f"{se:.4g}")
        table[p] = row
    return table
