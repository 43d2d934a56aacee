"""Plans and the runner: a shrunken real quick plan written to HDF5 and read back."""

import dataclasses

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")
pytest.importorskip("transformers")

from qtsim.calibration.measure.device import CpuDevice, CudaDevice  # noqa: E402
from qtsim.calibration.measure.energy import EnergyMonitor  # noqa: E402
from qtsim.calibration.measure.raw import PointResult, RawStore  # noqa: E402
from qtsim.calibration.probes.plan import (  # noqa: E402
    DecodeSpec,
    GemmSpec,
    IdleSpec,
    LinearSpec,
    MembwSpec,
    calibration_plan,
    estimate_plan_s,
    full_plan,
    quick_plan,
)
from qtsim.calibration.probes.runner import run_plan  # noqa: E402
from qtsim.errors import QtsimError  # noqa: E402

pytestmark = pytest.mark.measure


def _shrunk_quick_plan(dev):
    """One of each kind from the real quick plan, at CI size."""
    plan = quick_plan(dev)
    out = []
    for spec in plan:
        if isinstance(spec, IdleSpec):
            out.append(dataclasses.replace(spec, seconds=0.1))
        elif isinstance(spec, MembwSpec):
            out.append(dataclasses.replace(spec, size_bytes=8 << 20, reps=2, min_window_s=0.02))
        elif isinstance(spec, GemmSpec):
            out.append(dataclasses.replace(spec, n=128, reps=2, min_window_s=0.02))
        elif isinstance(spec, LinearSpec) and (spec.in_features, spec.out_features) == (256, 256) \
                and spec.batch in (1, 4):
            out.append(dataclasses.replace(spec, reps=2, min_window_s=0.02))
        elif isinstance(spec, DecodeSpec) and spec.batch == 1 and spec.model_name == "tiny-qwen3":
            out.append(dataclasses.replace(spec, new_tokens=4, reps=2))
    return out


def test_plans_are_well_formed_and_within_budget():
    cpu = CpuDevice()
    q = quick_plan(cpu)
    ids = [p.point_id() for p in q]
    assert len(ids) == len(set(ids))
    paths = {p.path for p in q if isinstance(p, LinearSpec)}
    assert paths == {"fp16", "bf16", "int8", "int8_t0", "nf4_b1", "nf4_bn", "nf4dq_b1",
                     "nf4dq_bn"}
    assert {p.precision for p in q if isinstance(p, DecodeSpec)} == {"fp16", "bf16", "int8",
                                                                     "nf4"}
    assert estimate_plan_s(q, cpu) < 240
    assert calibration_plan(cpu, quick=True, power_states=False) == q
    h100 = CudaDevice(name="h100-sxm")  # a plan is pure: no GPU needed to build it
    f = full_plan(h100)
    ids = [p.point_id() for p in f]
    assert len(ids) == len(set(ids))
    assert {p.batch for p in f if isinstance(p, LinearSpec)} == {1, 2, 8, 32, 64, 128}
    assert (14336, 4096) in {(p.in_features, p.out_features) for p in f
                             if isinstance(p, LinearSpec)}
    assert estimate_plan_s(f, h100) < 15 * 60
    assert estimate_plan_s(quick_plan(h100), h100) < 3.5 * 60
    # a GPU calibration opens with its power states (deep idle is measured before, via NVML)
    cal = calibration_plan(h100, quick=True)
    assert [getattr(p, "state", None) for p in cal[:3]] == ["awake", "stream", "gemm"]
    assert cal[3:] == quick_plan(h100) and estimate_plan_s(cal, h100) < 4.5 * 60


def test_quick_plan_runner_writes_readable_hdf5(tmp_path):
    dev = CpuDevice()
    mon = EnergyMonitor(dev)
    plan = _shrunk_quick_plan(dev)
    assert {type(p).__name__ for p in plan} == {"IdleSpec", "MembwSpec", "GemmSpec",
                                                "LinearSpec", "DecodeSpec"}
    store = RawStore(tmp_path / "cpu-quick.h5")
    report = run_plan(plan, store, dev, mon, progress=True)
    assert len(report.measured) == len(plan) and not report.skipped

    frame = RawStore(tmp_path / "cpu-quick.h5", readonly=True).summary_frame()
    assert len(frame) == len(plan) and frame.attrs["dropped"] == []
    assert set(frame["kind"]) == {"idle", "membw", "gemm", "linear", "decode"}
    lin = frame[frame["kind"] == "linear"]
    assert (lin["t_call_s"] > 0).all() and (lin["e_call_j_hli"] > 0).all()
    dec = frame[frame["kind"] == "decode"]
    assert (dec["t_prefill_s"] > 0).all() and dec["t_step_s"].notna().all()
    assert "e_step_j_hli" in dec and frame["hli_assumption"].str.startswith("ASSUMED").all()
    assert (frame[frame["kind"] == "membw"]["bandwidth_bytes_per_s"] > 1e8).all()

    again = run_plan(plan, store, dev, mon, progress=False)  # resume: nothing re-measured
    assert again.measured == [] and len(again.resumed) == len(plan)
    with pytest.raises(QtsimError, match="already holds"):
        run_plan(plan, store, dev, mon, progress=False, resume=False)


@dataclasses.dataclass(frozen=True)
class _OomSpec:
    batch: int = 128

    def point_id(self):
        return f"linear__fp16__8x8__b{self.batch}"

    def base_attrs(self, ctx):
        return {"kind": "linear", "path": "fp16", "batch": self.batch}

    def estimate_s(self, device):
        return 0.0

    def run(self, ctx) -> PointResult:
        import torch

        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")


def test_out_of_memory_is_stored_as_skipped(tmp_path):
    dev = CpuDevice()
    store = RawStore(tmp_path / "oom.h5")
    report = run_plan([_OomSpec()], store, dev, EnergyMonitor(dev), progress=False)
    assert report.skipped == ["linear__fp16__8x8__b128"]
    [rec] = list(store.points())
    assert rec.attrs["status"] == "skipped" and "out of memory" in rec.attrs["skip_reason"]
    frame = store.summary_frame()
    assert len(frame) == 0 and "out of memory" in frame.attrs["skipped"][0]


def test_ctrl_c_says_resume_continues(tmp_path, capsys):
    from qtsim.calibration.measure.raw import PointResult, RawStore
    from qtsim.calibration.probes.runner import run_plan

    class Point:
        def __init__(self, i, stop=False):
            self.i, self.stop = i, stop

        def point_id(self):
            return f"p{self.i}"

        def base_attrs(self, ctx):
            return {"kind": "test"}

        def estimate_s(self, device):
            return 0.0

        def run(self, ctx):
            if self.stop:
                raise KeyboardInterrupt
            return PointResult({"kind": "test"}, {"x": np.ones(2)})

    class Dev:
        name = "fake"

    store = RawStore(tmp_path / "r.h5")
    with pytest.raises(KeyboardInterrupt):
        run_plan([Point(0), Point(1, stop=True)], store, Dev(), None, progress=False)
    err = capsys.readouterr().err
    assert "interrupted: 1 of 2 points are stored" in err and "--resume" in err
    assert store.ids() == ["p0"]
