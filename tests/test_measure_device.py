"""Device layer: --gpu refusal without CUDA, CPU description (GPU names: test_gpus.py)."""

import subprocess
import sys

import pytest

from qtsim.calibration.measure.device import CpuDevice, detect_device
from qtsim.errors import QtsimError
from qtsim.profiles.gpus import normalise_gpu_name

pytestmark = pytest.mark.measure


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda_available(), reason="this machine has CUDA")
def test_gpu_refused_without_cuda():
    with pytest.raises(QtsimError) as e:
        detect_device("h100")
    msg = str(e.value)
    assert msg == ("--gpu h100 requested but no CUDA device is visible "
                   "(torch.cuda.is_available() is False); use --gpu cpu to calibrate this CPU")
    assert "\n" not in msg


def test_cpu_device_describes_itself():
    dev = detect_device("cpu")
    assert isinstance(dev, CpuDevice)
    assert (dev.backend, dev.name, dev.torch_device) == ("cpu", "cpu", "cpu")
    info = dev.describe()
    assert info["device_string"]
    assert info["logical_cores"] >= 1
    assert info["cuda_version"] is None and info["power_limit_w"] is None
    assert dev.memory_bytes() > 1 << 28
    dev.synchronize()


def test_modules_import_without_torch():
    code = ("import sys; import qtsim.calibration.measure.device, qtsim.calibration.measure.energy, "
            "qtsim.calibration.measure.raw, qtsim.calibration.measure.nvml; "
            "print('torch' in sys.modules, 'pynvml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")
def test_cuda_device_matches_and_refuses_mismatch():
    import torch

    name = normalise_gpu_name(torch.cuda.get_device_name(0))
    dev = detect_device(name)
    assert dev.backend == "cuda" and dev.torch_device == "cuda:0"
    info = dev.describe()
    assert info["memory_bytes"] > 0 and info["cuda_version"]
    other = "l4" if name != "l4" else "h200"
    with pytest.raises(QtsimError, match=f"--gpu {other} requested but the visible GPU is"):
        detect_device(other)


def test_missing_measurement_stack_is_one_line(monkeypatch):
    import importlib.util

    from qtsim.calibration.measure import device

    real = importlib.util.find_spec
    monkeypatch.setattr(device.importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(QtsimError, match=r"measuring needs bitsandbytes: pip install 'qtsim\[calibrate\]'"):
        device.detect_device("cpu")
