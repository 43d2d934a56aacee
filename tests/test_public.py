"""The model against public GPU rows nobody here measured (issue 19; printed in CI's output).

The device, host and power constants are fitted jointly to the bitsandbytes maintainers' decode
latencies and to NVML-metered HF ``generate`` runs (``data/reference``), then scored by leaving
out what is predicted: one metered GPU at a time (J/token, power, tok/s, energy ratio, decisive
energy verdicts, 68% band coverage), one (GPU, model) group of the latency table at a time.

Issue 19's targets on held-out rows: J/token and power MAPE <= 15%, energy ratio <= 10%, every
decisive energy verdict right, 68% coverage in [55%, 80%], latency by group <= 15%. The tables
print which are met; the assertions below guard what is met today against regressions.
"""


import numpy as np
import pytest

from qtsim.calibration.fit import public, public_refit, public_rows
from qtsim.profiles.priors import public_fit


@pytest.fixture(scope="module")
def scored():
    return public_refit.scores(n_draws=60)


def test_leave_one_gpu_out_is_printed_and_holds(scored, capsys):
    with capsys.disabled():
        print("\n" + public_refit.report(scored))
    pooled = public_refit._pooled(scored["energy"])
    assert {f["fold"] for f in scored["energy"]} == {"a100-80gb", "rtx-4090", "rtx-4090d", "t4"}
    assert pooled["n"] >= 80
    assert pooled["j"] <= 0.22 and pooled["p"] <= 0.25  # J/token and power MAPE
    assert 0.55 <= pooled["cov"] <= 0.80  # the bands cover what they say
    assert pooled["vr"] >= 0.8 * pooled["v"]  # decisive energy verdicts


def test_leave_one_latency_group_out(scored):
    for f in scored["latency"]:
        assert f["verdicts"] >= 8
        if f["host_known"]:  # the machine's host seen in its other rows: the model's own error
            assert f["mape"] <= 0.15 and f["verdicts_right"] == f["verdicts"], f["fold"]


def test_shipped_fit_is_what_the_rows_give(scored):
    """public_fit.toml (behind every spec profile) is reproduced by fitting the rows again."""
    shipped = public_fit()
    f = scored["fit"]
    for table in ("device", "power", "host"):
        for k, e in shipped[table].items():
            if isinstance(e, dict) and "value" in e and k in f.values:
                assert f.values[k] == pytest.approx(e["value"], rel=1e-3, abs=1e-12), k


def test_every_row_is_read_or_left_out_with_a_reason():
    rows = public_rows.read()
    assert set(rows["table"]) == {"latency", "energy"}
    out = rows[~rows["use"]]
    assert len(out) and out["reason"].str.len().min() > 20
    assert (rows.loc[rows["use"], "model"] != "").all()
    assert rows.loc[rows["campaign"] == "eco-t4-site", "use"].eq(False).all()  # flagged T4 rows
    used = rows[rows["use"] & (rows["table"] == "energy")]
    assert used[["obs_tok_s", "obs_power_w", "obs_j_per_tok"]].notna().any(axis=1).all()
    # an idle-subtracted energy column is not used: J/token = power / throughput there
    feb = used[used["campaign"] == "eco-4090d-feb12"]
    assert np.allclose(feb["obs_j_per_tok"], feb["obs_power_w"] / feb["obs_tok_s"])


def test_prediction_is_the_model_itself():
    """The fit predicts through physical.query: a row predicted alone equals its group's."""
    rows = public_rows.read()
    used = rows[rows["use"]]
    v = {s.name: s.init * s.scale for s in public.PARAMS}
    together = public.predict(used, v)
    alone = public.predict(used.iloc[[5]], v)
    assert alone.iloc[0]["j_per_tok"] == pytest.approx(together.iloc[5]["j_per_tok"], rel=1e-12)
    assert (together[["step_s", "power_w", "j_per_tok"]] > 0).all().all()


def test_spec_profiles_help_writes_nothing(tmp_path, monkeypatch, capsys):
    from qtsim.calibration.fit import spec_profiles

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        spec_profiles.main(["--help"])
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
