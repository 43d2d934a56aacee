"""Planner speed: `qtsim trap` start-up and the physical model over a 10^6-point grid.

Run: python -m pytest benchmarks/bench_planner.py --benchmark-only  (reports, asserts no timing)
"""

import subprocess
import sys

import numpy as np

from qtsim.model.architecture import load_architecture
from qtsim.model.workload import Workload
from qtsim.profiles.hardware import load_profile
from qtsim.simulate.simulator import Simulator


def test_trap_startup(benchmark):
    cmd = [sys.executable, "-m", "qtsim", "trap", "--gpu", "l4", "--model", "mistral-7b",
           "--precision", "nf4"]
    benchmark.pedantic(lambda: subprocess.run(cmd, capture_output=True, check=True),
                       rounds=5, iterations=1)


def test_model_grid_1e6_points(benchmark):
    sim = Simulator(load_profile("h100-sxm"))
    arch = load_architecture("llama-3.1-8b")
    fam = arch.scaled(np.geomspace(1e8, 1e12, 1000)[:, None])  # 1000 sizes x 1000 batches
    batch = np.geomspace(1, 4096, 1000)[None, :]

    def run():
        return sim.compare(fam, Workload("nf4", batch, 256, 128))[2]["delta_j"]

    out = benchmark(run)
    assert out.shape == (1000, 1000)
    benchmark.extra_info["points"] = out.size
    benchmark.extra_info["points_per_s"] = out.size / benchmark.stats.stats.mean
