import re
import subprocess
import sys

import h5py
import numpy as np
import pytest

from qtsim.errors import QtsimError
from qtsim.model.architecture import load_architecture
from qtsim.model.stats import nan_percentiles
from qtsim.model.workload import Workload
from qtsim.profiles.hardware import load_profile
from qtsim.simulate import dataset as sd
from qtsim.simulate import surface as sf
from qtsim.simulate import thresholds
from qtsim.simulate.simulator import Simulator

GPUS = ("l4", "h100-sxm")
MODELS = ("mistral-7b", "qwen3-0.6b")
BATCH = (1, 2, 8, 64)


@pytest.fixture(scope="module")
def surf():
    return sf.simulate([load_profile(g) for g in GPUS], [load_architecture(m) for m in MODELS],
                       ("fp16", "int8", "nf4"), Workload(batch=BATCH), n_draws=40)


def test_shapes_and_dims(surf):
    assert tuple(surf.sizes[d] for d in sd.DIMS) == (2, 3, 2, 4) and sd.n_points(surf) == 48
    for name in sd.quantities(surf):
        assert surf[name].dims == sd.dims_of(name), name
        assert surf[name].attrs["units"] == sd.units_description(name)[0], name
    assert sd.dims_of("b_star") == ("gpu", "precision", "model")
    assert sd.dims_of("n_star") == ("gpu", "precision", "batch")
    assert surf["trust_status"].dims == ("precision", "model")
    assert surf["bits"].values.tolist() == [16, 8, 4]
    for q in ("j_per_query", "j_per_query_hli", "j_per_query_paper", "cor", "si", "tok_per_s"):
        assert np.all(np.isfinite(surf[q]))


def test_native_row_is_the_anchor(surf):
    for q in ("e_si", "s_si", "s_si_hli", "si", "t_si", "energy_ratio"):
        assert np.allclose(surf[q].sel(precision="fp16"), 1.0)
    assert np.allclose(surf["cor"].sel(precision="fp16"), 0.0)
    assert not surf["trapped_energy"].sel(precision="fp16").any()


@pytest.mark.parametrize("gpu", GPUS)
@pytest.mark.parametrize("prec", ("int8", "nf4"))
def test_points_match_simulator_compare(surf, gpu, prec):
    sim = Simulator(load_profile(gpu))
    for m in MODELS:
        for b in BATCH:
            q, n, d = sim.compare(load_architecture(m).counts(), Workload(prec, float(b)))
            for k in ("cor", "energy_ratio", "energy_ratio_hli", "speed_ratio", "delta_j"):
                assert float(surf[k].sel(gpu=gpu, precision=prec, model=m, batch=b)) == \
                    pytest.approx(d[k])
            assert float(surf["j_per_query"].sel(gpu=gpu, precision=prec, model=m,
                                                 batch=b)) == pytest.approx(q["j_per_query"])


def test_hli_verdict_is_the_latency_verdict(surf):
    """HLI = TDP x latency / B: its energy ratio is the latency ratio, its trap the time trap."""
    lat = surf["latency_s"].values
    ref = np.broadcast_to(lat[:, :1], lat.shape)
    assert np.allclose(surf["energy_ratio_hli"], lat / ref)
    assert np.array_equal(surf["trapped_energy_hli"], surf["trapped_time"])


def test_paper_mode_trapped_above_eq18_b_star(surf):
    bs = surf["b_star_paper"].values[..., None]
    phi = surf["phi_j"].values[..., None]
    b = np.asarray(BATCH, float)
    expect = (phi > 0) & (b > bs)
    quant = [i for i, p in enumerate(surf["precision"].values) if p != "fp16"]
    trapped = surf["trapped_energy_paper"].values
    assert np.array_equal(trapped[:, quant].astype(bool),
                          np.broadcast_to(expect, trapped.shape)[:, quant])


def test_draw_bands_and_shares(surf):
    for q in ("j_per_query", "cor", "si", "energy_ratio_paper"):
        lo, hi = surf[f"{q}_low"], surf[f"{q}_high"]
        assert np.all(lo <= hi + 1e-12)
        assert surf[f"{q}_low"].attrs["description"].startswith("16th percentile")
    for k in ("p_trapped_energy", "p_trapped_energy_hli", "p_trapped_si"):
        p = surf[k]
        assert np.all((p >= 0) & (p <= 1))


def test_trust_status_everywhere(surf):
    st = sd.trust_status(surf)
    assert st[("nf4", "mistral-7b")] == "published"
    assert st[("fp16", "qwen3-0.6b")] == "reference"
    t_si = surf["t_si"].sel(precision="nf4", model="mistral-7b").values[0, 0]
    assert t_si == pytest.approx(0.3942 / 0.4314)


def test_size_sweep_is_synthetic_and_assumed():
    fam = load_architecture("mistral-7b")
    s = sf.simulate([load_profile("l4")], [fam], ("int8",), Workload(batch=(1, 4)), sizes=sf.parse_sizes("1e9:2e10:5"),
                    depth=8)
    assert s["synthetic"].values.tolist() == [False] + [True] * 5
    assert s["model"].values[1] == "mistral-7b~1B"
    assert np.allclose(s["n_params"].values[1:], np.geomspace(1e9, 2e10, 5), rtol=1e-6)
    st = s["trust_status"].values[0].tolist()
    assert st[0] == "extrapolated" and set(st[1:]) == {"assumed"}


@pytest.mark.parametrize("kwargs,needle", [
    ({"batch": (4, 2)}, "increasing"),
    ({"batch": (0, 2)}, "positive"),
    ({"precisions": ("nf4", "nf4")}, "twice"),
    ({"precisions": ("int3",)}, "int3"),
])
def test_bad_grids(kwargs, needle):
    args = {"profiles": [load_profile("l4")], "models": [load_architecture("qwen3-0.6b")], **kwargs}
    with pytest.raises(QtsimError, match=needle):
        if "batch" in args:
            args["workload"] = Workload(batch=args.pop("batch"))
        sf.simulate(**args)


@pytest.mark.parametrize("text", ["1e9:5e8:3", "a:b:c", "", "-1,2"])
def test_bad_sizes(text):
    with pytest.raises(QtsimError, match="--sizes"):
        sf.parse_sizes(text)


def test_hdf5_layout_and_provenance(surf, tmp_path):
    """netCDF4/HDF5 that plain h5py reads: a dataset per quantity with its units, coordinates as
    dimension scales, provenance in the file attributes; xarray reads back the same Dataset."""
    import xarray as xr

    path = tmp_path / "s.h5"
    sd.write_hdf5(surf, path, "qtsim simulate --gpu l4,h100-sxm")
    with h5py.File(path) as f:
        assert f.attrs["note"] == "predictions, not measurements"
        assert f.attrs["command"].startswith("qtsim simulate")
        assert f.attrs["qtsim_version"]
        assert list(f.attrs["profile_name"]) == list(GPUS)
        for k in ("profile_source", "profile_date", "profile_device"):
            assert len(f.attrs[k]) == 2 and all(f.attrs[k])
        d = f["j_per_query"]
        assert d.attrs["units"] == "J" and "power model" in d.attrs["description"]
        assert [list(x.keys()) for x in d.dims] == [[k] for k in sd.DIMS]
        assert list(d.dims[3][0][()]) == list(BATCH)
        assert set(d.attrs["coordinates"].split()) == {"bits", "n_params", "synthetic"}
        assert [list(x.keys()) for x in f["bits"].dims] == [["precision"]]
        assert list(f["bits"][()]) == [16, 8, 4]
        assert f["j_per_query_hli"].attrs["units"] == "J" and "HLI" in f["j_per_query_hli"].attrs["description"]
        assert [list(x.keys()) for x in f["b_star"].dims] == [["gpu"], ["precision"], ["model"]]
        assert [list(x.keys()) for x in f["n_star"].dims] == [["gpu"], ["precision"], ["batch"]]
        assert f["trust_status"][0, 0] == b"reference"
        for name in f:
            assert "units" in f[name].attrs and "description" in f[name].attrs, name
            assert "_FillValue" not in f[name].attrs, name
    back = sd.read_hdf5(path)
    xr.testing.assert_identical(back, surf.assign_attrs(command="qtsim simulate --gpu l4,h100-sxm"))
    assert sd.profiles(back)[0]["name"] == "l4"
    frame = back[["si", "j_per_query"]].to_dataframe()  # pandas: one row per grid point
    assert list(frame.index.names) == list(sd.DIMS) and len(frame) == sd.n_points(surf)
    assert frame.loc[("l4", "nf4", "mistral-7b", 8.0), "si"] == float(
        surf["si"].sel(gpu="l4", precision="nf4", model="mistral-7b", batch=8))


def test_csv_long_format(surf, tmp_path):
    path = tmp_path / "s.csv"
    n = sd.write_csv(surf, path)
    lines = path.read_text().splitlines()
    assert lines[0] == "gpu,precision,model,n_params,batch,quantity,value,unit,bitsandbytes_version"
    assert n == len(lines) - 1 == sum(surf[k].size for k in sd.quantities(surf))
    assert any(",j_per_query_hli," in x and x.endswith(",J,0.50.2") for x in lines)
    assert "l4,int8,mistral-7b,7.24802e+09,,b_star," in path.read_text()
    assert "l4,int8,family:mistral-7b,,64,n_star," in path.read_text()


def test_trap_map_boundaries_follow_the_sign_change():
    m = sf.trap_map(load_profile("l4"), load_architecture("mistral-7b"),
                    Workload("int8", np.arange(1, 65)), np.geomspace(5e8, 5e10, 20), n_draws=30)
    assert m["delta_j"].shape == (20, 64) and m["p_trapped"].shape == (20, 64)
    for i in range(20):
        row = m["delta_j"][i]
        if m["b_star_kind"][i] in (0, 1):
            k = np.argmax((row > 0) != (row[0] > 0))
            assert m["batches"][k - 1] <= m["b_star_of_n"][i] <= m["batches"][k]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "qtsim", *args], capture_output=True, text=True,
                          timeout=300)


def test_simulate_command_from_a_fresh_shell(tmp_path):
    out, csv, plots = tmp_path / "g.h5", tmp_path / "g.csv", tmp_path / "figs"
    r = run_cli("simulate", "--gpu", "l4,h100", "--model", "mistral-7b,qwen3-0.6b",
                "--precision", "fp16,int8,nf4", "--batch", "1:64:4", "--tokens", "128",
                "--out", str(out), "--csv", str(csv), "--plot", str(plots), "--draws", "20")
    assert r.returncode == 0, r.stderr
    assert "predictions, not measurements" in r.stdout and "trapped" in r.stdout
    with h5py.File(out) as f:
        assert f["si"].shape == (2, 3, 2, 4)
        assert "--batch 1:64:4" in f.attrs["command"]
        assert list(f["batch"][()]) == [1, 4, 16, 64]
        assert "si_low" in f and "p_trapped_energy" in f
    assert csv.stat().st_size > 0
    for name in ("trap_map.png", "fig1_mistral-7b.png", "fig1_qwen3-0.6b.png", "cor_vs_batch.png"):
        assert (plots / name).stat().st_size > 10_000


@pytest.mark.parametrize("args,needle", [
    (["--model", "mistral-7b"], "--gpu"),
    (["--gpu", "l4", "--model", "mistral-7b", "--sizes", "1:2"], "--sizes"),
    (["--gpu", "l4"], "--model"),
    (["--gpu", "l4", "--model", "mistral-7b", "--plots", "pie"], "pie"),
    (["--gpu", "l4", "--model", "mistral-7b", "--batch", "8:1:3"], "--batch"),
])
def test_simulate_bad_input_exits_2(tmp_path, args, needle):
    r = run_cli("simulate", *args, "--out", str(tmp_path / "x.h5"))
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_nan_percentiles_match_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 5, 4))
    x[rng.random(x.shape) < 0.3] = np.nan
    x[:, 0, 0] = np.nan
    x[2, 1, 1] = np.inf
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        ref = np.nanpercentile(np.where(np.isfinite(x), x, np.nan), (16, 84), axis=0)
    np.testing.assert_allclose(nan_percentiles(x), ref, rtol=1e-12, equal_nan=True)


# ---- issue 12: the fast paths give the numbers the direct ones give -------------------------
@pytest.mark.parametrize("gpu,prec", [("l4", "int8"), ("h100-sxm", "nf4"), ("h100-sxm", "int8")])
def test_n_star_from_anchors_equals_the_full_size_grid(gpu, prec):
    sim = Simulator(load_profile(gpu), n_draws=1)
    arch = load_architecture("mistral-7b")
    b = np.unique(np.round(np.geomspace(1, 1e9, 6000)))
    full = thresholds.n_star_rows(sim, arch, Workload(prec, b))
    kinds = set(np.unique(full["n_star_kind"]))
    assert 0 in kinds and len(kinds) >= 2  # crossings and no-crossing batches both exercised
    for anchors in (8, 64):
        fast = sf.n_star_fast(sim, arch, Workload(prec, b), anchors=anchors)
        np.testing.assert_array_equal(fast["n_star"], full["n_star"])
        np.testing.assert_array_equal(fast["n_star_kind"], full["n_star_kind"])


@pytest.mark.parametrize("n_batches", [
    200,  # small by default: still many 7-point blocks and more batches than the 16 anchors
    pytest.param(1500, marks=pytest.mark.slow),  # full size: pytest -m slow
])
def test_blocked_surface_equals_one_block(monkeypatch, n_batches):
    """Blocks of batches (and N* from anchors) give exactly what one block gives."""
    profs = [load_profile("l4"), load_profile("h100-sxm")]
    archs = [load_architecture("mistral-7b"), load_architecture("qwen3-0.6b")]
    b = np.unique(np.round(np.geomspace(1, 1e6, n_batches)))
    args = (profs, archs, ("fp16", "int8", "nf4"), Workload(batch=b))
    kw = {"sizes": np.geomspace(1e9, 7e10, 3)}
    monkeypatch.setattr(sf, "CHUNK_POINTS", 1 << 30)
    monkeypatch.setattr(sf, "N_STAR_ANCHORS", 10**6)
    one = sf.simulate(*args, **kw)
    one_d = sf.simulate(profs, archs, ("int8", "nf4"), Workload(batch=[1, 2, 3, 8, 64]), n_draws=20)
    monkeypatch.setattr(sf, "CHUNK_POINTS", 7)
    monkeypatch.setattr(sf, "N_STAR_ANCHORS", 16)
    many = sf.simulate(*args, **kw)
    many_d = sf.simulate(profs, archs, ("int8", "nf4"), Workload(batch=[1, 2, 3, 8, 64]),
                         n_draws=20)
    for a, z in ((one, many), (one_d, many_d)):
        assert list(a.data_vars) == list(z.data_vars)
        for k in a.data_vars:
            np.testing.assert_array_equal(a[k].values, z[k].values, err_msg=k)


@pytest.fixture(scope="module")
def tight_surface():
    """T4 and SHIPPED_L4 for a model that fits neither in 16 bits at batch 8 on the T4 and one that
    fits nowhere (Qwen2.5-72B), with draws."""
    from qtsim.model.architecture import load_architecture
    from qtsim.model.workload import Workload
    from qtsim.profiles.hardware import load_profile
    from qtsim.simulate.surface import simulate

    return simulate([load_profile("t4"), load_profile("l4")],
                    [load_architecture("llama-3.1-8b"), load_architecture("qwen2.5-72b")],
                    ("fp16", "int8", "nf4"), Workload(batch=[1, 8]), n_draws=20)


def test_surface_holds_no_figure_for_what_cannot_run(tight_surface):
    s = tight_surface

    def at(name, gpu, prec, model, batch=8.0):
        return float(s[name].sel(gpu=gpu, precision=prec, model=model, batch=batch))

    assert at("fits", "t4", "fp16", "llama-3.1-8b") == 0
    assert np.isnan(at("j_per_query", "t4", "fp16", "llama-3.1-8b"))
    assert np.isfinite(at("j_per_query", "t4", "int8", "llama-3.1-8b"))  # it runs...
    for q in ("energy_ratio", "cor", "si", "trapped_energy", "p_trapped_energy"):
        assert np.isnan(at(q, "t4", "int8", "llama-3.1-8b")), q  # ...against no 16-bit run
    for q in ("trapped_energy", "p_trapped_energy", "si", "j_per_query", "j_per_query_low"):
        assert np.isnan(at(q, "l4", "nf4", "qwen2.5-72b")), q
    assert at("trapped_energy", "l4", "nf4", "llama-3.1-8b") in (0.0, 1.0)
    nsf = s["n_star_fits"].sel(gpu="l4", precision="nf4").values
    ns = s["n_star"].sel(gpu="l4", precision="nf4").values
    assert np.all(np.isnan(ns[nsf == 0]))


def test_summary_csv_and_plots_say_does_not_fit(tight_surface, tmp_path):
    from qtsim.report.grid import _summary
    from qtsim.report.plots import plot_cor_vs_batch, plot_fig1_panel, save
    from qtsim.simulate.dataset import long_frame

    summary = _summary(tight_surface)
    assert re.search(r"l4 +nf4 +qwen2.5-72b +DOES NOT FIT \(4\d\.\d GiB\)", summary)
    assert re.search(r"t4 +int8 +llama-3.1-8b +ONLY OPTION \(16-bit does not fit\)", summary)
    assert "not trapped" not in summary
    df = long_frame(tight_surface)
    row = df[(df.gpu == "l4") & (df.precision == "nf4") & (df.model == "qwen2.5-72b")
             & (df.quantity == "p_trapped_energy")]
    assert row["value"].isna().all()
    fig = plot_fig1_panel(tight_surface, "qwen2.5-72b")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts.count("does not fit") >= 2 * 3 * 6 - 6  # every configuration, every panel
    bars = [p.get_height() for p in fig.axes[0].patches]
    assert all(np.isnan(h) for h in bars)  # not one throughput bar for what cannot run
    save(plot_cor_vs_batch(tight_surface), tmp_path / "cor.png")  # all-NaN panels still draw


def test_trap_map_has_a_does_not_fit_class():
    from qtsim.model.architecture import load_architecture
    from qtsim.model.workload import Workload
    from qtsim.profiles.hardware import load_profile
    from qtsim.report.plots import plot_trap_maps
    from qtsim.simulate.surface import trap_map

    m = trap_map(load_profile("t4"), load_architecture("mistral-7b"),
                 Workload("nf4", batch=np.array([1.0, 8.0, 64.0])), np.geomspace(1e9, 1e11, 12),
                 n_draws=0)
    assert (~m["fits"]).any() and m["fits"].any()
    fig = plot_trap_maps([m])
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "quantized does not fit: no verdict" in labels
