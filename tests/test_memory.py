"""Memory a run will need (qtsim/simulate/memory.py), refused up front when the machine lacks it,
and memory figures that keep the difference that decides fitting."""

from .conftest import qtsim_cli, refused


def test_draws_and_grids_that_cannot_fit_in_memory_are_refused_up_front(tmp_path, monkeypatch):
    from qtsim.simulate import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 2**30)
    refused(["trap", "--gpu", "l4", "--model", "mistral-7b", "--precision", "nf4", "--draws",
             "100000"], "--draws 100000 needs about 2.19 GiB of memory and this machine has "
                        "1 GiB available: use --draws 44418 or fewer")
    refused(["simulate", "--gpu", "l4", "--model", "mistral-7b", "--batch", "1:1e7:1e7", "--out",
             str(tmp_path / "s.h5")], "a grid of 7,035,462 points (GPU x precision x model x "
                                      "batch) needs about 3.77 GiB of memory")
    assert not (tmp_path / "s.h5").exists()
    code, _, err = qtsim_cli("simulate", "--gpu", "l4", "--model", "mistral-7b", "--batch",
                             "1:1e9:1e9", "--out", str(tmp_path / "s.h5"))
    assert code == 2 and "up to 1,000,000,000 batch sizes; give at most 10,000,000" in err


def test_the_trap_memory_estimate_covers_a_real_run():
    import subprocess
    import sys

    from qtsim.simulate.memory import trap_bytes

    # VmHWM of a fresh interpreter (ru_maxrss would carry over the forking pytest's own size)
    code = ("import re; from qtsim.report.trap import trap_text; "
            "from qtsim.model.workload import Workload; "
            "trap_text('l4', None, 'mistral-7b', Workload('nf4'), n_draws=3000); "
            "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) * 1024)")
    peak = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout.split()[-1])
    assert peak <= trap_bytes(3000) <= 1.6 * peak


def test_memory_that_decides_fitting_keeps_its_difference():
    from qtsim.model.stats import gib_texts

    assert gib_texts(14.944, 14.9) == ["14.94 GiB", "14.90 GiB"]
    assert gib_texts(6.4, 14.9) == ["6.4 GiB", "14.9 GiB"]
    out = qtsim_cli("trap", "--gpu", "t4", "--model", "mistral-7b", "--precision", "nf4", "--batch",
                    "18", "--draws", "20")[1]
    assert out.startswith("ONLY NF4 FITS: mistral-7b needs 14.94 GiB at FP16 but ")
    assert "t4 has 14.90 GiB (batch 18)" in out.splitlines()[0]
