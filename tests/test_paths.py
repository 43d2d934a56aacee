"""The kernel-path vocabulary (qtsim/model/paths.py): one family per bitsandbytes setting, and the
fallbacks a profile resolves."""

from qtsim.model import paths
from qtsim.profiles.hardware import load_profile


def test_path_family_every_setting():
    assert paths.path_family("nf4", True) == "nf4dq"
    assert paths.path_family("fp4", True) == "fp4dq"
    assert paths.path_family("int8", False, 0) == "int8_t0"
    assert paths.path_family("int8", False, 6.0) == "int8"
    prof = load_profile("l4")
    assert paths.resolve_path(prof.values(), "fp4dq_b1") in ("nf4dq_b1", "nf4_b1", "nf4")
