"""The calibration package and `qtsim calibrate`'s work (calibration/__init__.py,
calibration/calibrate.py)."""

import logging

import numpy as np
import pytest

from .conftest import ROOT, qtsim_cli


def test_resume_refuses_another_thread_count(tmp_path):
    pytest.importorskip("torch")
    from qtsim.calibration.calibrate import same_threads_on_resume
    from qtsim.calibration.measure.raw import RawStore
    from qtsim.errors import QtsimError

    raw = tmp_path / "cpu-calibration.h5"
    RawStore(raw).append("p0", {"kind": "linear", "torch_threads": 2}, {"x": np.ones(2)})
    with pytest.raises(QtsimError, match="measured with 2 torch threads"):
        same_threads_on_resume(raw, 1)
    same_threads_on_resume(raw, 2)


def test_bitsandbytes_kernels_hint_is_dropped_and_other_warnings_are_not():
    import qtsim.calibration  # noqa: F401  (installs the filter)

    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    h = Keep()
    log.addHandler(h)
    try:
        log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make "
                    "sure you already `pip install kernels` and the kernels >= 0.11.1", "x")
        log.warning("something else")
    finally:
        log.removeHandler(h)
    assert seen == ["something else"]


def test_a_fit_marks_what_it_did_not_identify():
    from qtsim.calibration.calibrate import fit_lines
    from qtsim.calibration.fit.profile_builder import build_profile

    prof, fit = build_profile(ROOT / "data" / "raw" / "cpu-epyc-2c-calibration.h5")
    assert prof.fit["contention"]["verdict"] == "not measured"
    bad = prof.fit["unidentified"]
    assert bad["h_op_s"].endswith("stderr exceeds the value")
    lines = fit_lines(prof, fit, "x.toml")
    assert any(x.startswith(f"  WARNING: {len(bad)} constant(s) not identified") for x in lines)
    code, out, _ = qtsim_cli("profiles", "show", "--profile", str(ROOT / "data" / "profiles" /
                                                             "cpu-epyc-2c.toml"))
    assert code == 0 and "NOT IDENTIFIED" in out and "not identified by the measurements" in out
