"""Real decoding runs of a tiny random-weight architecture on this CPU."""

import importlib.util

import pytest

pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")
pytest.importorskip("transformers")

from qtsim.calibration.measure.device import CpuDevice  # noqa: E402
from qtsim.calibration.measure.energy import EnergyMonitor  # noqa: E402
from qtsim.calibration.probes.decode import build_model, decode_point_id, decode_run  # noqa: E402
from qtsim.errors import QtsimError  # noqa: E402

pytestmark = pytest.mark.measure

MICRO = {"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
         "head_dim": 32, "vocab_size": 256, "max_position_embeddings": 256,
         "tie_word_embeddings": False}
K = 6


@pytest.fixture(scope="module")
def cpu():
    dev = CpuDevice()
    return dev, EnergyMonitor(dev)


@pytest.mark.parametrize("precision", ["fp16", "int8", "nf4"])
def test_decode_generates_exactly_k_tokens(cpu, precision):
    dev, mon = cpu
    built = build_model(MICRO, precision, dev, route="module_replacement"
                        if precision != "fp16" else "auto")
    r = decode_run(built, 2, 5, K, reps=2, warmup=1, monitor=mon, model_name="micro")
    a = r.attrs
    assert r.status == "ok" and a["tokens_generated"] == K and a["new_tokens"] == K
    assert a["kind"] == "decode" and a["precision"] == precision
    assert a["build_route"] in ("from_config", "module_replacement", "from_pretrained")
    if precision != "fp16":
        assert a["n_quantised_linears"] == 2 * 7  # lm_head stays 16-bit
    d, p = r.datasets["duration_s"], r.datasets["prefill_s"]
    assert len(d) == 2 and (d > 0).all() and (p > 0).all()
    assert (r.datasets["energy_j_hli"] > 0).all() and (r.datasets["prefill_energy_j_hli"] > 0).all()
    assert r.datasets["peak_memory_bytes"] > 0 and "VmHWM" in a["peak_memory_kind"]
    assert '"hidden_size": 64' in a["config_json"]


def test_outlier_injection_hooks(cpu):
    dev, mon = cpu
    built = build_model(MICRO, "int8", dev, outlier_injection=True, route="module_replacement")
    assert built.attrs["outlier_hooks"] == 14 and built.attrs["outlier_scale"] == 20.0
    r = decode_run(built, 1, 4, 3, reps=1, warmup=1, monitor=mon, model_name="micro")
    assert r.status == "ok" and r.attrs["outlier_injection"] is True


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is None,
                    reason="transformers' bitsandbytes loading needs accelerate")
def test_from_pretrained_route(cpu):
    dev, mon = cpu
    built = build_model(MICRO, "nf4", dev, route="from_pretrained", double_quant=True)
    assert built.attrs["build_route"] == "from_pretrained"
    r = decode_run(built, 1, 4, 3, reps=1, warmup=1, monitor=mon, model_name="micro")
    assert r.status == "ok"


def test_auto_route_records_why(cpu):
    dev, _ = cpu
    built = build_model(MICRO, "nf4", dev)
    assert built.attrs["build_route"] in ("from_pretrained", "module_replacement")
    assert built.attrs["build_route_reason"]


def test_bad_inputs():
    with pytest.raises(QtsimError):
        build_model(MICRO, "int3", CpuDevice())
    with pytest.raises(QtsimError, match="model_type"):
        build_model({"hidden_size": 8}, "fp16", CpuDevice())
    assert decode_point_id("m", "nf4", 4, 16, 32, double_quant=True) == \
        "decode__m__nf4dq__b4__p16__k32"
    assert decode_point_id("m", "int8", 1, 8, 8, threshold=0.0, outlier_injection=True) == \
        "decode__m__int8_t0__b1__p8__k8__oi"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp16", "int8", "nf4"])
def test_decode_cuda(precision):
    import torch

    from qtsim.calibration.measure.device import detect_device
    from qtsim.profiles.gpus import normalise_gpu_name

    dev = detect_device(normalise_gpu_name(torch.cuda.get_device_name(0)))
    built = build_model(MICRO, precision, dev)
    r = decode_run(built, 2, 8, K, reps=2, warmup=1, monitor=EnergyMonitor(dev),
                   model_name="micro")
    assert r.status == "ok" and r.attrs["peak_memory_kind"] == "torch.cuda.max_memory_allocated"
    assert r.datasets["peak_memory_bytes"] > 0


def test_steady_memory_is_what_the_model_holds():
    from types import SimpleNamespace

    from qtsim.calibration.probes.decode import steady_memory

    cpu, cuda = SimpleNamespace(backend="cpu"), SimpleNamespace(backend="cuda")
    got = steady_memory(900_000_000, 6_000_000, cpu)  # the process's peak RSS is not it
    assert got["steady_memory_bytes"] == 6_000_000
    assert got["steady_memory_kind"].startswith("bytes of the tensors the built model holds")
    assert steady_memory(900, None, cpu) == {}
    assert steady_memory(900, 6, cuda)["steady_memory_bytes"] == 900


def test_held_tensor_bytes_count_bitsandbytes_state():
    torch = pytest.importorskip("torch")
    pytest.importorskip("bitsandbytes")
    from types import SimpleNamespace

    from qtsim.calibration.probes.decode import build_model, held_tensor_bytes
    from qtsim.calibration.probes.plan import TINY_QWEN3_CONFIG
    from qtsim.model.architecture import from_config
    from qtsim.validate.predict import steady_bytes

    class Cpu(SimpleNamespace):
        def synchronize(self):
            pass

    dev = Cpu(backend="cpu", name="cpu", torch_device=torch.device("cpu"))
    counts = from_config(TINY_QWEN3_CONFIG).counts()
    cpu_profile = SimpleNamespace(hardware={"device_type": "cpu"})
    from qtsim.model.workload import Workload

    for prec in ("fp16", "nf4", "int8"):
        built = build_model(TINY_QWEN3_CONFIG, prec, dev)
        held = held_tensor_bytes(built.model)
        assert held == built.attrs["held_tensor_bytes"]
        pred = steady_bytes(cpu_profile, counts, Workload(prec))
        assert abs(held / pred - 1) < 0.05, (prec, held, pred)
