"""Board power in states, and power capping (DESIGN.md sec. 2; issue 19).

A GPU decoding with Hugging Face ``generate`` is in one of these states, each a profile
constant (``[physical]``, W or J) with a prior, stderr and provenance:

- ``p_idle_w``, *deep idle*: no context, clocks down. Not spent while decoding; the floor of
  the awake prior and what an unused replica draws.
- ``p_awake_w``, *awake*: a context open and clocks up, the device waiting for the host
  between kernels. Public NVML meters read 100-110 W on an A100 and 70-100 W on an RTX 4090
  in host-bound HF decoding, far above deep idle, so whenever a step is host-bound this state
  decides the energy.
- *busy*: awake plus the dynamic energy of the work, ``e_byte_j`` per byte moved (whole board:
  DRAM, L2 and the SMs streaming it) and ``e_flop_j`` per FLOP.
- ``p_cap_w``, the *board limit* (NVML's enforced power limit; the TDP by default). A device
  whose busy power would exceed it lowers its clocks: its kernels take longer until the power
  fits (:func:`cap_stretch`), so time stretches and energy is not simply clipped.

Energy of a step of wall time T (host and device timelines composed), with dynamic energy
E_dyn = e_byte x bytes + e_flop x FLOPs:

    E = p_awake x T + E_dyn                                                            (P.1)

and while the device works (device timeline D) its power is p_awake + E_dyn / D (P.2). Where
that exceeds p_cap the device lowers its clocks by a factor s: dynamic power goes as f V^2 with
V roughly proportional to f (dynamic voltage and frequency scaling), so as f^3
(:data:`DVFS_EXPONENT`), and the dynamic energy of the same work as f^2. The device timeline
becomes D' = s D with

    s = ((E_dyn / D) / (p_cap - p_awake)) ** (1/3),   E_dyn' = E_dyn / s^2            (P.3)

so the busy power is exactly p_cap, and T is recomposed from D'. (A T4 decoding a 7B FP16 model
at its 70 W limit: 13.5 GB at about 2 x 10^-10 J/byte would need 1.5x its headroom at full
clocks; s = 1.14 matches the LLM-Perf rows' 59 ms steps at 70 W.) The paper's energy functional (eq. 19) is the same split per hop: gamma +
alpha p / B holds p_awake x T and the byte term, phi(h, p) the casting work.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

#: the power-state constants a profile's ``[physical]`` holds (W, W, J/byte, J/FLOP, W)
POWER_PARAMS = ("p_idle_w", "p_awake_w", "e_byte_j", "e_flop_j", "p_cap_w")
#: dynamic power ~ f^DVFS_EXPONENT under dynamic voltage and frequency scaling (P ~ C V^2 f,
#: V ~ f): the textbook cube law, an assumption of the capping model (eq. P.3)
DVFS_EXPONENT = 3.0


def dynamic_energy_j(bytes_, flops, e_byte_j, e_flop_j):
    """Energy of the work itself, J: ``e_byte_j`` per byte moved plus ``e_flop_j`` per FLOP."""
    return e_byte_j * np.asarray(bytes_, float) + e_flop_j * np.asarray(flops, float)


def step_energy_j(time_s, bytes_, flops, params: Mapping, stretch=1.0):
    """Energy of one step of wall time ``time_s``, J (eq. P.1): awake power over the whole step
    plus the dynamic energy of its bytes and FLOPs, lowered by a power-capped device's
    ``stretch`` (eq. P.3: E_dyn / s^2)."""
    e_dyn = dynamic_energy_j(bytes_, flops, params["e_byte_j"], params["e_flop_j"])
    return params["p_awake_w"] * np.asarray(time_s, float) + capped_dynamic_j(e_dyn, stretch)


def capped_dynamic_j(e_dyn_j, stretch):
    """Dynamic energy of work run ``stretch`` times slower under DVFS, J: E_dyn / s^(k-1)."""
    return e_dyn_j / np.asarray(stretch, float) ** (DVFS_EXPONENT - 1.0)


def busy_power_w(e_dyn_j, device_s, p_awake_w):
    """Board power while the device works, W (eq. P.2): awake plus dynamic energy per second
    of device time."""
    d = np.asarray(device_s, float)
    return p_awake_w + np.divide(e_dyn_j, d, out=np.zeros(np.broadcast(e_dyn_j, d).shape),
                                 where=d > 0)


def cap_stretch(e_dyn_j, device_s, p_awake_w, p_cap_w):
    """Factor s (>= 1) by which a power-capped device stretches its timeline, eq. P.3.

    Where the busy power p_awake + E_dyn / D would exceed ``p_cap_w`` the device lowers its
    clocks until it fits: s = ((E_dyn / D) / (p_cap - p_awake)) ** (1 / :data:`DVFS_EXPONENT`).
    1 where it fits, or where the cap is not above awake power (no headroom to reason about:
    the profile is inconsistent there and the schema refuses it).
    """
    head = np.asarray(p_cap_w, float) - p_awake_w
    d = np.asarray(device_s, float)
    ok = (head > 0) & (d > 0)
    need = np.divide(e_dyn_j, np.where(ok, head * d, 1.0))
    return np.where(ok, np.maximum(need, 1.0) ** (1.0 / DVFS_EXPONENT), 1.0)


def power_cap_w(params: Mapping, tdp_w):
    """The board limit of a profile, W: ``p_cap_w`` where it has one, else the TDP."""
    return params.get("p_cap_w", tdp_w)


def state_mix(step_s, device_s, e_dyn_j, p_awake_w, overlap: bool = True) -> dict:
    """Where a step's energy goes, for a planner: ``busy_frac`` (share of the wall time the
    device works), ``busy_w`` (its power then), ``awake_frac`` and ``awake_w`` (waiting for the
    host at awake power). ``e_dyn_j`` is the dynamic energy actually spent (after capping). On
    a CPU (``overlap`` False) the device works all the step."""
    t = np.asarray(step_s, float)
    d = np.minimum(np.asarray(device_s, float), t) if overlap else t
    busy = np.divide(d, t, out=np.ones(np.broadcast(d, t).shape), where=t > 0)
    return {"busy_frac": busy, "busy_w": busy_power_w(e_dyn_j, d, p_awake_w),
            "awake_frac": 1.0 - busy, "awake_w": p_awake_w + 0.0 * busy}


# ---- the power states of a GPU class, from datasheet facts (the forms the public fit fits) -----
#: GPU market segments whose drivers let clocks fall between kernels (GeForce boards)
LOW_CLOCK_SEGMENTS = ("desktop",)


def awake_power_w(tdp_w, segment: str, awake_base_w, awake_per_tdp, awake_desktop):
    """Awake power of a GPU class, W: ``awake_base_w + awake_per_tdp x TDP`` (static leakage and
    clock tree at boost clocks grow with the board's size, which its TDP measures), times
    ``awake_desktop`` for boards whose driver lowers clocks between kernels
    (:data:`LOW_CLOCK_SEGMENTS`). Coefficients: the joint fit to metered runs
    (``data/reference/public_fit.toml``)."""
    f = np.where(np.isin(segment, LOW_CLOCK_SEGMENTS), awake_desktop, 1.0)
    return (awake_base_w + awake_per_tdp * np.asarray(tdp_w, float)) * f


def byte_energy_j(tdp_w, mem_bw_gbs, byte_share):
    """Board energy per byte moved while busy, J/byte: streaming at the datasheet bandwidth
    dissipates ``byte_share`` of the TDP as dynamic power (the DRAM access plus the L2 and SM
    activity that keeps it fed). Boards are sized around their bandwidth: the public metered
    rows put the share near 0.7 on HBM (A100, H100) and GDDR (T4, RTX 4090) boards alike."""
    return byte_share * np.asarray(tdp_w, float) / (np.asarray(mem_bw_gbs, float) * 1e9)


def flop_energy_j(tdp_w, awake_w, fp16_tflops, flop_share):
    """Energy per FLOP, J: a dense 16-bit GEMM at the datasheet rate draws ``flop_share`` of
    the headroom between awake power and TDP (GEMMs at full rate run near the board limit)."""
    return flop_share * (np.asarray(tdp_w, float) - awake_w) / (np.asarray(fp16_tflops, float) * 1e12)
