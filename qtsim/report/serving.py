"""The execution model a prediction was calibrated for, said aloud beside every verdict, and the
static-batching arithmetic (per-replica throughput, replicas, batch-fill wait, time per query)
with which ``qtsim plan`` serves a demand on that execution model."""

from __future__ import annotations

import numpy as np

from qtsim.model.stack import describe


def bnb_version(profile) -> str:
    """bitsandbytes version the profile's numbers describe, or ``"not stated"``.

    The stack the profile was set to (:meth:`~qtsim.profiles.hardware.HardwareProfile.with_stack`),
    else its provenance (a calibrated profile records its versions), then the host part combined
    with it (:mod:`qtsim.profiles.hosts`: its ``[host.stack]``).
    """
    if getattr(profile, "bnb", None):
        return str(profile.bnb["version"])
    v = (profile.provenance.get("versions") or {}).get("bitsandbytes")
    if not v:
        host = getattr(profile, "host", None)
        v = ((getattr(host, "host", None) or {}).get("stack") or {}).get("bitsandbytes")
    return str(v) if v else "not stated"


def bnb_text(profile) -> str:
    """The bitsandbytes release a verdict depends on, with where it comes from, e.g.
    ``bitsandbytes 0.50.2 (assumed: the current release (--bnb-version to change); host
    constants fitted on 0.45.0.dev)``."""
    return describe(getattr(profile, "bnb", None)) or f"bitsandbytes {bnb_version(profile)}"


def serving_assumption(profile) -> str:
    """One sentence: what the profile's numbers describe, and what lies outside them."""
    v = bnb_version(profile)
    host = getattr(profile, "host", None)
    if getattr(profile, "bnb", None):
        v = bnb_text(profile).removeprefix("bitsandbytes ")
        if host is not None:
            v += f" (host part {host.name})"
    elif v != "not stated" and host is not None and not (profile.provenance.get("versions") or {}):
        v += f" (host part {host.name})"
    elif v == "not stated" and profile.source == "spec":
        v = "not stated (spec profile)"
    return ("serving model: Hugging Face transformers generate, eager (no CUDA graphs, no "
            f"torch.compile), bitsandbytes {v}; vLLM/TGI with CUDA graphs, continuous batching "
            "or other quantisation kernels (GPTQ, AWQ, Marlin, FP8) are outside this calibration")


# ---- static batching (HF generate): the serving arithmetic of `qtsim plan` ----------------------
#: replicas = ceil(x) of a ratio within this relative tolerance of an integer counts that integer
#: (so 2.0000000001 replicas, a rounding artefact, is 2)
CEIL_RTOL = 1e-9


def replica_queries_per_s(batch, latency_s):
    """Throughput of one replica serving static batches, queries/s: B queries per call of
    ``latency_s`` (prefill, then K-1 decode steps; HF ``generate`` admits nothing mid-call)."""
    return np.asarray(batch, float) / latency_s


def replicas_needed(peak_queries_per_s, replica_qps):
    """Replicas that carry the peak demand, ceil(peak demand / per-replica throughput), >= 1."""
    x = np.asarray(peak_queries_per_s, float) / replica_qps
    return np.maximum(np.ceil(x * (1.0 - CEIL_RTOL)), 1.0)


def batch_fill_wait_s(batch, replica_arrival_qps):
    """Longest wait for a static batch to fill, s: the first of B queries waits for B-1 more
    arriving at ``replica_arrival_qps`` (arrivals evenly spaced at that rate; 0 at B = 1)."""
    return (np.asarray(batch, float) - 1.0) / replica_arrival_qps


def time_per_query_s(batch, latency_s, replicas, queries_per_s):
    """Longest time from a query's arrival to its last token, s: the wait for its batch to fill
    at the mean rate one replica receives (``queries_per_s`` / replicas) plus the batch's call.

    With replicas sized for the peak, a replica is free again before its next batch has filled
    (B / arrival rate >= B / throughput = latency), so no query queues behind a running batch.
    """
    return batch_fill_wait_s(batch, np.asarray(queries_per_s, float) / replicas) + latency_s


def static_batching_statement(peak_factor: float, percentile: float) -> str:
    """The serving arithmetic `qtsim plan` applies, said in one paragraph beside every answer."""
    return (
        "serving arithmetic: HF transformers generate serves static batches (B queries per call: "
        "prefill, then K-1 decode steps; nothing joins a running batch); one replica (one GPU "
        "holding the whole model) serves B / latency queries/s; replicas = ceil(demand x peak "
        f"factor {peak_factor:g} / that); time per query = the wait for a batch to fill (B-1 "
        "queries at the mean rate one replica receives, arrivals evenly spaced) + the call's "
        "latency; a configuration is feasible when weights, the KV cache for B x (prompt + K) "
        "tokens and the runtime overhead fit in the GPU's memory and the step time and time per "
        f"query meet their targets at the {percentile:g}th percentile of the profile's draws "
        "(each draw sized with its own replicas); kWh = served queries x J/query + replicas' idle "
        "time x the GPU's idle power, x PUE; $ = replicas x $/GPU-hour x 730.5 h, busy or not. "
        "Continuous batching (vLLM, TGI), partial-batch timeouts, Poisson bursts beyond the peak "
        "factor and models sharded over several GPUs are outside it")
