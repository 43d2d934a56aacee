"""The execution model a prediction was calibrated for, said aloud beside every verdict."""

from __future__ import annotations


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
    from qtsim.model.stack import describe

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
