"""Surface speed: a 10^6-point grid with SI, B* and N* (4 precisions x 250 sizes x 1000 batches).

Run: python -m pytest benchmarks/bench_surface.py --benchmark-only  (reports, asserts no timing)
or:  python benchmarks/bench_surface.py                              (prints points/s and peak MiB)

Reports points per second (``extra_info['points_per_s']``) and the peak Python-heap memory of one
evaluation measured with tracemalloc (numpy registers its buffers with tracemalloc).
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np

from qtsim.model.architecture import load_architecture
from qtsim.model.workload import Workload
from qtsim.profiles.hardware import load_profile
from qtsim.simulate.dataset import n_points
from qtsim.simulate.surface import simulate

PRECISIONS = ("fp16", "int8", "nf4", "fp4")
SIZES = np.geomspace(1e8, 1e12, 250)
BATCHES = np.arange(1, 1001)


def surface_1e6():
    """The whole 10^6-point surface: every quantity, SI pillars, B* per size and N* per batch."""
    return simulate([load_profile("h100-sxm")], [], PRECISIONS, Workload(batch=BATCHES), sizes=SIZES,
                    family=load_architecture("llama-3.1-8b"))


def peak_memory_mib(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20


def test_surface_1e6_points(benchmark):
    surface_1e6()  # warm caches (profile parsing, imports)
    s = benchmark.pedantic(surface_1e6, rounds=5, iterations=1)
    assert n_points(s) == 10**6
    assert s["si"].shape == (1, 4, 250, 1000)
    benchmark.extra_info["points"] = n_points(s)
    benchmark.extra_info["points_per_s"] = n_points(s) / benchmark.stats.stats.mean
    benchmark.extra_info["peak_mib"] = peak_memory_mib(surface_1e6)


if __name__ == "__main__":  # pragma: no cover - manual run
    surface_1e6()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        s = surface_1e6()
        times.append(time.perf_counter() - t)
    best, mean = min(times), sum(times) / len(times)
    print(f"{n_points(s)} points: best {best:.3f} s, mean {mean:.3f} s, "
          f"{n_points(s) / mean:.3g} points/s (mean); peak {peak_memory_mib(surface_1e6):.0f} MiB")
