"""Issue 12: answers that never mislead (refusals, headlines, naming, CSV, plots, outputs)."""

import csv
import io
import json
import logging
import math
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from .conftest import (
    SHIPPED_L4,
    TRAP,
    qtsim_cli,
    write_config,
)


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


def test_no_fit_is_the_headline_in_text_json_and_csv():
    args = ["trap", "--gpu", "l4", "--model", "qwen2.5-72b", "--precision", "nf4", "--draws", "20"]
    code, out, _ = qtsim_cli(*args)
    assert code == 0 and out.startswith("DOES NOT FIT: qwen2.5-72b needs")
    assert "IF IT FIT" in out.splitlines()[1]
    rep = json.loads(qtsim_cli(*args, "--format", "json")[1])
    v = rep["verdict"]
    assert v["energy"] == v["time"] == v["si"] == "does not fit"
    assert v["headline"].startswith("DOES NOT FIT") and v["fits"] is False
    assert v["if_it_fit"]["energy"] == "not trapped"
    row = next(csv.DictReader(io.StringIO(qtsim_cli(*args, "--format", "csv")[1])))
    assert row["verdict_energy"] == "does not fit" and row["fits"] == "0"


def test_only_the_quantized_model_fits_is_the_headline():
    code, out, _ = qtsim_cli("trap", "--gpu", "l4", "--model", "qwen2.5-14b", "--precision", "nf4",
                         "--draws", "20")
    assert code == 0 and out.startswith("ONLY NF4 FITS")
    assert out.splitlines()[1].startswith("NOT TRAPPED")


def test_bands_print_with_a_comma_never_a_dash():
    code, out, _ = qtsim_cli("trap", "--gpu", "l4", "--model", "mistral-7b", "--precision", "nf4",
                         "--draws", "50")
    assert code == 0
    bands = re.findall(r"\[([^\]]*)\]", out)
    assert len(bands) >= 8
    for b in bands[:-1]:  # the last is the legend "[a, b]"
        lo, hi = b.split(", ")
        for x in (lo, hi):
            assert x in ("below range", "above range") or math.isfinite(float(x.rstrip("B"))), x
    assert not re.search(r"\d--\d", out)  # the old "[-0.466--0.029]"


def test_trap_csv_is_one_row_with_stable_columns():
    from qtsim.report.trap import CSV_COLUMNS

    rows = []
    for model, prec in (("mistral-7b", "nf4"), ("qwen3-0.6b", "int8")):
        code, out, _ = qtsim_cli("trap", "--gpu", "h100", "--model", model, "--precision", prec,
                             "--format", "csv", "--draws", "20")
        assert code == 0
        lines = out.strip().splitlines()
        assert len(lines) == 2 and lines[0] == ",".join(CSV_COLUMNS)
        rows.append(lines[1])
    stacked = list(csv.DictReader(io.StringIO("\n".join([",".join(CSV_COLUMNS), *rows]))))
    assert [r["model"] for r in stacked] == ["mistral-7b", "qwen3-0.6b"]
    assert stacked[1]["b_star"] == "inf" and stacked[1]["b_star_kind"] == "trapped_everywhere"
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for c in CSV_COLUMNS:  # each column, or its base with the documented _low/_high suffixes
        base = c.removesuffix("_low").removesuffix("_high")
        assert f"`{c}`" in readme or (base != c and f"`{base}`" in readme), c


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


def test_simulate_creates_the_out_folder_and_writes_all_or_nothing(tmp_path, monkeypatch):
    out = tmp_path / "new" / "deeper" / "s.h5"
    code, _, err = qtsim_cli("simulate", "--gpu", "l4", "--model", "mistral-7b", "--batch", "1,2",
                         "--out", str(out), "--csv", str(tmp_path / "c" / "s.csv"))
    assert code == 0, err
    assert out.is_file() and (tmp_path / "c" / "s.csv").is_file()

    from qtsim.errors import QtsimError
    from qtsim.report import grid

    def broken(fig, path, dpi=130):
        raise QtsimError("disk full")

    monkeypatch.setattr(grid, "save", broken)  # where `qtsim simulate --plot` saves figures
    target = tmp_path / "fail"
    code, _, err = qtsim_cli("simulate", "--gpu", "l4", "--model", "mistral-7b", "--batch", "1,2",
                         "--out", str(target / "s.h5"), "--csv", str(target / "s.csv"),
                         "--plot", str(target / "figs"), "--plots", "fig1")
    assert code == 2 and "disk full" in err
    assert not list(target.rglob("*.*")), list(target.rglob("*"))


def test_simulate_hdf5_plain_by_default_gzip_on_request(tmp_path):
    import h5py

    for flag, want in (([], None), (["--compress"], "gzip")):
        path = tmp_path / f"s{len(flag)}.h5"
        code, _, err = qtsim_cli("simulate", "--gpu", "l4", "--model", "mistral-7b",
                             "--batch", "1:1e6:5000", "--out", str(path), *flag)
        assert code == 0, err
        with h5py.File(path) as f:
            assert f["j_per_query"].compression == want


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


def test_spec_profiles_help_writes_nothing(tmp_path, monkeypatch, capsys):
    from qtsim.calibration.fit import spec_profiles

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        spec_profiles.main(["--help"])
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_says_resume_continues(tmp_path, capsys):
    from qtsim.calibration.measure.raw import PointResult, RawStore
    from qtsim.calibration.probes.runner import run_plan

    class Point:
        def __init__(self, i, stop=False):
            self.i, self.stop = i, stop

        def point_id(self):
            return f"p{self.i}"

        def base_attrs(self, ctx):
            return {"kind": "test"}

        def estimate_s(self, device):
            return 0.0

        def run(self, ctx):
            if self.stop:
                raise KeyboardInterrupt
            return PointResult({"kind": "test"}, {"x": np.ones(2)})

    class Dev:
        name = "fake"

    store = RawStore(tmp_path / "r.h5")
    with pytest.raises(KeyboardInterrupt):
        run_plan([Point(0), Point(1, stop=True)], store, Dev(), None, progress=False)
    err = capsys.readouterr().err
    assert "interrupted: 1 of 2 points are stored" in err and "--resume" in err
    assert store.ids() == ["p0"]


def test_resume_refuses_another_thread_count(tmp_path):
    pytest.importorskip("torch")
    from qtsim.calibration.calibrate import same_threads_on_resume
    from qtsim.calibration.measure.raw import RawStore
    from qtsim.errors import QtsimError

    raw = tmp_path / "cpu-calibration.h5"
    RawStore(raw).append("p0", {"kind": "linear", "torch_threads": 2}, {"x": np.ones(2)})
    with pytest.raises(QtsimError, match="measured with 2 torch threads"):
        same_threads_on_resume(raw, 1)
    same_threads_on_resume(raw, 2)


def test_bitsandbytes_kernels_hint_is_dropped_and_other_warnings_are_not():
    import qtsim.calibration  # noqa: F401  (installs the filter)

    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    h = Keep()
    log.addHandler(h)
    try:
        log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make "
                    "sure you already `pip install kernels` and the kernels >= 0.11.1", "x")
        log.warning("something else")
    finally:
        log.removeHandler(h)
    assert seen == ["something else"]
