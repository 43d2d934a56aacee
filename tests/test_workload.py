"""What is served (qtsim/model/workload.py): bitsandbytes settings checked and named as transformers
names them."""

import pytest

from qtsim.errors import QtsimError
from qtsim.model.workload import BnbSettings
from qtsim.profiles.hardware import load_profile


@pytest.mark.parametrize("kw,needle", [
    ({"int8_threshold": 3}, "llm_int8_threshold 6"),
    ({"int8_threshold": "x"}, "not a number"),
    ({"compute_dtype": "fp64"}, "fp16, bf16, fp32"),
])
def test_bnb_settings_refuse_bad_values(kw, needle):
    with pytest.raises(QtsimError, match=needle):
        BnbSettings(**kw)


def test_bnb_settings_check_and_config_names():
    with pytest.raises(QtsimError, match="4-bit"):
        BnbSettings(double_quant=True).check(["int8"])
    with pytest.raises(QtsimError, match="int8 only"):
        BnbSettings(int8_threshold=0).check(["nf4"])
    with pytest.raises(QtsimError, match="no fp32 kernel path"):
        BnbSettings(compute_dtype="fp32").check(["nf4"], load_profile("l4"))
    cfg = BnbSettings(double_quant=True, compute_dtype="bf16").bnb_config("nf4")
    assert cfg["bnb_4bit_use_double_quant"] is True and cfg["bnb_4bit_compute_dtype"] == "bfloat16"
    assert cfg["llm_int8_threshold"] is None
    assert BnbSettings(int8_threshold=0).bnb_config("int8")["llm_int8_threshold"] == 0.0
