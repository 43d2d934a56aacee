"""End-to-end ``qtsim simulate`` speed: the command a user runs, HDF5 written, interpreter included.

    qtsim simulate --gpu l4 --model mistral-7b --batch 1:1e9:1000000 --out OUT.h5

1 GPU x 3 precisions (fp16, int8, nf4) x 1 model x 527,861 distinct batches = 1,583,583 points,
every quantity, B* per model and N* per batch, 37 datasets in HDF5.

Run: python -m pytest benchmarks/bench_simulate.py --benchmark-only  (reports, asserts no timing)
or:  python benchmarks/bench_simulate.py                              (prints points/s)

Reports points per second of wall time (``extra_info['points_per_s']``) and of CPU time (user +
system of the child; on a shared machine this is the steadier figure).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time

POINTS = 1_583_583


def run_simulate(out: str) -> tuple[float, float]:
    """(wall s, CPU s) of one end-to-end run."""
    cmd = [sys.executable, "-m", "qtsim", "simulate", "--gpu", "l4", "--model", "mistral-7b",
           "--batch", "1:1e9:1000000", "--out", out]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    assert f"= {POINTS} points" in r.stdout, r.stdout
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def test_simulate_end_to_end(benchmark, tmp_path):
    out = str(tmp_path / "grid.h5")
    cpu = []
    benchmark.pedantic(lambda: cpu.append(run_simulate(out)[1]), rounds=3, iterations=1)
    benchmark.extra_info["points"] = POINTS
    benchmark.extra_info["points_per_s"] = POINTS / benchmark.stats.stats.mean
    benchmark.extra_info["points_per_cpu_s"] = POINTS / (sum(cpu) / len(cpu))
    benchmark.extra_info["hdf5_bytes"] = os.path.getsize(out)


if __name__ == "__main__":  # pragma: no cover - manual run
    with tempfile.TemporaryDirectory() as d:
        runs = [run_simulate(os.path.join(d, "grid.h5")) for _ in range(5)]
    walls, cpus = zip(*runs, strict=True)
    print(f"{POINTS} points end to end: wall best {min(walls):.2f} s, median "
          f"{sorted(walls)[2]:.2f} s ({POINTS / sorted(walls)[2]:.3g} points/s); CPU median "
          f"{sorted(cpus)[2]:.2f} s ({POINTS / sorted(cpus)[2]:.3g} points/CPU-s)")
