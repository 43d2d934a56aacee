import subprocess
import sys

import numpy as np
import pytest

from qtsim.model.architecture import load_architecture
from qtsim.model.workload import Workload
from qtsim.profiles.hardware import load_profile
from qtsim.report import plots
from qtsim.simulate import surface as sf

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def surf():
    return sf.simulate([load_profile(g) for g in ("l4", "a100-80gb")],
                       [load_architecture(m) for m in ("mistral-7b", "falcon3-3b")],
                       ("fp16", "int8", "nf4"), Workload(batch=(1, 4, 16, 64)), n_draws=30)


@pytest.fixture(scope="module")
def maps():
    arch = load_architecture("mistral-7b")
    return [sf.trap_map(load_profile(g), arch,
                        Workload(p, np.unique(np.round(np.geomspace(1, 512, 20)))),
                        np.geomspace(3e8, 1e11, 24), n_draws=30)
            for g in ("l4", "h100-sxm") for p in ("int8", "nf4")]


def _check_png(fig, path):
    plots.save(fig, path)
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 10_000


def _visible(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def test_trap_maps(maps, tmp_path):
    fig = plots.plot_trap_maps(maps, ncols=2, marks=[("mistral-7b", 7.25e9)])
    axes = _visible(fig)
    assert len(axes) == 4
    for ax in axes:
        assert ax.get_xlabel() == "model size N (parameters)"
        assert ax.get_ylabel() == "batch size B (sequences)"
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert "l4" in axes[0].get_title() and "INT8" in axes[0].get_title()
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    for needle in ("trapped", "B*(N)", "N*(B)", "16-84% of draws"):
        assert needle in legend
    _check_png(fig, tmp_path / "trap.png")


def test_single_trap_map(maps, tmp_path):
    fig = plots.plot_trap_map(maps[0])
    assert len(_visible(fig)) == 1
    _check_png(fig, tmp_path / "one.png")


def test_fig1_panel(surf, tmp_path):
    fig = plots.plot_fig1_panel(surf, "mistral-7b")
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == ["throughput (tokens/s)", "energy per query (J)", "T_SI (trust, eq. 2)",
                      "E_SI (economy, eq. 3)", "S_SI (energy, E_ref/E)", "SI (eq. 6)"]
    for ax in fig.axes:
        assert ax.get_xlabel() == "GPU"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["l4", "a100-80gb"]
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "FP16" in legend and "NF4" in legend and "HLI" in legend
    _check_png(fig, tmp_path / "fig1.png")


def test_cor_vs_batch(surf, tmp_path):
    fig = plots.plot_cor_vs_batch(surf)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert ax.get_xlabel() == "batch size B (sequences)"
        assert "COR" in ax.get_ylabel()
        assert len(ax.get_lines()) >= 4  # 2 precisions x 2 GPUs, plus reference lines
    assert [ax.get_title() for ax in fig.axes] == ["mistral-7b", "falcon3-3b"]
    _check_png(fig, tmp_path / "cor.png")


def test_plots_are_headless():
    code = ("import sys, numpy as np\n"
            "from qtsim.report import plots\nfrom qtsim.simulate import surface\n"
            "from qtsim.profiles.hardware import load_profile\n"
            "from qtsim.model.architecture import load_architecture\n"
            "from qtsim.model.workload import Workload\n"
            "m = surface.trap_map(load_profile('l4'), load_architecture('qwen3-0.6b'),"
            " Workload('nf4', np.arange(1, 6)), np.geomspace(1e9, 1e10, 5), n_draws=0)\n"
            "plots.plot_trap_map(m).savefig('/dev/null', format='png')\n"
            "print('PYPLOT', 'matplotlib.pyplot' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "MPLBACKEND": "", "DISPLAY": ""})
    assert "PYPLOT False" in r.stdout, r.stderr


# ---- issue 12: the common case (one GPU, one precision) -----------------------------------------
@pytest.fixture(scope="module")
def one():
    prof, arch = [load_profile("l4")], [load_architecture("mistral-7b")]
    s = sf.simulate(prof, arch, ("nf4",), Workload(batch=(1, 4, 16)), n_draws=0)
    native = sf.simulate(prof, arch, ("fp16",), Workload(batch=(1,)), thresholds=False)
    return s, native


def _inside(fig):
    """Every legend and figure text lies within the figure (nothing clipped at an edge)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    box = fig.bbox
    for artist in [*fig.legends, *fig.texts]:
        e = artist.get_window_extent(r)
        assert e.x0 >= box.x0 - 1 and e.x1 <= box.x1 + 1, artist
        assert e.y0 >= box.y0 - 1 and e.y1 <= box.y1 + 1, artist


def test_fig1_single_precision_shows_the_native_bars(one):
    s, native = one
    fig = plots.plot_fig1_panel(s, "mistral-7b", native=native)
    for ax in fig.axes[:2]:  # throughput and J/query
        heights = [p.get_height() for p in ax.patches]
        assert len(heights) == 2 and all(h > 0 for h in heights)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:2] == ["FP16", "NF4"]
    foot = fig.texts[-1].get_text()
    assert "16-84%" not in foot and "no uncertainty bands" in foot  # none drawn, none claimed
    _inside(fig)


def test_single_trap_map_and_cor_fit_in_their_figures(maps, one):
    fig = plots.plot_trap_map(maps[0], marks=[("mistral-7b", 7.25e9), ("llama-3.1-8b", 8.03e9)])
    _inside(fig)
    ax = _visible(fig)[0]
    labels = [t for t in ax.texts if t.get_text() in ("mistral-7b", "llama-3.1-8b")]
    r = fig.canvas.get_renderer()
    a, b = (t.get_window_extent(r) for t in labels)
    assert not a.overlaps(b)
    fig = plots.plot_cor_vs_batch(one[0])
    _inside(fig)
    assert "16-84%" not in fig.texts[-1].get_text()


def test_label_tiers_stack_close_neighbours():
    assert plots._label_tiers([9.0, 9.02, 9.5, 10.0], 0.1) == [0, 1, 0, 0]
