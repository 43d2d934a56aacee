"""`qtsim plan` speed: every shipped GPU x five precision settings x batches 1-256 (issue 22: <= 2 s).

Each GPU x setting is one vectorised evaluation over all 256 batches, central and with 200
Monte-Carlo draws; the serving arithmetic, percentiles and bands run on whole (draw x setting x
batch) arrays. Two figures: the planning itself (profiles loaded), and the command end to end
(a fresh interpreter: imports, profile loading, the plan and the text answer).

Run: python -m pytest benchmarks/bench_plan.py --benchmark-only  (reports, asserts no timing)
or:  python benchmarks/bench_plan.py                              (prints best and median)
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from qtsim.model.architecture import load_architecture
from qtsim.profiles.hardware import list_profiles, load_profile
from qtsim.report.budget import BudgetAssumptions
from qtsim.report.plan import DEFAULT_SETTINGS, PlanRequest, Targets, parse_demand, parse_settings
from qtsim.report.plan import plan as plan_grid

SETTINGS = DEFAULT_SETTINGS  # fp16, int8, int8+t0, nf4, nf4+dq
BATCHES = tuple(range(1, 257))
COMMAND = [sys.executable, "-m", "qtsim", "plan", "--model", "llama-3.1-8b", "--demand", "2e6/day",
           "--prompt-tokens", "500", "--tokens", "300", "--max-step-ms", "80", "--max-query-s",
           "60", "--gpu", "all", "--usd-per-hour", "1.0", "--grid-gco2-per-kwh", "400"]


def _inputs():
    profiles = [load_profile(r["name"]) for r in list_profiles() if r["source"] != "INVALID"]
    req = PlanRequest(load_architecture("llama-3.1-8b"), parse_demand("2e6/day"),
                      Targets(step_s=0.080, query_s=60.0), tuple(parse_settings(SETTINGS)),
                      BATCHES, 300, 500, BudgetAssumptions(1.0, 400.0))
    return profiles, req, {p.name: 1.0 for p in profiles}


def configurations(profiles, req) -> int:
    return len(profiles) * len(req.settings) * len(req.batches)


def test_plan_all_gpus_five_settings_256_batches(benchmark):
    profiles, req, prices = _inputs()
    plan_grid(profiles, req, prices)  # warm (imports, caches)
    p = benchmark.pedantic(lambda: plan_grid(profiles, req, prices), rounds=5, iterations=1)
    n = configurations(profiles, req)
    assert len(p.grids) == len(profiles) >= 14 and n >= 14 * 5 * 256
    benchmark.extra_info["configurations"] = n
    benchmark.extra_info["configurations_per_s"] = n / benchmark.stats.stats.mean


def test_plan_command_end_to_end(benchmark):
    benchmark.pedantic(lambda: subprocess.run(COMMAND, capture_output=True, check=True),
                       rounds=3, iterations=1)


def _times(fn, rounds: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU seconds of each round (CPU time of this process: on a machine shared
    with other jobs it is what the wall clock would read on a quiet one)."""
    wall, cpu = [], []
    for _ in range(rounds):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return wall, cpu


if __name__ == "__main__":  # pragma: no cover - manual run
    import os

    profiles, req, prices = _inputs()
    plan_grid(profiles, req, prices)
    t, c = _times(lambda: plan_grid(profiles, req, prices), 7)
    n = configurations(profiles, req)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"plan: {len(profiles)} GPUs x {len(req.settings)} settings x {len(BATCHES)} batches = "
          f"{n} configurations, {req.n_draws} draws: wall best {min(t):.2f} s, median "
          f"{statistics.median(t):.2f} s; CPU best {min(c):.2f} s, median "
          f"{statistics.median(c):.2f} s ({n / statistics.median(t):,.0f} configurations/s)")
    e, _ = _times(lambda: subprocess.run(COMMAND, capture_output=True, check=True), 5)
    print(f"`qtsim plan --gpu all` end to end (fresh interpreter): best {min(e):.2f} s, median "
          f"{statistics.median(e):.2f} s")
