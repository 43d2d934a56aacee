"""DESIGN.md sec. 5: one import package, qtsim; folders mapped through package-dir."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return next(out.glob("qtsim-*.whl"))


def test_wheel_layout(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("qtsim-")}
    assert tops == {"qtsim"}
    for sub in ("qtsim/cli/main.py", "qtsim/calibration/__init__.py",
                "qtsim/hardware_profiles/h100-sxm.toml", "qtsim/data/architectures/mistral-7b.json",
                "qtsim/data/reference/paper_figures.csv"):
        assert sub in names
    assert not any(n.endswith((".h5", ".hdf5")) for n in names), "raw HDF5 must stay out of the wheel"


def test_non_editable_install_answers_trap(wheel, tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target),
                        str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    # -S: no site module, so no .pth hooks (an editable install's finder, anything that pre-imports
    # modules such as importlib.util): the installed wheel runs as on a bare machine
    deps = [p for p in sys.path if p.endswith("site-packages")]
    # enter as the `qtsim` console script does (python -m would go through runpy, which
    # imports importlib.util itself)
    entry = ("from qtsim.cli.main import main; main(['trap', '--gpu', 'l4', '--model', "
             "'mistral-7b', '--precision', 'nf4', '--draws', '20'])")
    r = subprocess.run([sys.executable, "-S", "-c", entry], capture_output=True,
                       text=True, cwd=tmp_path,
                       env={"PYTHONPATH": os.pathsep.join([str(target), *deps]),
                            "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "on energy" in r.stdout
