import csv
import json
from importlib import resources

import numpy as np
import pytest

from qtsim.errors import ArchitectureError, UnknownNameError
from qtsim.model.architecture import from_config, load_architecture, load_config, shipped_models

from .conftest import qtsim_cli, refused, write_config

PUBLISHED = {r["model"]: float(r["n_params"]) for r in csv.DictReader(
    (resources.files("qtsim.data.reference") / "published_params.csv").read_text().splitlines())}
DENSE = [m for m in shipped_models() if m != "qwen3-30b-a3b"]
REQUIRED = ["qwen3-0.6b", "qwen3-1.7b", "falcon3-3b", "mistral-7b", "llama-3.1-8b", "qwen2.5-14b",
            "qwen2.5-32b", "llama-3.1-70b", "qwen2.5-72b"]


def test_required_models_shipped():
    assert set(REQUIRED) <= set(shipped_models())


@pytest.mark.parametrize("model", DENSE)
def test_parameter_totals_match_published_within_2pct(model):
    a = load_architecture(model)
    assert a.n_params == pytest.approx(PUBLISHED[model], rel=0.02)


def test_exact_totals_where_published_exactly():
    assert load_architecture("mistral-7b").n_params == 7_248_023_552
    assert load_architecture("llama-3.1-8b").n_params == 8_030_261_248
    assert load_architecture("llama-3.1-70b").n_params == 70_553_706_496


def test_moe_refused():
    with pytest.raises(ArchitectureError, match="mixture-of-experts"):
        load_architecture("qwen3-30b-a3b")


def test_unknown_model_suggests():
    with pytest.raises(UnknownNameError, match="did you mean.*mistral-7b"):
        load_architecture("mistral-7")


def test_config_path_and_malformed(tmp_path):
    good = tmp_path / "config.json"
    cfg = json.loads((resources.files("qtsim.data.architectures") / "qwen3-0.6b.json").read_text())
    good.write_text(json.dumps(cfg))
    assert load_architecture(str(good)).n_params == load_architecture("qwen3-0.6b").n_params
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ArchitectureError, match="not valid JSON"):
        load_architecture(str(bad))
    with pytest.raises(ArchitectureError, match="hidden_size"):
        from_config({"model_type": "llama", "num_attention_heads": 8})
    with pytest.raises(ArchitectureError, match="not a supported dense decoder"):
        from_config({"model_type": "bert", "hidden_size": 8})


def test_quantisation_bytes():
    a = load_architecture("llama-3.1-8b")
    w = a.n_quant_weights
    # lm_head and embeddings stay 16-bit
    assert a.weight_bytes("fp16") == pytest.approx(2 * a.n_params)
    assert a.weight_bytes("nf4") - a.weight_bytes("nf4", double_quant=True) == pytest.approx(
        w * (0.5 - (8 / 64 + 32 / (64 * 256))) / 8)
    assert a.bits_per_weight("nf4") == pytest.approx(4.5)
    assert 8.0 < a.bits_per_weight("int8") < 8.02
    assert a.n_linear_calls == 32 * 7
    assert a.kv_bytes_per_token == 32 * 2 * 8 * 128 * 2


def test_scaled_family_hits_target_and_reproduces_base():
    a = load_architecture("qwen2.5-14b")
    n = np.geomspace(1e8, 1e12, 7)
    fam = a.scaled(n)
    assert np.allclose(fam.n_params, n, rtol=1e-6)
    assert np.all(np.diff(fam.n_layers) > 0)
    base = a.scaled(a.n_params)
    assert float(base.n_quant_weights) == pytest.approx(a.n_quant_weights, rel=1e-6)
    assert float(base.n_linear_calls) == pytest.approx(a.n_linear_calls, rel=1e-6)


def test_model_names_from_files_and_name_equals_path(tmp_path):
    from qtsim.model.architecture import load_architecture

    a = write_config(tmp_path / "d" / "config.json")
    b = write_config(tmp_path / "d" / "config-small.json")
    c = write_config(tmp_path / "e" / "model.json", _qtsim_name="mine")
    assert load_architecture(a).name == "d"
    assert load_architecture(b).name == "config-small"
    assert load_architecture(c).name == "mine"
    assert load_architecture(f"big={a}").name == "big"
    assert load_architecture("seven=mistral-7b").name == "seven"
    code, out, err = qtsim_cli("simulate", "--gpu", "l4", "--model", f"{a},{b}", "--batch", "1",
                               "--out", str(tmp_path / "s.h5"))
    assert code == 0, err
    assert "config-small" in out


def test_impossible_grouped_query_attention_is_refused(tmp_path):
    cfg, _, _ = load_config("qwen2.5-0.5b")  # 14 heads
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_qtsim")}
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({**cfg, "num_attention_heads": 28, "num_key_value_heads": 5,
                                "head_dim": 64}))
    refused(["trap", "--gpu", "l4", "--model", str(path), "--precision", "nf4"],
            "num_key_value_heads 5 does not divide num_attention_heads 28")
