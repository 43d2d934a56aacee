"""The raw HDF5 contract: append, resume, refuse overwrite, corrupt files, NaN rejection."""

import numpy as np
import pytest

from qtsim.calibration.measure.raw import SCHEMA, RawStore, make_point_id
from qtsim.errors import QtsimError

pytestmark = pytest.mark.measure


def _linear_attrs(**kw):
    return {"kind": "linear", "hardware": "cpu", "backend": "cpu", "path": "nf4_b1",
            "precision": "nf4", "batch": 1, "in_features": 256, "out_features": 512,
            "iters_per_rep": 100, "status": "ok", "meters": ["hli"], "exclusions": [],
            "clocks": {"sm_mhz": 2600.0, "mem_mhz": None}, "temperature_c": None,
            "bnb_4bit_use_double_quant": False, **kw}


def test_point_id_is_deterministic_and_safe():
    assert make_point_id("linear", "nf4_b1", "4096x4096", "b8") == "linear__nf4_b1__4096x4096__b8"
    assert make_point_id("decode", "a b/c", "x") == "decode__a-b-c__x"
    with pytest.raises(QtsimError):
        make_point_id("nope", "x")


def test_roundtrip_resume_and_refuse_overwrite(tmp_path):
    path = tmp_path / "sub" / "raw.h5"
    store = RawStore(path)
    assert store.ids() == [] and list(store.points()) == []
    d = np.array([0.10, 0.11, 0.12])
    store.append("linear__nf4_b1__256x512__b1", _linear_attrs(),
                 {"duration_s": d, "energy_j_hli": 15 * d, "power_w": np.ones((4, 2))})
    assert store.has("linear__nf4_b1__256x512__b1")
    with pytest.raises(QtsimError, match="already exists"):
        store.append("linear__nf4_b1__256x512__b1", _linear_attrs(), {"duration_s": d})

    again = RawStore(path, readonly=True)  # a later process resumes from the file
    assert again.file_attrs()["schema"] == SCHEMA
    [rec] = list(again.points("linear"))
    assert rec.attrs["meters"] == ["hli"] and rec.attrs["clocks"]["sm_mhz"] == 2600.0
    assert rec.attrs["bnb_4bit_use_double_quant"] is False
    assert "temperature_c" not in rec.attrs  # None is stored as absent
    np.testing.assert_allclose(rec.datasets["duration_s"], d)
    assert rec.datasets["power_w"].shape == (4, 2)
    assert list(again.points("decode")) == []
    with pytest.raises(QtsimError, match="read-only"):
        again.append("linear__x", _linear_attrs(), {"duration_s": d})

    frame = again.summary_frame()
    row = frame.iloc[0]
    assert row["n_reps"] == 3 and row["t_median_s"] == pytest.approx(0.11)
    assert row["t_call_s"] == pytest.approx(0.11 / 100)
    assert row["e_call_j_hli"] == pytest.approx(15 * 0.11 / 100)
    assert row["clocks_sm_mhz"] == 2600.0 and row["meters"] == "hli"
    assert len(again.sha256()) == 64


def test_decode_summary_separates_prefill(tmp_path):
    store = RawStore(tmp_path / "d.h5")
    k = 16
    attrs = {"kind": "decode", "precision": "fp16", "batch": 2, "new_tokens": k,
             "prompt_len": 8, "iters_per_rep": 1, "prefill_iters_per_rep": 2, "status": "ok"}
    store.append("decode__m__fp16__b2__p8__k16", attrs, {
        "duration_s": np.array([1.0, 1.0]), "energy_j_hli": np.array([10.0, 10.0]),
        "prefill_s": np.array([0.2, 0.2]), "prefill_energy_j_hli": np.array([2.0, 2.0]),
        "peak_memory_bytes": 12345})
    row = store.summary_frame("decode").iloc[0]
    assert row["t_prefill_s"] == pytest.approx(0.1)
    assert row["t_step_s"] == pytest.approx((1.0 - 0.1) / (k - 1))
    assert row["e_step_j_hli"] == pytest.approx((10.0 - 1.0) / (k - 1))
    assert row["peak_memory_bytes"] == 12345


def test_nan_and_negative_rows_dropped_with_reason(tmp_path):
    store = RawStore(tmp_path / "r.h5")
    good = np.array([0.1, 0.1])
    store.append("linear__a", _linear_attrs(), {"duration_s": good, "energy_j_hli": good})
    store.append("linear__b", _linear_attrs(),
                 {"duration_s": np.array([0.1, np.nan]), "energy_j_hli": good})
    store.append("linear__c", _linear_attrs(),
                 {"duration_s": good, "energy_j_hli": np.array([1.0, -1.0])})
    store.append("linear__d", {**_linear_attrs(), "status": "skipped",
                               "skip_reason": "out of memory at batch 128"}, {})
    frame = store.summary_frame()
    assert list(frame["point_id"]) == ["linear__a"]
    dropped = frame.attrs["dropped"]
    assert any(d.startswith("linear__b") and "NaN" in d for d in dropped)
    assert any(d.startswith("linear__c") and "negative" in d for d in dropped)
    assert frame.attrs["skipped"] == ["linear__d: out of memory at batch 128"]


def test_corrupt_or_foreign_file_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"this is not hdf5")
    with pytest.raises(QtsimError) as e:
        RawStore(bad)
    assert "not a readable HDF5" in str(e.value) and "\n" not in str(e.value)

    import h5py

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.attrs["schema"] = "something-else"
    with pytest.raises(QtsimError, match="not a qtsim raw file"):
        RawStore(foreign)
    with pytest.raises(QtsimError, match="no such raw"):
        RawStore(tmp_path / "missing.h5", readonly=True)


def test_partial_group_from_killed_run_is_ignored_and_cleaned(tmp_path):
    import h5py

    path = tmp_path / "r.h5"
    store = RawStore(path)
    store.append("linear__a", _linear_attrs(), {"duration_s": np.array([0.1])})
    with h5py.File(path, "a") as f:  # what a run killed mid-append leaves
        f["points"].create_group("~partial~linear__b")
    assert store.ids() == ["linear__a"]
    store.append("linear__b", _linear_attrs(), {"duration_s": np.array([0.1])})
    assert sorted(store.ids()) == ["linear__a", "linear__b"]
    with h5py.File(path, "r") as f:
        assert not any(k.startswith("~partial~") for k in f["points"])
