"""`qtsim simulate` (qtsim/report/grid.py): outputs written all or nothing and never over a file
without --force, HDF5 options, settings recorded, refusals."""

import pytest

from qtsim.errors import QtsimError

from .conftest import ROOT, assert_refused, invoke_qtsim, qtsim_cli, refused


def test_simulate_creates_the_out_folder_and_writes_all_or_nothing(tmp_path, monkeypatch):
    out = tmp_path / "new" / "deeper" / "s.h5"
    code, _, err = qtsim_cli("simulate", "--gpu", "l4", "--model", "mistral-7b", "--batch", "1,2",
                             "--out", str(out), "--csv", str(tmp_path / "c" / "s.csv"))
    assert code == 0, err
    assert out.is_file() and (tmp_path / "c" / "s.csv").is_file()

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


@pytest.mark.parametrize("draws", ["1", "9"])
def test_simulate_refuses_a_band_from_too_few_draws(tmp_path, draws):
    refused(["simulate", "--gpu", "l4", "--model", "mistral-7b", "--draws", draws, "--out",
             str(tmp_path / "s.h5")], f"--draws {draws}: give 0 (no bands) or at least 10 draws")


def test_outputs_are_not_overwritten_without_force(tmp_path):
    out = tmp_path / "grid.h5"
    out.write_text("keep me")
    args = ["simulate", "--gpu", "l4", "--model", "qwen3-0.6b", "--batch", "1", "--out", str(out)]
    refused(args, f"{out} exists (--out): pass --force to replace it")
    assert out.read_text() == "keep me"
    assert qtsim_cli(*args, "--force")[0] == 0 and out.read_bytes()[:4] == b"\x89HDF"
    png = tmp_path / "c.png"
    png.write_text("keep")
    refused(["compare", "--model", "qwen3-0.6b", "--gpu", "l4", "--draws", "10", "--plot",
             str(png)], f"{png} exists (--plot)")
    prof = tmp_path / "p.toml"
    prof.write_text("keep")
    refused(["fit", str(ROOT / "data" / "raw" / "cpu-calibration.h5"), "--out", str(prof)],
            f"{prof} exists (--out)")


def test_simulate_records_bitsandbytes_settings(tmp_path):
    import h5py

    out = tmp_path / "s.h5"
    r = invoke_qtsim("simulate", "--gpu", "l4", "--model", "qwen3-0.6b", "--precision", "fp16,nf4",
                     "--batch", "1,4", "--double-quant", "--compute-dtype", "bf16", "--out", out)
    assert r.returncode == 0, r.stderr
    with h5py.File(out) as f:
        assert bool(f.attrs["bnb_4bit_use_double_quant"]) is True
        assert f.attrs["bnb_4bit_compute_dtype"] == "bf16"
        assert float(f.attrs["llm_int8_threshold"]) == 6.0


@pytest.mark.parametrize("extra,needle", [
    (["--int8-threshold", "2", "--precision", "fp16,int8"], "llm_int8_threshold"),
    (["--int8-threshold", "0", "--precision", "fp16,nf4"], "int8 only"),
    (["--double-quant", "--precision", "fp16,int8"], "4-bit"),
])
def test_simulate_bad_settings_exit_2(tmp_path, extra, needle):
    assert_refused(invoke_qtsim("simulate", "--gpu", "l4", "--model", "qwen3-0.6b", "--batch", "1",
                                "--out", tmp_path / "x.h5", *extra), needle)
