"""DESIGN.md sec. 5: one import package, qtsim; folders mapped through package-dir."""

import os
import subprocess
import sys
import tomllib
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


def _package_dirs() -> dict[str, str]:
    """pyproject's explicit package -> folder mapping (every listed package mapped)."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert sorted(tool["package-dir"]) == sorted(tool["packages"]), "every package listed and mapped"
    return tool["package-dir"]


def _source_modules() -> dict[str, Path]:
    """Every module of the source tree by the path it has in the wheel."""
    out = {}
    for pkg, folder in _package_dirs().items():
        for f in (ROOT / folder).glob("*.py"):
            out[pkg.replace(".", "/") + "/" + f.name] = f
    return out


def test_every_package_is_listed():
    """A folder with an ``__init__.py`` that pyproject does not list would be left out of the
    wheel silently (packages are listed explicitly, not found)."""
    mapped = {(ROOT / folder).resolve() for folder in _package_dirs().values()}
    unlisted = []
    for top in ("qtsim", "calibration", "cli", "hardware_profiles", "data"):
        for init in (ROOT / top).rglob("__init__.py"):
            if init.parent.resolve() not in mapped and "__pycache__" not in init.parts:
                unlisted.append(str(init.parent.relative_to(ROOT)))
    assert unlisted == []


def test_wheel_holds_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(set(_source_modules()) - names)
    assert missing == []
    assert "qtsim/calibration/fit/measured.py" in names  # the stages install under qtsim


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
