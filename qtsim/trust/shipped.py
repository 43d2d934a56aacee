"""Where the shipped trust-probe checkpoint and probe record live (a source checkout's
``data/trust/``; a wheel does not carry them, like the recorded raw HDF5)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from qtsim.errors import QtsimError

MODEL_NAME = "hops-llama-3m"
PROBE_DIR = "probe-cpu"


def trust_data_dir() -> Path:
    return Path(str(resources.files("qtsim.data"))) / "trust"


def shipped_checkpoint() -> Path:
    """The shipped checkpoint's folder (one-line error when this install lacks it)."""
    p = trust_data_dir() / MODEL_NAME
    if not (p / "model.safetensors").is_file():
        raise QtsimError(f"no shipped checkpoint at {p} (only a source checkout carries "
                         "data/trust/): pass --checkpoint, or make one with `qtsim trust train`")
    return p


def shipped_record() -> Path:
    """The shipped probe record (``probe.json``) of the shipped checkpoint."""
    p = trust_data_dir() / PROBE_DIR / "probe.json"
    if not p.is_file():
        raise QtsimError(f"no shipped probe record at {p} (only a source checkout carries "
                         "data/trust/): pass a probe.json")
    return p
