"""The execution model a prediction was calibrated for, said aloud beside every verdict."""

from __future__ import annotations


def bnb_version(profile) -> str:
    """bitsandbytes version the profile's numbers describe, or ``"not stated"``.

    Looked up in the profile's provenance (a calibrated profile records its versions), then in
    the host part combined with it (:mod:`qtsim.profiles.hosts`: its ``[host.stack]``).
    """
    v = (profile.provenance.get("versions") or {}).get("bitsandbytes")
    if not v:
        host = getattr(profile, "host", None)
        v = ((getattr(host, "host", None) or {}).get("stack") or {}).get("bitsandbytes")
    return str(v) if v else "not stated"


def serving_assumption(profile) -> str:
    """One sentence: what the profile's numbers describe, and what lies outside them."""
    v = bnb_version(profile)
    host = getattr(profile, "host", None)
    if v != "not stated" and host is not None and not (profile.provenance.get("versions") or {}):
        v += f" (host part {host.name})"
    elif v == "not stated" and profile.source == "spec":
        v = "not stated (spec profile)"
    return ("serving model: Hugging Face transformers generate, eager (no CUDA graphs, no "
            f"torch.compile), bitsandbytes {v}; vLLM/TGI with CUDA graphs, continuous batching "
            "or other quantisation kernels (GPTQ, AWQ, Marlin, FP8) are outside this calibration")
