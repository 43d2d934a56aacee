import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from .conftest import (
    SHIPPED_L4,
    TRAP,
    invoke_qtsim,
    qtsim_cli,
    refused,
    run_qtsim_process,
    write_config,
)


def test_trap_text_answers_the_l4_question():
    r = invoke_qtsim("trap", "--gpu", "l4", "--model", "mistral-7b", "--precision", "nf4")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for needle in ("on energy", "J/query", "tok/s", "COR", "B*", "N*", "SI", "profile: l4", "prior"):
        assert needle in out


def test_trap_json_keys_documented_in_the_outputs_page():
    r = invoke_qtsim("trap", "--gpu", "h100", "--model", "qwen3-0.6b", "--precision", "int8",
                  "--batch", "4", "--format", "json", "--draws", "50")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert set(rep) == {"query", "verdict", "quantized", "native", "ratios", "b_star", "n_star",
                        "paper", "si", "host", "profile", "bitsandbytes", "budget", "serving"}
    assert rep["query"]["batch"] == 4
    assert rep["quantized"]["j_per_query"]["low"] <= rep["quantized"]["j_per_query"]["value"]
    page = (Path(__file__).parents[1] / "docs" / "formats-outputs.md").read_text()
    for key in rep:
        assert f"`{key}`" in page


def test_trap_csv():
    r = invoke_qtsim("trap", "--gpu", "l4", "--model", "qwen3-0.6b", "--precision", "nf4", "--format", "csv", "--draws", "20")
    assert r.returncode == 0 and r.stdout.startswith("gpu,model,precision,")


@pytest.mark.parametrize("args,needle", [
    (["trap", "--gpu", "l5", "--model", "mistral-7b", "--precision", "nf4"], "unknown GPU"),
    (["trap", "--gpu", "l4", "--model", "mistrall-7b", "--precision", "nf4"], "unknown model"),
    (["trap", "--gpu", "l4", "--model", "qwen3-30b-a3b", "--precision", "nf4"], "mixture-of-experts"),
    (["trap", "--gpu", "l4", "--model", "mistral-7b", "--precision", "int3"], "int3"),
    (["trap", "--gpu", "l4", "--model", "mistral-7b", "--precision", "nf4", "--batch", "0"], "--batch"),
    (["trap", "--gpu", "l4", "--model", "mistral-7b", "--precision", "nf4", "--tokens", "-5"], "--tokens"),
    (["trap", "--profile", "/nonexistent.toml", "--model", "mistral-7b", "--precision", "nf4"], "no such profile"),
])
def test_bad_input_exits_2_without_traceback(args, needle):
    r = invoke_qtsim(*args)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_input_is_one_line_and_exit_2_from_a_real_process():
    """Through ``python -m qtsim`` (a process: the exit status the shell sees, the module entry
    point), not only in-process: a refusal is one line on stderr and status 2."""
    r = run_qtsim_process("trap", "--gpu", "l5", "--model", "mistral-7b", "--precision", "nf4")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "unknown GPU" in r.stderr


def test_corrupt_profile_file(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("schema_version = 1\n[hardware]\nname = 'x'\n")
    r = invoke_qtsim("trap", "--profile", str(f), "--model", "mistral-7b", "--precision", "nf4")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_malformed_config_json(tmp_path):
    f = tmp_path / "config.json"
    f.write_text('{"model_type": "llama"')
    r = invoke_qtsim("trap", "--gpu", "l4", "--model", str(f), "--precision", "nf4")
    assert r.returncode == 2 and "not valid JSON" in r.stderr


#: heavy libraries a planner command that does not use them must not load (docs/layout.md)
START_UP = ("pandas", "xarray", "h5py", "lmfit", "scipy", "matplotlib")


@pytest.mark.parametrize("args, start_up", [
    (["trap", "--gpu", "l4", "--model", "mistral-7b", "--precision", "nf4", "--draws", "20"], []),
    (["compare", "--model", "qwen3-0.6b", "--gpu", "l4,t4"], []),
    (["plan", "--model", "qwen3-0.6b", "--demand", "1/s", "--gpu", "l4", "--draws", "10",
      "--batch", "1:4"], []),
    (["trust", "report", "--format", "csv"], None),  # the shipped trust-probe record (scipy)
])
def test_planner_imports_no_torch(args, start_up):
    # a fresh interpreter: whether torch gets imported is only visible from a clean sys.modules
    code = ("import sys\nfrom qtsim.cli.main import main\n"
            f"try:\n    main({args!r})\n"
            "except SystemExit:\n    pass\n"
            "main_mods = [m for m in ('torch','transformers','bitsandbytes','pynvml') if m in sys.modules]\n"
            "print('HEAVY', main_mods)\n"
            f"print('START_UP', [m for m in {START_UP!r} if m in sys.modules])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in r.stdout, r.stdout + r.stderr
    if start_up is not None:  # what the command does not use it does not load
        assert f"START_UP {start_up}" in r.stdout, r.stdout + r.stderr


def test_profiles_and_models_commands():
    r = invoke_qtsim("profiles", "list")
    assert r.returncode == 0 and "h100-sxm" in r.stdout
    r = invoke_qtsim("profiles", "show", "l4")
    assert r.returncode == 0 and "t_call_nf4_b1_s" in r.stdout and "prior" in r.stdout
    r = invoke_qtsim("models")
    assert r.returncode == 0 and "llama-3.1-70b" in r.stdout and "refused" in r.stdout


def test_console_script_and_help():
    # the installed console script: the entry point pip wrote must answer
    r = subprocess.run(["qtsim", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "trap" in r.stdout
    r = invoke_qtsim("trap", "--help")
    assert "Example" in r.stdout


@pytest.fixture
def files(tmp_path):
    f = {"dir": tmp_path}
    f["list"] = tmp_path / "list.json"
    f["list"].write_text("[1, 2, 3]")
    f["awq"] = write_config(tmp_path / "awq" / "config.json",
                            quantization_config={"quant_method": "awq", "bits": 4})
    f["x"] = write_config(tmp_path / "x" / "m" / "config.json")
    f["y"] = write_config(tmp_path / "y" / "m" / "config.json")
    f["nan"] = tmp_path / "nan.toml"
    f["nan"].write_text(SHIPPED_L4.replace("mem_bw_gbs = 300.0", "mem_bw_gbs = nan", 1))
    f["ok"] = tmp_path / "ok.toml"
    f["ok"].write_text(SHIPPED_L4)
    broken = tmp_path / "userdir"
    broken.mkdir()
    (broken / "h100-sxm.toml").write_text("this is [not toml")
    f["broken_dir"] = broken
    f["a_file"] = tmp_path / "not-a-dir"
    f["a_file"].write_text("")
    return f


BAD = [
    ("gpu and profile", lambda f: [*TRAP, "--gpu", "h100", "--profile", str(f["ok"])], None,
     "not both"),
    ("config list", lambda f: ["trap", "--gpu", "l4", "--model", str(f["list"]), "--precision", "nf4"],
     None, "JSON object"),
    ("pre-quantized", lambda f: ["trap", "--gpu", "l4", "--model", f["awq"], "--precision", "nf4"],
     None, "already quantized (quantization_config: awq)"),
    ("context", lambda f: [*TRAP, "--gpu", "l4", "--prompt-tokens", "1000000"], None,
     "max_position_embeddings (32768)"),
    ("nan bandwidth", lambda f: [*TRAP, "--profile", str(f["nan"])], None,
     "mem_bw_gbs must be a finite number"),
    ("same name twice", lambda f: ["simulate", "--gpu", "l4", "--model", f"{f['x']},{f['y']}",
                                   "--batch", "1", "--out", str(f["dir"] / "s.h5")], None,
     "NAME=PATH"),
    ("broken user profile", lambda f: [*TRAP, "--gpu", "h100"],
     lambda f: {"QTSIM_PROFILE_DIR": str(f["broken_dir"])}, "h100-sxm.toml: not valid TOML"),
    ("broken user profile by name", lambda f: [*TRAP, "--gpu", "h100-sxm"],
     lambda f: {"QTSIM_PROFILE_DIR": str(f["broken_dir"])}, "h100-sxm.toml: not valid TOML"),
    ("profile dir is a file", lambda f: [*TRAP, "--gpu", "l4"],
     lambda f: {"QTSIM_PROFILE_DIR": str(f["a_file"])}, "is a file, not a directory"),
    ("profiles list, dir is a file", lambda f: ["profiles", "list"],
     lambda f: {"QTSIM_PROFILE_DIR": str(f["a_file"])}, "is a file, not a directory"),
    ("calibrate unknown gpu", lambda f: ["calibrate", "--gpu", "blah"], None, "unknown GPU 'blah'"),
    ("simulate context", lambda f: ["simulate", "--gpu", "l4", "--model", "qwen3-0.6b",
                                    "--prompt-tokens", "50000", "--out", str(f["dir"] / "c.h5")],
     None, "max_position_embeddings"),
]


@pytest.mark.parametrize("make_args,make_env,needle", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_misleading_inputs_are_refused_in_one_line(files, make_args, make_env, needle):
    code, out, err = qtsim_cli(*make_args(files), env=make_env(files) if make_env else None)
    assert code == 2, (out, err)
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_late_progress_bar():
    from qtsim.cli.simulate import LateBar

    runner = CliRunner()
    with runner.isolation() as (_, err, _):
        with LateBar(4, "simulating", after_s=3600) as bar:
            for _ in range(4):
                bar.update(1)
        assert err.getvalue() == b""
        with LateBar(4, "simulating", after_s=0.0) as bar:
            for _ in range(4):
                bar.update(1)
        assert b"simulating" in err.getvalue()


@pytest.mark.parametrize("args,needle", [
    (["trap", "--gpu", "l4", "--gpu", "t4", "--model", "mistral-7b", "--precision", "nf4"],
     "--gpu given more than once: give it once; only one value is used (`qtsim trap --help`)"),
    (["simulate", "--gpu", "l4", "--gpu", "t4", "--model", "mistral-7b", "--out", "x.h5"],
     "--gpu given more than once: give it once (it takes a comma-separated list)"),
    (["compare", "--model", "mistral-7b", "--batch", "1", "--batch", "8"],
     "--batch given more than once"),
])
def test_an_option_given_twice_is_refused(args, needle):
    refused(args, needle)
