"""Real tiny microbenchmarks on this machine's CPU (and on CUDA where present)."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")

from qtsim.calibration.measure.device import CpuDevice  # noqa: E402
from qtsim.calibration.measure.energy import EnergyMonitor  # noqa: E402
from qtsim.calibration.probes.bench import (  # noqa: E402
    gemm_probe,
    is_oom,
    kernel_path,
    linear_path,
    linear_probe,
    membw_probe,
    parse_path,
)
from qtsim.errors import QtsimError  # noqa: E402
from qtsim.model.paths import PATHS  # noqa: E402

pytestmark = pytest.mark.measure

ALL_PATHS = list(PATHS)


@pytest.fixture(scope="module")
def cpu():
    dev = CpuDevice()
    return dev, EnergyMonitor(dev)


def test_kernel_path_names():
    assert kernel_path("fp16", 8) == "fp16"
    assert kernel_path("bf16", 1) == "bf16"
    assert kernel_path("int8", 1) == "int8"
    assert kernel_path("int8", 4, threshold=0.0) == "int8_t0"
    assert kernel_path("nf4", 1) == "nf4_b1"
    assert kernel_path("nf4", 2) == "nf4_bn"
    assert kernel_path("nf4", 1, double_quant=True) == "nf4dq_b1"
    assert kernel_path("fp4", 64) == "fp4_bn"
    with pytest.raises(QtsimError):
        kernel_path("int4", 1)
    assert parse_path("nf4dq_bn").double_quant and parse_path("int8_t0").threshold == 0.0
    assert linear_path("nf4", 1).name == "nf4_b1"
    with pytest.raises(QtsimError, match="does not run at batch"):
        linear_path("nf4_b1", 4)


@pytest.mark.parametrize("path", ALL_PATHS)
def test_linear_probe_every_path(cpu, path):
    dev, mon = cpu
    batch = 1 if path.endswith("_b1") else 3
    r = linear_probe(dev, path, 128, 256, batch, monitor=mon, reps=2, min_window_s=0.02,
                     warmup_s=0.01)
    a = r.attrs
    assert r.status == "ok" and a["path"] == path and a["kind"] == "linear"
    assert a["iters_per_rep"] >= 1 and a["weight_bytes"] > 0
    d = r.datasets["duration_s"]
    assert len(d) >= 2 and (d > 0).all()
    assert (r.datasets["energy_j_hli"] > 0).all()
    assert r.datasets["energy_j_hli"] == pytest.approx(mon.tdp_w * d)
    if path.startswith("int8"):
        assert a["llm_int8_threshold"] == (0.0 if path == "int8_t0" else 6.0)
    if path.startswith(("nf4", "fp4")):
        assert a["bnb_4bit_quant_type"] == path[:3] and a["compute_dtype"] == "bf16"
        assert a["bnb_4bit_use_double_quant"] == ("dq" in path)


def test_quantised_weights_are_smaller(cpu):
    dev, mon = cpu
    sizes = {p: linear_probe(dev, p, 256, 256, 1, monitor=mon, reps=1, min_window_s=0.005,
                             warmup_s=0.0).attrs["weight_bytes"]
             for p in ("fp16", "int8", "nf4_b1", "nf4dq_b1")}
    assert sizes["fp16"] == 256 * 256 * 2
    assert sizes["nf4dq_b1"] < sizes["nf4_b1"] < sizes["int8"] < sizes["fp16"]


def test_int8_outlier_injection(cpu):
    dev, mon = cpu
    r = linear_probe(dev, "int8", 128, 128, 2, monitor=mon, reps=1, min_window_s=0.01,
                     warmup_s=0.0, outlier_injection=True)
    assert r.attrs["outlier_injection"] is True and len(r.attrs["outlier_dims"]) == 8


def test_membw_and_gemm(cpu):
    dev, mon = cpu
    r = membw_probe(dev, mon, size_bytes=8 << 20, reps=2, min_window_s=0.02, warmup_s=0.01)
    assert r.attrs["bytes_per_iter"] == 16 << 20 and (r.datasets["duration_s"] > 0).all()
    g = gemm_probe(dev, mon, n=128, precision="bf16", reps=2, min_window_s=0.02, warmup_s=0.01)
    assert g.attrs["flops_per_iter"] == 2 * 128**3 and (g.datasets["energy_j_hli"] > 0).all()


def test_oom_classification():
    import torch

    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: out of memory"))
    assert not is_oom(RuntimeError("shape mismatch"))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("path", ["fp16", "int8", "int8_t0", "nf4_b1", "nf4_bn", "nf4dq_bn"])
def test_linear_probe_cuda(path):
    import torch

    from qtsim.calibration.measure.device import detect_device
    from qtsim.profiles.gpus import normalise_gpu_name

    dev = detect_device(normalise_gpu_name(torch.cuda.get_device_name(0)))
    mon = EnergyMonitor(dev)
    batch = 1 if path.endswith("_b1") else 8
    r = linear_probe(dev, path, 4096, 4096, batch, monitor=mon, reps=2, min_window_s=0.3)
    assert r.status == "ok" and (r.datasets["duration_s"] > 0.25).all()
    assert (r.datasets["energy_j_hli"] > 0).all()
    assert r.attrs["compute_dtype"] == ("fp16" if path != "bf16" else "bf16")
