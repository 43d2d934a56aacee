"""The GPU registry: every GPU qtsim knows by name, the other names a user may type for it, and
how a CUDA device string maps to it. One table that ``qtsim calibrate`` (which GPU is this, and
is it the one asked for), the profiles (the ``aliases`` the spec profiles carry, and lookups by
alias) and the spec table (``data/reference/gpu_specs.csv``: one row per shipped profile, each a
name of this registry; ``tests/test_profiles.py`` checks both ways) all read.

Names are lower-case slugs (profiles, raw data and calibrations key on them). ``aliases`` name
exactly one GPU; a family name several (``qtsim calibrate --gpu h100`` accepts any H100 board,
while ``qtsim trap --gpu h100`` means the alias, the H100 SXM).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    """One GPU: ``name``; ``match`` (a regular expression searched in the lower-cased CUDA
    device string; the registry is searched in order, so a more specific board comes before one
    whose pattern it also matches); ``example`` (a device string ``torch.cuda.get_device_name``
    or ``nvidia-smi`` reports for it); ``aliases`` (other names for exactly this GPU)."""

    name: str
    match: str
    example: str
    aliases: tuple[str, ...] = ()


#: in matching order: specific boards before the patterns they also match (GH200 before H200,
#: GB200 before B200, H100 PCIe/NVL before the SXM, A100 40GB before 80GB, Max-Q before the
#: full RTX PRO 6000, RTX 4090 D before RTX 4090)
GPUS: tuple[Gpu, ...] = (
    Gpu("gh200", r"gh200", "NVIDIA GH200 480GB"),
    Gpu("gb200", r"gb200", "NVIDIA GB200"),
    Gpu("h100-pcie", r"^(?=.*h100)(?=.*pcie)", "NVIDIA H100 PCIe", ("h100pcie",)),
    Gpu("h100-nvl", r"^(?=.*h100)(?=.*nvl)", "NVIDIA H100 NVL"),
    Gpu("h100-sxm", r"h100", "NVIDIA H100 80GB HBM3", ("h100", "h100-80gb", "h100-sxm5")),
    Gpu("h200-nvl", r"^(?=.*h200)(?=.*nvl)", "NVIDIA H200 NVL"),  # a 600 W board
    Gpu("h200", r"h200", "NVIDIA H200", ("h200-sxm", "h200-141gb")),
    Gpu("a100-40gb", r"^(?=.*a100)(?=.*40gb)", "NVIDIA A100-SXM4-40GB",
        ("a100-40", "a100-sxm4-40gb")),
    Gpu("a100-80gb", r"a100", "NVIDIA A100-SXM4-80GB", ("a100", "a100-80", "a100-sxm4-80gb")),
    Gpu("b200", r"b200", "NVIDIA B200", ("b200-sxm",)),
    Gpu("rtx-pro-6000-blackwell-max-q", r"^(?=.*rtx pro 6000)(?=.*blackwell)(?=.*max-q)",
        "NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition"),  # a 300 W board
    Gpu("rtx-pro-6000-blackwell", r"^(?=.*rtx pro 6000)(?=.*blackwell)",
        "NVIDIA RTX PRO 6000 Blackwell Server Edition",
        ("rtx-pro-6000", "rtx6000-pro", "rtx-6000-pro")),
    Gpu("l40s", r"\bl40s\b", "NVIDIA L40S", ("nvidia-l40s",)),
    Gpu("l4", r"\bl4\b", "NVIDIA L4", ("nvidia-l4",)),
    Gpu("a10g", r"\ba10g\b", "NVIDIA A10G", ("nvidia-a10g",)),
    Gpu("a10", r"\ba10\b", "NVIDIA A10", ("nvidia-a10",)),
    Gpu("t4", r"\bt4\b", "Tesla T4", ("tesla-t4", "nvidia-t4")),
    Gpu("v100", r"v100", "Tesla V100-SXM2-16GB"),
    Gpu("rtx-4090d", r"\brtx 4090 ?d\b", "NVIDIA GeForce RTX 4090 D"),
    Gpu("rtx-4090", r"\brtx 4090\b", "NVIDIA GeForce RTX 4090",
        ("4090", "rtx4090", "geforce-rtx-4090")),
    Gpu("rtx-6000-ada", r"\brtx 6000 ada\b", "NVIDIA RTX 6000 Ada Generation",
        ("rtx6000-ada", "rtx-6000-ada-generation")),
)
BY_NAME: dict[str, Gpu] = {g.name: g for g in GPUS}
#: names that accept every board of a family when measuring (``calibrate --gpu h100``)
FAMILIES: dict[str, tuple[str, ...]] = {
    "h100": ("h100-sxm", "h100-pcie", "h100-nvl"),
    "h200": ("h200", "h200-nvl"),
    "a100": ("a100-80gb", "a100-40gb"),
    "rtx-pro-6000": ("rtx-pro-6000-blackwell", "rtx-pro-6000-blackwell-max-q"),
    "rtx6000-pro": ("rtx-pro-6000-blackwell", "rtx-pro-6000-blackwell-max-q"),
}
#: words a ``--gpu`` may give instead of a name: whatever CUDA device is visible
ANY_CUDA = ("cuda", "auto", "gpu")


def normalise_gpu_name(device_string: str) -> str:
    """qtsim's name for a CUDA device string: ``"NVIDIA H100 80GB HBM3"`` -> ``"h100-sxm"``,
    ``"NVIDIA H100 PCIe"`` -> ``"h100-pcie"``, ``"NVIDIA A100-SXM4-80GB"`` -> ``"a100-80gb"``,
    ``"NVIDIA GeForce RTX 4090"`` -> ``"rtx-4090"``. A string the registry does not know
    becomes a lower-case slug without the vendor prefix."""
    s = device_string.lower()
    for g in GPUS:
        if re.search(g.match, s):
            return g.name
    slug = re.sub(r"^(nvidia|tesla)\s+", "", s)
    return re.sub(r"[^a-z0-9]+", "-", slug).strip("-") or "unknown-gpu"


def canonical_name(name: str) -> str | None:
    """The registry name ``name`` (a name or an alias, any case) stands for, or None."""
    key = name.strip().lower()
    if key in BY_NAME:
        return key
    return next((g.name for g in GPUS if key in g.aliases), None)


def accepted_names(requested: str) -> tuple[str, ...]:
    """The GPU names a ``--gpu`` value accepts when measuring: a family's members, the GPU a
    name or alias stands for, else whatever the value normalises to."""
    members = FAMILIES.get(requested.strip().lower())
    if members:
        return members
    name = canonical_name(requested)
    return (name,) if name else (normalise_gpu_name(requested.strip().lower()),)


def known_names() -> set[str]:
    """Every name, alias and family name of the registry, and the words for any CUDA device."""
    return {*ANY_CUDA, *BY_NAME, *FAMILIES, *(a for g in GPUS for a in g.aliases)}


def aliases(name: str) -> list[str]:
    """The aliases a profile of GPU ``name`` carries (``[hardware] aliases``)."""
    g = BY_NAME.get(name)
    return list(g.aliases) if g else []
