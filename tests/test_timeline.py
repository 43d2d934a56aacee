"""The asynchronous composition rule (DESIGN sec. 2a) against brute force."""

import numpy as np
import pytest

from qtsim.model import timeline


def _brute(h, d):
    """eq. (2a.1) straight from its definition, one k at a time."""
    return max(sum(h[: k + 1]) + sum(d[k:]) for k in range(len(h)))


@pytest.mark.parametrize("seed", range(5))
def test_periodic_closed_form_equals_the_full_sequence(seed):
    rng = np.random.default_rng(seed)
    for _ in range(50):
        n_layers = int(rng.integers(1, 7))
        h, d0, d1 = rng.random(8), rng.random(8) * rng.random() * 3, rng.random(8) * 0.1
        batch = float(rng.integers(1, 64))
        hp, dp, hq, dq = rng.random(4)
        d = d0 + batch * d1
        seq_h = [hp] + list(h) * n_layers + [hq]
        seq_d = [dp] + list(d) * n_layers + [dq]
        got = timeline.step_s(hp, dp, h, d0, n_layers, hq, dq, batch=batch, d_layer_per_seq=d1)
        assert got["step_s"] == pytest.approx(_brute(seq_h, seq_d))
        assert got["host_s"] == pytest.approx(sum(seq_h))
        assert got["device_s"] == pytest.approx(sum(seq_d))


def test_bounds_and_cpu_rule():
    """A step lies between max(H, D) and H + D; synchronising blocks push it to the sum;
    with overlap off (a CPU) it is the sum."""
    rng = np.random.default_rng(7)
    h, d = rng.random(8), rng.random(8)
    free = timeline.step_s(0.0, 0.0, h, d, 10, 0.0, 0.0)
    every = timeline.step_s(0.0, 0.0, h, d, 10, 0.0, 0.0, sync=np.ones(8, bool))
    cpu = timeline.step_s(0.0, 0.0, h, d, 10, 0.0, 0.0, overlap=False)
    lo, hi = max(10 * h.sum(), 10 * d.sum()), 10 * (h.sum() + d.sum())
    assert lo - 1e-12 <= free["step_s"] < every["step_s"] <= hi + 1e-12
    assert every["step_s"] == pytest.approx(hi)
    assert cpu["step_s"] == pytest.approx(hi)


def test_vectorised_over_a_batch_grid_and_draws():
    rng = np.random.default_rng(3)
    h = rng.random((5, 1, 8))  # 5 draws
    d0, d1 = rng.random(8), rng.random(8) * 0.01
    b = np.arange(1.0, 101.0)
    grid = timeline.step_s(0.1, 0.1, h, d0, 32, 0.1, 0.1, batch=b, d_layer_per_seq=d1)["step_s"]
    assert grid.shape == (5, 100)
    one = timeline.step_s(0.1, 0.1, h[2], d0 + 37.0 * d1, 32, 0.1, 0.1)["step_s"]
    assert grid[2, 36] == pytest.approx(float(np.ravel(one)[0]))
    assert timeline.binding(np.array([2.0, 1.0]), np.array([1.0, 2.0])).tolist() == [
        "host-bound", "device-bound"]
