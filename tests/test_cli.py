import json
import subprocess
import sys

import pytest

from .conftest import invoke_qtsim, run_qtsim_process


def test_trap_text_answers_the_l4_question():
    r = invoke_qtsim("trap", "--gpu", "l4", "--model", "mistral-7b", "--precision", "nf4")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for needle in ("on energy", "J/query", "tok/s", "COR", "B*", "N*", "SI", "profile: l4", "prior"):
        assert needle in out


def test_trap_json_keys_documented_in_readme():
    r = invoke_qtsim("trap", "--gpu", "h100", "--model", "qwen3-0.6b", "--precision", "int8",
                  "--batch", "4", "--format", "json", "--draws", "50")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert set(rep) == {"query", "verdict", "quantized", "native", "ratios", "b_star", "n_star",
                        "paper", "si", "host", "profile", "bitsandbytes", "budget", "serving"}
    assert rep["query"]["batch"] == 4
    assert rep["quantized"]["j_per_query"]["low"] <= rep["quantized"]["j_per_query"]["value"]
    from pathlib import Path
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for key in rep:
        assert f"`{key}`" in readme


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

