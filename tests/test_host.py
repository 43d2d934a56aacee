"""Host part from a recorded `qtsim calibrate --host` run (tests/data/cpu-host.h5): no torch.

Also the pieces behind it: the inventory's per-block ``linear_ops``, the CPU profiles'
``t_call_includes_dispatch`` switch, and the rotating-buffer sizing of the linear probes.
"""

import math
from pathlib import Path

import numpy as np
import pytest

from qtsim.calibration.fit.host_part import build_host_part
from qtsim.calibration.fit.measured import row_family
from qtsim.calibration.measure.raw import RawStore
from qtsim.calibration.probes.bench import last_level_cache_bytes, rotation_count
from qtsim.calibration.probes.host import host_configs
from qtsim.model import inventory, physical
from qtsim.model.architecture import from_config
from qtsim.model.precision import get_precision
from qtsim.profiles.hosts import load_host, write_host

ROOT = Path(__file__).parents[1]
HOST_RAW = ROOT / "tests" / "data" / "cpu-host.h5"


@pytest.fixture(scope="module")
def host():
    return build_host_part(str(HOST_RAW), "cpu-test-host")


def test_host_fit_from_recorded_run(host):
    part, st = host
    ph = part.physical
    # a host op on a small shared VM: microseconds, not nanoseconds or milliseconds
    assert 0.5e-6 < ph["h_op_s"].value < 30e-6
    assert 0 < ph["h_op_s"].stderr < 0.2 * ph["h_op_s"].value
    # recorded on a busy 2-core VM (load 1.2-1.6, --cpu-threads 1): 12.7%
    assert st.mape < 0.15, f"host fit MAPE {100 * st.mape:.1f}%"
    # bitsandbytes' wrappers cost host time per call beyond their aten ops; LLM.int8() most
    assert ph["h_call_int8_b1_s"].value > ph["h_call_nf4_b1_s"].value
    for k in ("h_call_fp16_b1_s", "h_call_bf16_bn_s"):
        assert ph[k].value == 0 and ph[k].source == "fixed"
    assert ph["h_launch_s"].value == 0 and ph["h_launch_s"].source == "prior"
    for k, p in ph.items():
        assert math.isfinite(p.value) and p.value >= 0 and math.isfinite(p.stderr), k


def test_host_part_provenance_and_roundtrip(host, tmp_path):
    part, _ = host
    assert part.provenance["source"] == "calibrated"
    assert part.provenance["raw_sha256"] == RawStore(HOST_RAW, readonly=True).sha256()
    assert set(part.host["stack"]) >= {"python", "torch", "transformers", "bitsandbytes"}
    assert part.host["cpu"]
    back = load_host(str(write_host(part, tmp_path / "h.toml")))
    assert back.physical["h_op_s"].value == pytest.approx(part.physical["h_op_s"].value)
    assert "calibrated" in back.describe()


def test_host_fit_uses_the_model_itself(host):
    """Re-predict the recorded steps with the written constants through physical.step_time_s."""
    from qtsim.calibration.fit.host_part import device_base

    part, st = host
    frame = RawStore(HOST_RAW, readonly=True).summary_frame("decode")
    params = {**device_base(), **{k: p.value for k, p in part.physical.items()}}
    errs = []
    for _, r in frame.iterrows():
        c = from_config(__import__("json").loads(r["config_json"])).counts()
        fam = row_family(r)
        t = physical.step_time_s(c, fam, float(r["batch"]),
                                 float(r["prompt_len"]) + float(r["new_tokens"]) / 2, params,
                                 "fp16", "bf16")
        errs.append(float(t) / r["t_step_s"] - 1)
    assert np.mean(np.abs(errs)) == pytest.approx(st.mape, rel=1e-3)


def test_inventory_linear_ops():
    for fam in ("fp16", "int8", "nf4"):
        for side in ("b1", "bn"):
            b = inventory.path_blocks(fam, side)
            lin = b["linear_ops"][:, :7]
            assert np.all(lin >= 1) and np.all(lin < b["ops"][:, :7])
            assert np.all(b["linear_ops"][:, 7] == 0)  # the tail holds no linear


def test_dispatch_flag_prices_only_non_linear_ops():
    c = from_config(host_configs((4,))[0][1]).counts()
    params = {"mem_bw_gbs": 20.0, "h_op_s": 5e-6, "t_call_fp16_s": 0.0, "t_weight_fp16_s": 0.0,
              "t_tokweight_fp16_s": 0.0}
    full = physical.step_timelines(c, "fp16", 1.0, 8.0, params)["host_s"]
    flagged = physical.step_timelines(c, "fp16", 1.0, 8.0,
                                      {**params, physical.DISPATCH_FLAG: 1.0})["host_s"]
    lin_ops = inventory.path_blocks("fp16", "b1")["linear_ops"][int(c.model_class)].sum()
    assert float(full - flagged) == pytest.approx(4 * lin_ops * 5e-6)
    assert get_precision("fp16").bits == 16


def test_rotation_sizing(tmp_path):
    d = tmp_path / "index3"
    d.mkdir()
    (d / "type").write_text("Unified\n")
    (d / "level").write_text("3\n")
    (d / "size").write_text("32768K\n")
    assert last_level_cache_bytes(str(tmp_path)) == (32 << 20, "sysfs L3")
    assert rotation_count(2 << 20, 32 << 20) == 32  # 2x the LLC of 2 MiB layers
    assert rotation_count(1 << 10, 32 << 20) == 512  # capped in layers
    assert rotation_count(256 << 20, 32 << 20) == 1  # one layer alone is beyond the cache
    assert rotation_count(100 << 20, 1 << 30) == 5  # capped in memory (512 MiB)
