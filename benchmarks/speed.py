"""Planner speed against a fixed reference command, in one paired run (issue 21).

The machine this project runs on is shared and noisy, so every command is timed alternately
with a fixed *reference* (a fresh interpreter importing numpy: the floor every planner command
pays) and reported as a ratio to it, beside the absolute figures:

    python benchmarks/speed.py                   # every case, 5 rounds
    python benchmarks/speed.py --cases trap --rounds 9
    python benchmarks/speed.py --python /path/to/other/venv/bin/python   # another install

Cases (the issue's targets on a quiet 2-core machine in brackets):

- ``trap``: ``qtsim trap --gpu l4 --model mistral-7b --precision nf4`` (<= 0.3 s)
- ``compare``: ``qtsim compare --model mistral-7b --gpu all`` (<= 0.5 s)
- ``simulate``: ``qtsim simulate --gpu l4 --model mistral-7b --batch 1:1e9:1000000 --out
  grid.h5`` (1,583,583 points, >= 10^6 points/s end to end)

Each figure is the best of the rounds (the least disturbed one) and the median; CPU time is
user + system of the child process, the steadier figure on a shared machine. Bytecode is
written and used (``PYTHONDONTWRITEBYTECODE`` is cleared for the children, as after a normal
install), and one warm-up run of each command precedes the timed rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REFERENCE = ["-c", "import numpy"]
SIM_POINTS = 1_583_583


def cases(out_dir: str) -> dict[str, list[str]]:
    q = ["-m", "qtsim"]
    return {
        "trap": q + ["trap", "--gpu", "l4", "--model", "mistral-7b", "--precision", "nf4"],
        "compare": q + ["compare", "--model", "mistral-7b", "--gpu", "all"],
        "simulate": q + ["simulate", "--gpu", "l4", "--model", "mistral-7b", "--batch",
                         "1:1e9:1000000", "--out", os.path.join(out_dir, "grid.h5"), "--force"],
    }


def run_once(python: str, args: list[str], env: dict) -> tuple[float, float]:
    """(wall s, CPU s) of one run of ``python args`` (a failure raises), from a neutral
    directory (``python -m`` puts the working directory first on ``sys.path``: run from a
    checkout it would time that checkout's code whatever the interpreter)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run([python, *args], capture_output=True, text=True, env=env,
                       cwd=tempfile.gettempdir())
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{r.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def paired(pythons: list[str], args: list[str], rounds: int, env: dict) -> list[dict]:
    """Time ``args`` under each interpreter and the reference alternately (reference, then each
    install, every round); best and median of each, and their ratio to the reference."""
    for py in pythons:  # warm-up: bytecode written, files in the page cache
        run_once(py, args, env)
    run_once(pythons[0], REFERENCE, env)
    ref, cmd = [], [[] for _ in pythons]
    for _ in range(rounds):
        ref.append(run_once(pythons[0], REFERENCE, env))
        for i, py in enumerate(pythons):
            cmd[i].append(run_once(py, args, env))

    def stats(xs):
        wall, cpu = zip(*xs, strict=True)
        return {"wall_best_s": min(wall), "wall_median_s": statistics.median(wall),
                "cpu_best_s": min(cpu), "cpu_median_s": statistics.median(cpu)}

    out = []
    for py, xs in zip(pythons, cmd, strict=True):
        r = {"python": py, "command": args, "rounds": rounds, **stats(xs),
             "reference": {"command": REFERENCE, **stats(ref)}}
        r["ratio_cpu_best"] = r["cpu_best_s"] / r["reference"]["cpu_best_s"]
        r["ratio_wall_best"] = r["wall_best_s"] / r["reference"]["wall_best_s"]
        out.append(r)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", action="append",
                    help="interpreter of an install to time (repeat to compare installs in "
                         "the same rounds; default: this one)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cases", default="trap,compare,simulate")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    a = ap.parse_args(argv)
    pythons = a.python or [sys.executable]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    results = {"load_average_1min": os.getloadavg()[0], "cpus": os.cpu_count(), "cases": {}}
    with tempfile.TemporaryDirectory() as d:
        table = cases(d)
        for name in a.cases.split(","):
            results["cases"][name] = paired(pythons, table[name], a.rounds, env)
            for r in results["cases"][name]:
                print(_line(name, r, len(pythons) > 1), flush=True)
    print(f"load average {results['load_average_1min']:.1f} on {results['cpus']} CPUs at the start")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def _line(name: str, r: dict, which: bool) -> str:
    ref = r["reference"]
    extra = ""
    if name == "simulate":
        r.update(points=SIM_POINTS, points_per_s_best=SIM_POINTS / r["wall_best_s"],
                 points_per_cpu_s_best=SIM_POINTS / r["cpu_best_s"])
        extra = (f"; {r['points_per_s_best'] / 1e6:.2f} M points/s wall, "
                 f"{r['points_per_cpu_s_best'] / 1e6:.2f} M points/CPU-s")
    who = f" [{r['python']}]" if which else ""
    return (f"{name:9s} CPU best {r['cpu_best_s']:.3f} s (median {r['cpu_median_s']:.3f}), "
            f"wall best {r['wall_best_s']:.3f} s (median {r['wall_median_s']:.3f}); "
            f"reference CPU {ref['cpu_best_s']:.3f} s, wall {ref['wall_best_s']:.3f} s; ratio "
            f"{r['ratio_cpu_best']:.2f}x CPU, {r['ratio_wall_best']:.2f}x wall{extra}{who}")


if __name__ == "__main__":  # pragma: no cover - manual run
    raise SystemExit(main())
