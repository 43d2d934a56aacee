"""The public measurements qtsim fits and scores against, as one table of configurations.

Two published tables (``data/reference``; conditions in ``peer_measurements.md``):

- ``bnb_maintainers_decode.csv``: per-token decode latency of HF ``generate`` on an H100 SXM
  server and an RTX 4090 desktop (bitsandbytes maintainers, 0.45.0.dev), no energy;
- ``public_energy.csv``: NVML-metered HF ``generate`` + bitsandbytes runs (EcoCompute on RTX
  4090 / 4090D / T4, the HF LLM-Perf leaderboard on A100 and T4): throughput, average board
  power, energy per token, one row per metric.

:func:`read` turns both into one :class:`pandas.DataFrame`, one row per measured configuration
(campaign, GPU, model, precision, batch), with what was measured (``obs_step_s``,
``obs_tok_s``, ``obs_power_w``, ``obs_j_per_tok``; NaN where not) and whether it is used
(``use``, ``reason``). How each campaign is read (its GPU, window, prompt, energy semantics,
whether to trust it) is data, in ``public_campaigns.toml``, not code. A *campaign* (one machine,
stack and harness) is one experiment: the fit gives each its own host speed.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from io import StringIO

import numpy as np
import pandas as pd

LATENCY_TABLE = "bnb_maintainers_decode.csv"
ENERGY_TABLE = "public_energy.csv"
CAMPAIGNS = "public_campaigns.toml"
#: the maintainers' table's two machines: one campaign each
LATENCY_CAMPAIGNS = {"h100-sxm": "bnb-maint-h100", "rtx-4090": "bnb-maint-4090"}
COLUMNS = ("campaign", "table", "gpu", "model", "public_model", "family", "batch",
           "prompt_tokens", "new_tokens", "window", "pair", "obs_step_s", "obs_tok_s",
           "obs_power_w", "obs_j_per_tok", "use", "reason", "bnb")


def _ref(name: str) -> str:
    return (resources.files("qtsim.data.reference") / name).read_text()


def campaigns() -> dict:
    """The curation file ``public_campaigns.toml`` (campaigns, model and precision maps)."""
    return tomllib.loads(_ref(CAMPAIGNS))


def latency_rows() -> pd.DataFrame:
    """The maintainers' decode-latency rows as configurations (window ``decode``)."""
    t = pd.read_csv(StringIO(_ref(LATENCY_TABLE)))
    return pd.DataFrame({
        "campaign": t["gpu"].map(LATENCY_CAMPAIGNS), "table": "latency", "gpu": t["gpu"],
        "model": t["model"], "public_model": t["model"], "family": t["path"],
        "batch": t["batch"].astype(float), "prompt_tokens": t["prompt_tokens"].astype(float),
        "new_tokens": t["new_tokens"].astype(float), "window": "decode", "pair": "",
        "obs_step_s": t["decode_ms_per_token"] * 1e-3, "obs_tok_s": np.nan,
        "obs_power_w": np.nan, "obs_j_per_tok": np.nan, "use": True,
        "reason": "bitsandbytes maintainers' table (0.45.0.dev, transformers 4.46.3, torch 2.5.1)",
        "bnb": "0.45.0.dev"})


def _campaign_of(source: str, gpu: str, cfg: dict) -> tuple[str, dict]:
    for cid, c in cfg["campaign"].items():
        if c["match"] in source:
            name = cid if len(c["gpu"]) == 1 else f"{cid}-{c['gpu'][gpu]}"
            return name, c
    raise KeyError(f"no campaign in {CAMPAIGNS} matches source {source[:80]!r}")


def energy_rows() -> pd.DataFrame:
    """The metered rows as configurations: one per (campaign, GPU, model, precision, batch,
    pairing), metrics in SI per generated token; unmodelled models and excluded campaigns kept
    with ``use`` False and the reason."""
    cfg = campaigns()
    t = pd.read_csv(StringIO(_ref(ENERGY_TABLE)))
    t["output_tokens"] = t["output_tokens"].astype(float)
    out = {}
    for r in t.itertuples(index=False):
        cid, c = _campaign_of(r.source, r.gpu, cfg)
        label = str(r.precision)
        pair = label.split("(", 1)[1].rstrip(")") if label.startswith("FP16(") else ""
        key = (cid, r.model, label, float(r.batch))
        row = out.get(key)
        if row is None:
            arch = cfg["models"].get(r.model)
            use, reason = bool(c["use"]), c["reason"]
            if arch is None:
                raise KeyError(f"{CAMPAIGNS} has no [models] entry for {r.model!r}")
            if not arch:
                use, reason = False, f"not modelled: {cfg['models_not_modelled'][r.model]}"
            for x in cfg.get("exclude", []):
                if (x["campaign"], x["public_model"], x["precision"]) == (cid, r.model, label):
                    use, reason = False, f"left out: {x['reason']}"
            new = r.output_tokens if np.isfinite(r.output_tokens) else float(c.get("new_tokens", 256))
            row = out[key] = {
                "campaign": cid, "table": "energy", "gpu": c["gpu"][r.gpu], "model": arch,
                "public_model": r.model, "family": cfg["precisions"][label],
                "batch": float(r.batch), "prompt_tokens": float(c["prompt_tokens"]),
                "new_tokens": float(new), "window": c["window"], "pair": pair,
                "obs_step_s": np.nan, "obs_tok_s": np.nan, "obs_power_w": np.nan,
                "obs_j_per_tok": np.nan, "use": use, "reason": reason, "bnb": c["bnb"],
                "_energy": c["energy"]}
        _add_metric(row, str(r.metric), float(r.value), str(r.unit))
    rows = pd.DataFrame(list(out.values()))
    # idle-subtracted energy is not E = P x T: take J/token from power and throughput
    sub = rows["_energy"] == "idle_subtracted"
    rows.loc[sub, "obs_j_per_tok"] = rows.loc[sub, "obs_power_w"] / rows.loc[sub, "obs_tok_s"]
    both = rows["obs_j_per_tok"].isna() & rows["obs_power_w"].notna() & rows["obs_tok_s"].notna()
    rows.loc[both, "obs_j_per_tok"] = rows.loc[both, "obs_power_w"] / rows.loc[both, "obs_tok_s"]
    dec = rows["window"] == "decode"
    rows.loc[dec, "obs_step_s"] = rows.loc[dec, "batch"] / rows.loc[dec, "obs_tok_s"]
    return rows.drop(columns="_energy")


def _add_metric(row: dict, metric: str, value: float, unit: str) -> None:
    """Put one metric of the long table into a configuration row, in SI per generated token."""
    if metric == "decode_throughput":
        row["obs_tok_s"] = value
    elif metric.startswith("avg_gpu_power"):
        row["obs_power_w"] = value
    elif metric == "energy_per_1k_tokens":
        row["obs_j_per_tok"] = value / 1000.0
    elif metric == "energy_per_token":
        row["obs_j_per_tok"] = value / 1000.0 if unit == "mJ/token" else value
    elif metric == "decode_energy_gpu_per_token_DERIVED":
        row["obs_j_per_tok"] = value
    # decode_latency_63tok, decode_energy_gpu (kWh), decode_energy_total_*: redundant or not
    # the board (CPU and RAM included), not used


def legacy_int8(bnb: str) -> bool:
    """True for a stated bitsandbytes version before 0.45, whose LLM.int8() still converted
    layouts (col32 / col_turing / col_ampere) on every call; 0.45.0 rewrote it around int8
    cuBLAS matmuls. Unstated versions are not assumed legacy."""
    head = str(bnb).split()[0]
    try:
        major, minor = (int(x) for x in head.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) < (0, 45)


def read() -> pd.DataFrame:
    """Both tables as one frame of configurations (:data:`COLUMNS`)."""
    return pd.concat([latency_rows(), energy_rows()], ignore_index=True)[list(COLUMNS)]
