"""`qtsim profiles new` (qtsim/profiles/custom.py): a spec profile of your own GPU, the same priors
as the shipped ones, refusals."""

import pytest

from qtsim.profiles.hardware import load_profile

from .conftest import invoke_qtsim, refused


def test_profiles_new_matches_shipped_priors(tmp_path, monkeypatch):
    monkeypatch.setenv("QTSIM_PROFILE_DIR", str(tmp_path))
    r = invoke_qtsim("profiles", "new", "my-l4", "--memory-gib", "22.35", "--bandwidth-gbs", "300",
                     "--fp16-tflops", "121", "--int8-tops", "242", "--tdp-w", "72",
                     "--architecture", "ada-lovelace")
    assert r.returncode == 0, r.stderr
    mine, shipped = load_profile("my-l4"), load_profile("l4")
    assert (tmp_path / "my-l4.toml").is_file() and mine.path == str(tmp_path / "my-l4.toml")
    for k, p in shipped.physical.items():
        assert mine.physical[k].value == pytest.approx(p.value), k
        assert mine.physical[k].source == p.source
    assert mine.hardware["architecture"] == "ada-lovelace"
    r = invoke_qtsim("trap", "--gpu", "my-l4", "--model", "mistral-7b", "--precision", "nf4",
                     "--draws", "10")
    assert r.returncode == 0 and "(host part hf-eager)" in r.stdout
    refused(["profiles", "new", "my-l4", "--memory-gib", "24", "--bandwidth-gbs", "300",
             "--fp16-tflops", "121", "--int8-tops", "242", "--tdp-w", "72"], "--force")
    r = invoke_qtsim("profiles", "new", "my-l4", "--memory-gib", "24", "--bandwidth-gbs", "300",
                     "--fp16-tflops", "121", "--int8-tops", "242", "--tdp-w", "72", "--force")
    assert r.returncode == 0 and load_profile("my-l4").hardware["memory_gib"] == 24.0


GOOD = {"--memory-gib": "24", "--bandwidth-gbs": "300", "--fp16-tflops": "121",
        "--int8-tops": "242", "--tdp-w": "72"}


@pytest.mark.parametrize("opt,value,needle", [
    ("--memory-gib", "-4", "positive"), ("--memory-gib", "lots", "not a number"),
    ("--bandwidth-gbs", "0", "positive"), ("--bandwidth-gbs", "3e9", "outside"),
    ("--fp16-tflops", "inf", "positive"), ("--int8-tops", "nan", "positive"),
    ("--tdp-w", "1", "outside"), ("--memory-type", "sram", "hbm or gddr"),
])
def test_profiles_new_refuses_bad_numbers(tmp_path, monkeypatch, opt, value, needle):
    monkeypatch.setenv("QTSIM_PROFILE_DIR", str(tmp_path))
    args = {**GOOD, opt: value}
    refused(["profiles", "new", "x1", *[a for kv in args.items() for a in kv]], needle)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name,needle", [("Bad Name", "profile name"), ("l4", "shadow")])
def test_profiles_new_refuses_bad_or_shipped_names(tmp_path, monkeypatch, name, needle):
    monkeypatch.setenv("QTSIM_PROFILE_DIR", str(tmp_path))
    refused(["profiles", "new", name, *[a for kv in GOOD.items() for a in kv]], needle)
