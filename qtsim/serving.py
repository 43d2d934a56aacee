"""The execution model a prediction was calibrated for, said aloud beside every verdict."""

from __future__ import annotations


def bnb_version(profile) -> str:
    """bitsandbytes version in the profile's provenance, or ``"not stated"``."""
    v = (profile.provenance.get("versions") or {}).get("bitsandbytes")
    return str(v) if v else "not stated"


def serving_assumption(profile) -> str:
    """One sentence: what the profile's numbers describe, and what lies outside them."""
    v = bnb_version(profile)
    if v == "not stated":
        v = ("not stated (spec profile: priors from the bitsandbytes maintainers' v0.45-era "
             "H100 table)" if profile.source == "spec" else "not stated")
    return ("serving model: Hugging Face transformers generate, eager (no CUDA graphs, no "
            f"torch.compile), bitsandbytes {v}; vLLM/TGI with CUDA graphs, continuous batching "
            "or other quantisation kernels (GPTQ, AWQ, Marlin, FP8) are outside this calibration")
