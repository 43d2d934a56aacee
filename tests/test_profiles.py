import json
import math
import os
import re
import stat
import tomllib
from pathlib import Path

import numpy as np
import pytest

from qtsim.errors import ProfileError, UnknownNameError
from qtsim.model.architecture import load_architecture
from qtsim.profiles.constants import paper_constants_table
from qtsim.profiles.files import dumps_toml
from qtsim.profiles.hardware import (
    list_profiles,
    load_profile,
    parse_profile,
    read_profile,
    write_profile,
)
from qtsim.profiles.hosts import parse_host
from qtsim.profiles.priors import REFERENCE_MODEL, spec_profile, spec_rows

from .conftest import SHIPPED_L4, TRAP, edited_l4, qtsim_cli, refused

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
        if p.physical[k].value:  # fitted to public rows (stderr from the fit), or a wide guess
            assert p.physical[k].stderr > 0
            assert "public" in p.physical[k].basis or p.physical[k].relative_stderr >= 0.15, k


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


def _drop_table(text: str, name: str) -> str:
    """``text`` without the TOML table ``[name]`` (its header and keys)."""

    return re.sub(rf"\[{re.escape(name)}\]\n(?:[^\[\n][^\n]*\n)*", "", text)


@pytest.mark.parametrize("mutate,msg", [
    (lambda t: t.replace("schema_version = 1", "schema_version = 9"), "schema_version"),
    (lambda t: t.replace('name = "l4"', ""), "lacks 'name'"),
    (lambda t: t.replace("tdp_w = 72.0", "tdp_w = -72.0"), "tdp_w"),
    (lambda t: t.replace("[physical.mem_bw_gbs]\nvalue = ", "[physical.mem_bw_gbs]\nvalue = nan #"), "finite"),
    (lambda t: t.replace("[physical.p_awake_w]", "[physical.p_awake_wX]"),
     r"\[physical.p_awake_wX\] is not a constant of qtsim's model \(did you mean: p_awake_w"),
    (lambda t: _drop_table(t, "physical.p_awake_w"), "lacks p_awake_w"),
    (lambda t: _drop_table(_drop_table(t, "physical.t_call_fp16_s"), "physical.t_call_bf16_s"),
     "native fp16 path"),
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


SHIPPED_DIR = Path(__file__).parents[1] / "hardware_profiles"
GPU_PROFILES = sorted(f.stem for f in SHIPPED_DIR.glob("*.toml"))
BITS = {"int8": 8, "nf4": 4}  # the paper's p for eq. 18; the native pi is 16


def _same(stored, fresh, digits):
    """Equal at the ``digits`` significant digits the file prints (written as float(f"{x:.Ng}"))."""
    return stored == pytest.approx(fresh, rel=10.0 ** (1 - digits), abs=1e-300)


@pytest.mark.parametrize("name", GPU_PROFILES)
def test_shipped_constants_match_a_fresh_derivation(name):
    """[constants] (alpha, gamma, phi, eq. 18 B* at batch 1) re-derived from the file's own
    [physical] constants: stale constants after a change to the model or priors fail here."""
    prof = read_profile(SHIPPED_DIR / f"{name}.toml")
    stored = prof.constants
    fresh = paper_constants_table(prof, load_architecture(REFERENCE_MODEL).counts(),
                                  stored["reference_model"])
    assert stored["reference_model"] == REFERENCE_MODEL and stored["reference_batch"] == 1
    for key, digits in (("alpha_j_per_weight_bit", 6), ("alpha_j_per_weight_bit_stderr", 4)):
        assert _same(stored[key], fresh[key], digits), key
    for p in BITS:
        for key, v in fresh[p].items():
            assert _same(stored[p][key], v, 4 if key.endswith("_stderr") else 6), (p, key)


@pytest.mark.parametrize("name", GPU_PROFILES)
def test_shipped_constants_by_hand(name):
    """Two of the [constants] by hand from the paper's formulas: the hardware alpha,
    (e_byte + P_static / BW) / 8 J per weight bit, and eq. 18, B* = alpha (pi - p) / phi."""
    prof = read_profile(SHIPPED_DIR / f"{name}.toml")
    v, c = prof.values(), prof.constants
    alpha = (v["e_byte_j"] + v["p_awake_w"] / (v["mem_bw_gbs"] * 1e9)) / 8.0
    assert _same(c["alpha_j_per_weight_bit"], alpha, 6)
    for p, bits in BITS.items():
        row = c[p]
        # the stored B* was rounded from unrounded alpha and phi: 6 digits each, so 5 here
        assert _same(row["b_star_eq18"], row["alpha_j_per_bit"] * (16 - bits) / row["phi_j"], 5)


HOST_TEXT = (SHIPPED_DIR / "hosts" / "hf-eager-server.toml").read_text()


@pytest.mark.parametrize("mutate,msg", [
    (lambda t: t.replace('name = "hf-eager-server"', ""), "[host] lacks 'name'"),
    (lambda t: t.replace("[physical.h_op_s]", "[physical.h_opX_s]"), "lacks h_op_s"),
    (lambda t: t.replace("[physical.h_step_s]", "[physical.x_step_s]"), "not a host constant"),
    (lambda t: t.replace('source = "published"', 'source = "guessed"', 2),
     "source must be prior, published or calibrated"),
    (lambda t: t.replace("[physical.h_op_s]\nvalue = ", "[physical.h_op_s]\nvalue = -"),
     "[physical.h_op_s] value and stderr must be finite and >= 0"),
    (lambda t: t.replace("[physical.h_op_s]\nvalue = ", "[physical.h_op_s]\nvalue = 'a' #"),
     "[physical.h_op_s] value and stderr must be numbers"),
    (lambda t: t[: len(t) // 2] + "[[[", "not valid TOML"),
])
def test_corrupt_host_parts_give_one_line_errors(mutate, msg):
    assert parse_host(HOST_TEXT, "h.toml").physical  # the shipped file itself is valid
    with pytest.raises(ProfileError) as e:
        parse_host(mutate(HOST_TEXT), "h.toml")
    assert str(e.value).startswith("h.toml: ") and msg in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("record,msg", [
    ({"rho": 1.5, "step_s": {"q68": 0.1}}, "[fit.model_error] rho"),
    ({"rho": 0.5, "step_s": {"q68": -0.1}}, "[fit.model_error.step_s] q68"),
    ({"rho": 0.5, "step_s": {"q95": 0.2}}, "[fit.model_error.step_s] q68"),
    ({"rho": 0.5, "step_s": {"q68": 0.1, "q95": "wide"}}, "[fit.model_error.step_s] q95"),
])
def test_model_error_record_shape_is_checked(record, msg):
    prof = load_profile("l4")
    prof.fit["model_error"] = record
    with pytest.raises(ProfileError) as e:
        parse_profile(prof.to_toml(), "x.toml")
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_written_toml_reads_back_numpy_and_nan():
    """The writer (tomli-w) takes numpy numbers and arrays and keeps nan and inf."""
    doc = {"a": np.float64(0.1), "n": np.int64(3), "arr": np.array([1.5, np.inf]),
           "t": {"nan": float("nan"), "rows": [[1, 2], [3, 4]], "s": 'say "hi"\n'}}
    back = tomllib.loads(dumps_toml(doc))
    assert back["a"] == 0.1 and back["n"] == 3 and back["arr"] == [1.5, math.inf]
    assert math.isnan(back["t"]["nan"]) and back["t"]["rows"] == [[1, 2], [3, 4]]
    assert back["t"]["s"] == 'say "hi"\n'


def test_schema_knows_every_spec_prior():
    """The schema names the constants without asking the priors (profiles/schema.py sits below
    profiles/priors.py): every constant a spec-derived profile holds must still be one it knows."""
    from qtsim.profiles import schema
    from qtsim.profiles.priors import spec_prior_names

    names = spec_prior_names()
    assert len(names) > 20
    assert [n for n in names if not schema.is_known_param(n)] == []
    assert not schema.is_known_param("t_call_nf5_b1_s")  # the check can fail


def test_profiles_are_written_for_a_team_to_read(tmp_path):
    from qtsim.profiles.hardware import read_profile, write_profile

    src = tmp_path / "l4.toml"
    src.write_text(SHIPPED_L4)
    old = os.umask(0o022)
    try:
        p = write_profile(read_profile(src), tmp_path / "out" / "l4.toml")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


FAST = (("mem_bw_gbs = 300.0", "mem_bw_gbs = 3000.0"), ("fp16_tflops = 121.0", "fp16_tflops = 1000.0"),
        ("tdp_w = 72.0", "tdp_w = 700.0"), ("idle_w = 7.2", "idle_w = 70.0"))


def test_edited_datasheet_figures_change_the_answer_and_say_so(tmp_path):
    fast = edited_l4(tmp_path, "l4-fast.toml", *FAST)
    base = json.loads(qtsim_cli(*TRAP, "--gpu", "l4", "--format", "json")[1])
    code, out, err = qtsim_cli(*TRAP, "--profile", fast, "--format", "json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["quantized"]["j_per_query"]["value"] != base["quantized"]["j_per_query"]["value"]
    assert rep["native"]["tok_per_s"]["value"] > 2 * base["native"]["tok_per_s"]["value"]
    changed = {r["constant"]: r for r in rep["profile"]["recomputed"]}
    bw = load_profile("l4").physical["mem_bw_gbs"].value  # the shipped SHIPPED_L4's effective bandwidth
    assert changed["mem_bw_gbs"]["file"] == pytest.approx(bw)
    assert changed["mem_bw_gbs"]["derived"] == pytest.approx(10 * bw, rel=1e-4)
    assert changed["p_awake_w"]["derived"] > 3 * changed["p_awake_w"]["file"]  # TDP 72 -> 700 W
    assert changed["p_cap_w"]["derived"] == pytest.approx(700.0)
    text = qtsim_cli(*TRAP, "--profile", fast)[1]
    assert "profile note: [physical] recomputed from [hardware]" in text
    assert f"mem_bw_gbs {bw:.4g} -> {10 * bw:.4g} GB/s" in text


def test_a_value_of_the_users_own_is_kept(tmp_path):
    own = edited_l4(tmp_path, "l4-own.toml", *FAST,
                    ('[physical.p_idle_w]\nvalue = 7.2\nstderr = 3.6\nunit = "W"\nsource = "prior"',
                  '[physical.p_idle_w]\nvalue = 20.0\nstderr = 2.0\nunit = "W"\nsource = "assumed"'))
    from qtsim.profiles.hardware import read_profile

    p = read_profile(own)
    assert p.physical["p_idle_w"].value == 20.0  # source assumed: the user's, not re-derived
    assert p.physical["mem_bw_gbs"].value == pytest.approx(
        10 * load_profile("l4").physical["mem_bw_gbs"].value)


def test_shipped_profiles_agree_with_their_datasheet_figures():
    from qtsim.profiles.hardware import list_profiles, load_profile

    for r in list_profiles():
        assert not load_profile(r["name"]).provenance.get("recomputed"), r["name"]


BAD_PROFILES = [
    ("negative bandwidth", (("mem_bw_gbs = 300.0", "mem_bw_gbs = -300.0"),),
     "[hardware] mem_bw_gbs = -300.0 is outside 10-100000 GB/s"),
    ("idle above TDP", (("idle_w = 7.2", "idle_w = 500.0"),),
     "[hardware] idle_w = 500.0 must lie between 0 and tdp_w = 72 W"),
    ("misspelled hardware key", (("mem_bw_gbs = 300.0", "mem_bw_gbsx = 300.0"),),
     "unknown [hardware] key 'mem_bw_gbsx' (did you mean: mem_bw_gbs"),
    ("misspelled constant", (("[physical.p_idle_w]", "[physical.p_idel_w]"),),
     "[physical.p_idel_w] is not a constant of qtsim's model (did you mean: p_idle_w"),
    ("misspelled field", (('basis = "streaming at', 'basiz = "streaming at'),),
     "[physical.e_byte_j] unknown field 'basiz' (did you mean: basis?)"),
    ("unknown table", (("[provenance]", "[provenence]"),), "unknown table 'provenence'"),
    ("power above TDP", (("[physical.p_idle_w]\nvalue = 7.2", "[physical.p_idle_w]\nvalue = 100.0"),
                         ('[physical.p_idle_w]\nvalue = 100.0\nstderr = 3.6\nunit = "W"\nsource = "prior"',
                          '[physical.p_idle_w]\nvalue = 100.0\nstderr = 3.6\nunit = "W"\nsource = "assumed"')),
     "[physical.p_idle_w] 100 W exceeds [hardware] tdp_w = 72 W"),
]


@pytest.mark.parametrize("subs,needle", [b[1:] for b in BAD_PROFILES],
                         ids=[b[0] for b in BAD_PROFILES])
def test_impossible_or_misspelled_profiles_are_refused(tmp_path, subs, needle):
    refused([*TRAP, "--profile", edited_l4(tmp_path, "bad.toml", *subs)], needle)


def test_a_missing_profile_directory_is_refused():
    refused([*TRAP, "--gpu", "l4"], "QTSIM_PROFILE_DIR=/no/such/dir: no such directory",
            env={"QTSIM_PROFILE_DIR": "/no/such/dir"})


def test_a_user_profile_shadowing_a_shipped_one_says_so(tmp_path):
    (tmp_path / "l4.toml").write_text(SHIPPED_L4)
    out = qtsim_cli(*TRAP, "--gpu", "l4", env={"QTSIM_PROFILE_DIR": str(tmp_path)})[1]
    assert f"profile: l4 (user file {tmp_path / 'l4.toml'} (named like the shipped l4, but not " \
           "its figures)" in out


NEW_GPUS = {"t4": (320, 65, 70), "a10g": (600, 70, 300), "a10": (600, 125, 150),
            "l40s": (864, 362.05, 350), "rtx-4090": (1008, 165.2, 450),
            "rtx-6000-ada": (960, 364.2, 300)}


@pytest.mark.parametrize("gpu", sorted(NEW_GPUS))
def test_new_gpus_ship_with_sources(gpu):
    from qtsim.profiles.priors import public_fit, spec_rows

    row = {r["gpu"]: r for r in spec_rows()}[gpu]
    assert row["source"].strip()
    bw, tflops, tdp = NEW_GPUS[gpu]
    prof = load_profile(gpu)
    assert prof.hardware["mem_bw_gbs"] == bw and prof.hardware["fp16_tflops"] == tflops
    assert prof.tdp_w == tdp and prof.source == "spec"
    share = public_fit()["power"]["byte_share"]["value"]  # streaming at datasheet BW: share x TDP
    assert prof.physical["e_byte_j"].value == pytest.approx(share * tdp / (bw * 1e9), rel=1e-3)
