"""The timeline model against published GPU rows nobody here measured (issue 9, CI figure).

Fit on one part of the bitsandbytes maintainers' table, score the other; the figures are
printed in CI's output. Targets: step-time MAPE <= 15% on the scored rows and every decisive
time verdict (quantized vs 16-bit more than 5% apart) the right way round.
"""

import numpy as np
import pytest

from qtsim.calibration import public


@pytest.fixture(scope="module")
def scored():
    return {how: public.score(how) for how in ("8b->32b", "h100->4090")}


def _report(r) -> str:
    lines = [f"public rows, split {r['split']}: fit on {len(r['fit'].fit_rows)} rows "
             f"(fit MAPE {100 * r['fit_mape']:.1f}%), scored {len(r['rows'])} held-out rows: "
             f"step-time MAPE {100 * r['mape']:.1f}% (max {100 * r['max_ape']:.1f}%), decisive "
             f"time verdicts right {r['verdicts_right']}/{r['verdicts']}"]
    for row, p, o in zip(r["rows"], r["pred_s"], r["obs_s"], strict=True):
        lines.append(f"    {row['gpu']:9s} {row['model']:13s} {row['path']:8s} b{int(row['batch']):<3d}"
                     f" measured {o * 1e3:6.1f} ms  predicted {p * 1e3:6.1f} ms  ({100 * (p / o - 1):+.0f}%)")
    return "\n".join(lines)


def test_model_size_extrapolation_meets_target(scored, capsys):
    """Fit the Llama-3.1-8B rows of both GPUs, score Qwen2.5-32B (4x the size, 2x the depth)."""
    r = scored["8b->32b"]
    with capsys.disabled():
        print("\n" + _report(r))
    assert r["mape"] <= 0.15
    assert r["verdicts"] >= 8 and r["verdicts_right"] == r["verdicts"]


def test_host_transfer_is_reported(scored, capsys):
    """Fit the H100 rows only, score the RTX 4090 with the server's host: printed, and the
    joint fit must find the desktop host faster than the server (it is 2.3-3x, DESIGN sec. 2a)."""
    r = scored["h100->4090"]
    with capsys.disabled():
        print("\n" + _report(r) + "\n    (the desktop host is unknown to this split: the server "
              "host is assumed, so host-bound rows come out slow)")
    assert np.isfinite(r["mape"])
    joint = public.fit(public.read_rows())
    assert joint.values["host_speedup"] > 1.5


def test_forms_side_by_side(capsys):
    """Held-out error and AIC of the timeline form against the additive form, printed."""
    forms = public.compare_forms()
    with capsys.disabled():
        print("\npublic rows, model forms (AIC/BIC fitted on all 45 rows; held-out = 8b->32b):")
        for f in forms:
            print(f"    {f['form']:34s} AIC {f['aic']:8.1f}  BIC {f['bic']:8.1f}  held-out MAPE "
                  f"{100 * f['heldout_mape']:.1f}%  verdicts {f['verdicts_right']}/{f['verdicts']}")
    assert all(np.isfinite(f["aic"]) for f in forms)
    assert forms[0]["aic"] != forms[1]["aic"]  # the forms differ in what they predict
