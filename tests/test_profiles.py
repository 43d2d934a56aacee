import os

import pytest

from qtsim.errors import ProfileError, UnknownNameError
from qtsim.profiles.hardware import (
    list_profiles,
    load_profile,
    parse_profile,
    read_profile,
    write_profile,
)
from qtsim.profiles.priors import spec_profile, spec_rows

SHIPPED = ["l4", "a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200",
           "rtx-pro-6000-blackwell", "b200", "rtx-4090"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_load_and_flag_priors(name):
    p = load_profile(name)
    assert p.source == "spec"
    assert p.hardware["sources"]
    priors = [k for k, v in p.physical.items() if v.source == "prior"]
    assert "t_call_nf4_b1_s" in priors and "t_kernel_s" in priors
    assert not any(k.startswith("h_") for k in p.physical)  # device part only: hosts are separate
    for k in priors:
        assert p.physical[k].basis, f"{k} has no basis"
        if p.physical[k].value:
            assert p.physical[k].relative_stderr >= 0.15


def test_shipped_profiles_match_their_generator():
    for row in spec_rows():
        shipped = load_profile(row["gpu"])
        regenerated = spec_profile(row)
        assert shipped.physical == regenerated.physical
        assert shipped.hardware == regenerated.hardware


def test_aliases_and_suggestions():
    assert load_profile("h100").name == "h100-sxm"
    assert load_profile("A100").name == "a100-80gb"
    with pytest.raises(UnknownNameError, match="did you mean"):
        load_profile("h10")


def test_roundtrip_and_atomic_write(tmp_path):
    p = load_profile("l4")
    out = write_profile(p, tmp_path / "l4.toml")
    q = read_profile(out)
    assert q.physical == p.physical and q.hardware == p.hardware
    assert [f.name for f in tmp_path.iterdir()] == ["l4.toml"]  # no temp file left behind


def test_user_directory_searched_first(tmp_path, monkeypatch):
    monkeypatch.setenv("QTSIM_PROFILE_DIR", str(tmp_path))
    p = load_profile("l4")
    p.provenance["device"] = "my own L4"
    write_profile(p, tmp_path / "l4.toml")
    assert load_profile("l4").provenance["device"] == "my own L4"
    rows = [r for r in list_profiles() if r["name"] == "l4"]
    assert rows[0]["origin"] == "user"


@pytest.mark.parametrize("mutate,msg", [
    (lambda t: t.replace("schema_version = 1", "schema_version = 9"), "schema_version"),
    (lambda t: t.replace('name = "l4"', ""), "lacks 'name'"),
    (lambda t: t.replace("tdp_w = 72.0", "tdp_w = -72.0"), "tdp_w"),
    (lambda t: t.replace("[physical.mem_bw_gbs]\nvalue = ", "[physical.mem_bw_gbs]\nvalue = nan #"), "finite"),
    (lambda t: t.replace("[physical.p_static_w]", "[physical.p_static_wX]"), "lacks p_static_w"),
    (lambda t: t.replace("[physical.t_call_fp16_s]", "[physical.t_call_fp16X_s]")
     .replace("[physical.t_call_bf16_s]", "[physical.t_call_bf16X_s]"), "native fp16 path"),
    (lambda t: t[: len(t) // 2] + "[[[", "not valid TOML"),
])
def test_corrupt_profiles_give_one_line_errors(mutate, msg):
    text = load_profile("l4").to_toml()
    with pytest.raises(ProfileError, match=msg) as e:
        parse_profile(mutate(text), "x.toml")
    assert "\n" not in str(e.value)


def test_missing_file():
    with pytest.raises(ProfileError, match="no such profile"):
        read_profile(os.path.join("nowhere", "p.toml"))


def test_draws_respect_bounds():
    p = load_profile("l4")
    d = p.draws(2000, seed=1)
    assert all((v >= 0).all() for v in d.values())
    assert d["mem_bw_gbs"].mean() == pytest.approx(p.physical["mem_bw_gbs"].value, rel=0.02)


@pytest.mark.parametrize("name", ["l4", "h100-sxm"])
def test_profiles_carry_paper_constants_with_stderr(name):
    c = load_profile(name).constants
    assert c["reference_model"] == "mistral-7b" and c["reference_batch"] == 1
    for p in ("int8", "nf4"):
        for k in ("alpha_j_per_bit", "gamma_j", "phi_j", "b_star_eq18"):
            assert c[p][k] >= 0 and c[p][f"{k}_stderr"] > 0, (p, k)
    # alpha does not depend on the precision, phi does (eq. 19)
    assert c["int8"]["alpha_j_per_bit"] == c["nf4"]["alpha_j_per_bit"]
    assert c["int8"]["phi_j"] != c["nf4"]["phi_j"]
