"""Tracing a real decode step on the CPU (needs torch, transformers, bitsandbytes)."""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")
pytest.importorskip("transformers")

from qtsim.calibration.trace.bnb_cuda import BnbCuda  # noqa: E402
from qtsim.calibration.trace.step import PathSpec, main, tiny_config, trace_step  # noqa: E402

pytestmark = pytest.mark.measure

FIELDS = ("aten_ops", "view_ops", "bnb_ops", "kernels_cuda", "syncs_cuda", "modules")


def _strip(entry):
    """The parts of an entry that must not depend on model width."""
    def region(b):
        return {k: b[k] for k in (*FIELDS, "ops", "sync_at")}

    return {"layer": [{"linear": b["linear"], **region(b)} for b in entry["layer"]],
            "pre": region(entry["pre"]), "post": region(entry["post"])}


@pytest.fixture(scope="module")
def bnb_cuda():
    return BnbCuda()


@pytest.mark.parametrize("spec", [PathSpec("nf4", "nf4"),
                                  PathSpec("int8", "int8", outliers=True)])
def test_trace_structure_and_width_independence(spec, bnb_cuda):
    narrow = trace_step(tiny_config("llama", 128), spec, 1, bnb_cuda=bnb_cuda)
    wide = trace_step(tiny_config("llama", 256), spec, 1, bnb_cuda=bnb_cuda)
    assert [b["linear"] for b in narrow["layer"]] == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "tail"]
    assert narrow["layers_agree"] and narrow["path"] == f"{spec.base}_b1"
    for b in narrow["layer"][:7]:
        assert b["bnb_ops"] >= 1
        assert any(o.startswith("bitsandbytes::") for o in b["ops"][-2:])
        assert b["aten_ops"] + b["bnb_ops"] == len(b["ops"])
    assert narrow["post"]["syncs_cuda"] >= 1
    if spec.outliers:
        assert narrow["outlier_injection_ops_excluded"] > 0
    assert _strip(narrow) == _strip(wide)
    assert narrow["bnb_calls"]


def test_fp16_trace_has_no_bnb(bnb_cuda):
    e = trace_step(tiny_config("qwen2", 128), PathSpec("fp16", "fp16"), 4, bnb_cuda=bnb_cuda)
    assert e["path"] == "fp16_bn" and not e["bnb_calls"]
    assert sum(b["syncs_cuda"] for b in e["layer"]) == 0
    assert all("aten::mm" in b["ops"] or "aten::addmm" in b["ops"] for b in e["layer"][:7])


def test_cli_usage(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err


def test_shipped_file_is_json():
    from importlib.resources import files

    inv = json.loads((files("qtsim.data.reference") / "op_inventory.json").read_text())
    assert inv["schema"] == 1
