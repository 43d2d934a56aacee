"""The shipped operation inventory (data/reference/op_inventory.json) and its reader.

Reader tests import no torch; the facts checked are ones the trace could get wrong.
"""

import subprocess
import sys

import numpy as np
import pytest

from qtsim.errors import QtsimError
from qtsim.model.inventory import (
    COUNT_FIELDS,
    InventoryError,
    block_ops,
    layer_counts,
    load_inventory,
    model_types,
    paths,
)

LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "tail"]
TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma2")
BASES = ("fp16", "bf16", "int8", "int8_t0", "nf4", "nf4dq", "fp4")


def test_reader_imports_no_torch():
    code = "import sys, qtsim.model.inventory as i; i.load_inventory(); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


def test_provenance_and_lists():
    inv = load_inventory()
    pb = inv["produced_by"]
    for k in ("torch", "transformers", "bitsandbytes", "python", "qtsim", "date", "command"):
        assert pb[k], k
    assert pb["device"] == "cpu"
    assert "_local_scalar_dense" in inv["sync_ops"] and "nonzero" in inv["sync_ops"]
    assert "view" in inv["view_ops"] and "mm" not in inv["view_ops"]
    assert inv["notes"]


def test_every_type_and_path_traced():
    assert set(model_types()) == set(TYPES)
    for mt in TYPES:
        for base in BASES:
            for batch in (1, 4):
                c = layer_counts(mt, base, batch)
                assert c.batch == batch
                assert c.linears == LINEARS, (mt, base)
                for f in COUNT_FIELDS:
                    assert c.blocks[f].shape == (8,) and (c.blocks[f] >= 0).all()
    assert {"fp16_b1", "nf4_bn", "int8_t0_bn"} <= set(paths())


@pytest.mark.parametrize("mt", TYPES)
def test_16bit_layer_no_syncs_no_bnb(mt):
    for base in ("fp16", "bf16"):
        c = layer_counts(mt, base)
        assert c.per_layer("syncs_cuda") == 0 and c.per_layer("bnb_ops") == 0
        assert (c.blocks["view_ops"] <= c.blocks["aten_ops"]).all()


@pytest.mark.parametrize("mt", TYPES)
@pytest.mark.parametrize("base", ["nf4", "nf4dq", "fp4"])
def test_4bit_one_bnb_op_per_linear_no_sync(mt, base):
    for batch in (1, 4):
        c = layer_counts(mt, base, batch)
        assert (c.blocks["bnb_ops"][:7] >= 1).all() and c.blocks["bnb_ops"][7] == 0
        assert c.per_layer("syncs_cuda") == 0


@pytest.mark.parametrize("mt", TYPES)
def test_int8_threshold_syncs_on_cuda(mt):
    # bnb's CUDA int8_vectorwise_quant does ``if outliers.any():`` whenever threshold > 0,
    # and argwhere (nonzero) when there are outliers: one or two syncs per linear.
    no = layer_counts(mt, "int8", outliers=False)
    yes = layer_counts(mt, "int8", outliers=True)
    assert (no.blocks["syncs_cuda"][:7] == 1).all()
    assert (yes.blocks["syncs_cuda"][:7] == 2).all()
    assert (yes.blocks["kernels_cuda"] >= no.blocks["kernels_cuda"]).all()
    t0 = layer_counts(mt, "int8_t0")
    assert t0.per_layer("syncs_cuda") == 0
    assert (t0.blocks["bnb_ops"][:7] == 2).all()  # int8_vectorwise_quant + int8_scaled_mm


def test_int8_default_is_with_outliers():
    assert layer_counts("llama", "int8").outliers is True
    assert layer_counts("llama", "nf4").outliers is False
    with pytest.raises(InventoryError):
        layer_counts("llama", "nf4", outliers=True)


@pytest.mark.parametrize("mt", TYPES)
def test_post_has_generate_sync(mt):
    for base in BASES:
        c = layer_counts(mt, base)
        assert c.post["syncs_cuda"] >= 1
        assert "aten::argmax" in c.post["ops"]
        assert len(c.post["sync_at"]) == c.post["syncs_cuda"]


def test_layers_agree_except_alternating_attention():
    for mt in ("llama", "mistral", "qwen2", "qwen3"):
        assert layer_counts(mt, "nf4").layers_agree
    g = layer_counts("gemma2", "fp16")
    if not g.layers_agree:  # sliding/global layers alternate
        assert len(g.variants) >= 2
        assert g.per_step("aten_ops", 4) == (g.pre["aten_ops"] + g.post["aten_ops"]
                                             + 2 * sum(int(v["aten_ops"].sum())
                                                       for v in g.variants[:2]))


def test_per_step_sum():
    c = layer_counts("llama", "nf4_b1")
    assert c.per_step("kernels_cuda", 32) == (c.pre["kernels_cuda"] + c.post["kernels_cuda"]
                                              + 32 * int(c.blocks["kernels_cuda"].sum()))


def test_ops_audit_matches_counts():
    c = layer_counts("llama", "int8_t0", 4)
    ops = block_ops(c)
    assert [len(o) for o in ops] == list(c.blocks["aten_ops"] + c.blocks["bnb_ops"])
    # the view after the matmul is MatMul8bitLt reshaping its output back to 3-D
    assert ops[0][-3:] == ["bitsandbytes::int8_vectorwise_quant", "bitsandbytes::int8_scaled_mm",
                          "aten::view"]


def test_bnb_cuda_table():
    t = load_inventory()["bnb_cuda_ops"]
    assert t["gemv_4bit"]["kernels"] == 1 and t["gemv_4bit"]["syncs"] == 0
    assert t["gemm_4bit[M<=4]"]["kernels"] == 1
    assert t["int8_vectorwise_quant[threshold=0]"]["syncs"] == 0
    assert t["int8_vectorwise_quant[threshold>0, no outliers, rows=1]"]["syncs"] == 1
    assert t["int8_vectorwise_quant[threshold>0, no outliers, rows>1]"]["syncs"] == 1
    assert t["int8_vectorwise_quant[threshold>0, outliers, rows>1]"]["syncs"] == 2
    assert t["int8_scaled_mm"]["kernels"] == 2  # cigemmlt_32 + cdequant_mm_int32_fp16
    assert all(v["method"] in ("executed", "ast") for v in t.values())


def test_names_and_suffixes():
    assert layer_counts("falcon3", "nf4").model_type == "llama"
    assert layer_counts("llama", "nf4", 8).path == "nf4_bn"
    assert layer_counts("llama", "NF4_B1").path == "nf4_b1"
    np.testing.assert_array_equal(layer_counts("llama", "fp16_bn").blocks["aten_ops"],
                                  layer_counts("llama", "fp16", 4).blocks["aten_ops"])
    with pytest.raises(InventoryError, match="batch"):
        layer_counts("llama", "nf4_b1", 4)
    with pytest.raises(InventoryError, match="model type"):
        layer_counts("gpt2", "fp16")
    with pytest.raises(InventoryError, match="path"):
        layer_counts("llama", "int4")
    assert issubclass(InventoryError, QtsimError)


def test_unreadable_file(tmp_path):
    bad = tmp_path / "inv.json"
    bad.write_text('{"schema": 99}')
    with pytest.raises(InventoryError, match="schema"):
        load_inventory(str(bad))
    with pytest.raises(InventoryError, match="cannot read"):
        load_inventory(str(tmp_path / "missing.json"))
