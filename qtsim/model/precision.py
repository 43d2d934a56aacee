"""Weight precisions qtsim knows, and the bits each one stores per weight.

Storage per weight includes the quantisation scales bitsandbytes keeps:

- NF4/FP4 (QLoRA, Dettmers et al. 2023): 4 bits per weight plus one absmax per block of 64
  weights. Without double quantisation the absmax is fp32 (32/64 = 0.5 bit/weight); with it the
  absmax is 8-bit with one fp32 second-level scale per 256 blocks (8/64 + 32/(64*256) ≈ 0.127).
- LLM.int8() (Dettmers et al. 2022): 8 bits per weight plus one fp32 scale per output row
  (32 / in_features bit/weight; computed per layer in ``qtsim.model.architecture``).
"""

from __future__ import annotations

from dataclasses import dataclass

from qtsim.errors import UnknownNameError, suggest

NF4_BLOCKSIZE = 64
DOUBLE_QUANT_BLOCKSIZE = 256


@dataclass(frozen=True)
class Precision:
    name: str
    bits: int  # the paper's p: bits per weight element (eq. 18, 19)
    native: bool  # runs without dequantisation on every GPU we ship (the paper's pi)
    quantized: bool
    description: str

    def scale_bits_per_weight(self, in_features: int, double_quant: bool = False) -> float:
        """Extra bits per weight spent on quantisation scales."""
        if self.name in ("nf4", "fp4"):
            if double_quant:
                return 8.0 / NF4_BLOCKSIZE + 32.0 / (NF4_BLOCKSIZE * DOUBLE_QUANT_BLOCKSIZE)
            return 32.0 / NF4_BLOCKSIZE
        if self.name == "int8":
            return 32.0 / in_features
        return 0.0


PRECISIONS: dict[str, Precision] = {
    "fp16": Precision("fp16", 16, True, False, "IEEE half precision, native"),
    "bf16": Precision("bf16", 16, True, False, "bfloat16, native"),
    "int8": Precision("int8", 8, False, True, "bitsandbytes LLM.int8() (threshold 6.0)"),
    "nf4": Precision("nf4", 4, False, True, "bitsandbytes 4-bit NormalFloat, blocksize 64"),
    "fp4": Precision("fp4", 4, False, True, "bitsandbytes 4-bit float, blocksize 64"),
}

NATIVE_BITS = 16  # the paper's pi: native precision of the GPUs in the paper
#: GPU architectures without BF16 arithmetic (BF16 tensor cores arrived with Ampere, sm_80):
#: torch emulates bfloat16 there at a cost qtsim does not model, so BF16 is refused on them
NO_BF16_ARCHITECTURES = ("kepler", "maxwell", "pascal", "volta", "turing")


def hardware_dtypes(hardware: dict) -> list[str] | None:
    """The formats a ``[hardware]`` table runs natively (its ``native_formats``, less BF16 on an
    architecture of :data:`NO_BF16_ARCHITECTURES`), or None when the table does not say."""
    formats = hardware.get("native_formats")
    if formats is None:
        return None
    arch = str(hardware.get("architecture", "")).lower()
    return [f for f in formats if not (f == "bf16" and arch in NO_BF16_ARCHITECTURES)]


def get_precision(name: str) -> Precision:
    try:
        return PRECISIONS[name.lower()]
    except KeyError:
        raise UnknownNameError(
            f"unknown precision {name!r}{suggest(name, PRECISIONS)}"
        ) from None


def reference_for(precision: str) -> str:
    """The native precision a quantized run is compared against (its compute dtype)."""
    p = get_precision(precision)
    return p.name if p.native else "fp16"
