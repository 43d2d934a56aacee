"""What is served: a :class:`Workload` (precision, batch, tokens) and its bitsandbytes settings.

:class:`Workload` is the one frozen object that carries a query's description from the command
line through the model, the simulator, B*, N*, the trap report, surfaces and validation: the
precision with its :class:`BnbSettings`, the batch B (sequences decoded together; a scalar or a
grid), the new tokens K per query and the prompt tokens.

:class:`BnbSettings` carries the quantisation knobs, named as transformers'
``BitsAndBytesConfig`` names them, to the kernel-path choice
(:func:`qtsim.model.paths.path_family`):

- ``double_quant`` (``bnb_4bit_use_double_quant``): NF4/FP4 quantise their absmax scales again
  (8-bit, blocks of 256): about 0.127 instead of 0.5 bit of scale per weight, and on calibrated
  profiles the ``nf4dq_*`` kernel paths (QLoRA's default);
- ``int8_threshold`` (``llm_int8_threshold``): LLM.int8()'s outlier threshold. The model has two
  kernel paths for it: ``int8`` (6.0, transformers' default: activation columns above the
  threshold run in fp16) and ``int8_t0`` (0: no outlier decomposition). Other values change how
  many columns take the fp16 path, which depends on the real model's activations, so qtsim
  refuses them rather than guess;
- ``compute_dtype`` (``bnb_4bit_compute_dtype``): the dtype 4-bit layers compute (and the
  lm_head runs) in; ``None`` means the profile's ``compute_dtype_4bit`` (default its native
  dtype). The dtype must be a kernel path the profile has (fp16/bf16 on every shipped profile;
  fp32 only where a calibration measured an fp32 path).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from qtsim.errors import ProfileError, QtsimError
from qtsim.model.paths import DEFAULT_INT8_THRESHOLD, INT8_THRESHOLDS, path_family, resolve_path
from qtsim.model.paths import FOUR_BIT_PRECISIONS as FOUR_BIT
from qtsim.model.precision import get_precision, hardware_dtypes

COMPUTE_DTYPES = ("fp16", "bf16", "fp32")


@dataclass(frozen=True)
class BnbSettings:
    """bitsandbytes quantisation settings (see the module docstring); defaults are transformers'."""

    double_quant: bool = False
    int8_threshold: float = DEFAULT_INT8_THRESHOLD
    compute_dtype: str | None = None

    def __post_init__(self):
        try:
            t = float(self.int8_threshold)
        except (TypeError, ValueError):
            raise QtsimError(f"--int8-threshold {self.int8_threshold!r} is not a number") from None
        if t not in INT8_THRESHOLDS:
            raise QtsimError(
                f"--int8-threshold {self.int8_threshold:g}: qtsim models llm_int8_threshold 6 "
                "(transformers' default, outlier columns in fp16) and 0 (no outlier "
                "decomposition) only; other values depend on the real model's activation outliers")
        object.__setattr__(self, "int8_threshold", t)
        if self.compute_dtype is not None:
            cd = str(self.compute_dtype).lower()
            if cd not in COMPUTE_DTYPES:
                raise QtsimError(f"--compute-dtype {self.compute_dtype!r}: choose from "
                                 f"{', '.join(COMPUTE_DTYPES)}")
            object.__setattr__(self, "compute_dtype", cd)

    @property
    def is_default(self) -> bool:
        return self == BnbSettings()

    def compute_dtype_for(self, profile) -> str:
        """The 4-bit compute dtype in force on ``profile`` (explicit, else the profile's)."""
        return self.compute_dtype or profile.compute_dtype_4bit

    def check(self, precisions, profile=None) -> None:
        """Refuse settings that no precision in ``precisions`` uses, or that ``profile`` lacks.

        Raises a one-line :class:`QtsimError` (the CLI exits 2).
        """
        names = {get_precision(p).name for p in precisions}
        if self.double_quant and not names & set(FOUR_BIT):
            raise QtsimError("--double-quant applies to 4-bit precisions (nf4, fp4) only")
        if self.int8_threshold != DEFAULT_INT8_THRESHOLD and "int8" not in names:
            raise QtsimError("--int8-threshold applies to --precision int8 only")
        if self.compute_dtype is not None and not names & set(FOUR_BIT):
            raise QtsimError("--compute-dtype (bnb_4bit_compute_dtype) applies to 4-bit "
                             "precisions (nf4, fp4) only")
        if profile is not None:
            for p in sorted(names & {"fp16", "bf16"}):
                check_dtype(profile, p, "--precision")
            if self.compute_dtype is not None and names & set(FOUR_BIT):
                check_dtype(profile, self.compute_dtype, "--compute-dtype")
        if profile is not None and self.compute_dtype is not None:
            try:
                for side in ("b1", "bn"):
                    resolve_path(profile.physical, f"{self.compute_dtype}_{side}")
            except ProfileError:
                raise QtsimError(
                    f"--compute-dtype {self.compute_dtype}: profile {profile.name} has no "
                    f"{self.compute_dtype} kernel path, so qtsim cannot predict 4-bit layers "
                    "computing in it there (fp16 and bf16 are modelled on every shipped profile)"
                ) from None

    def bnb_config(self, precision: str, profile=None) -> dict:
        """The settings that apply to ``precision``, keyed as ``BitsAndBytesConfig`` keys them.

        Keys that do not apply are ``None`` (e.g. ``llm_int8_threshold`` for NF4).
        """
        p = get_precision(precision).name
        four = p in FOUR_BIT
        cd = self.compute_dtype_for(profile) if (four and profile is not None) else self.compute_dtype
        return {
            "load_in_8bit": p == "int8", "load_in_4bit": four,
            "bnb_4bit_quant_type": p if four else None,
            "bnb_4bit_use_double_quant": self.double_quant if four else None,
            "bnb_4bit_compute_dtype": _torch_name(cd) if four else None,
            "llm_int8_threshold": self.int8_threshold if p == "int8" else None,
        }

    def label(self, precision: str) -> str:
        """A short tag for tables, e.g. ``nf4+dq``, ``int8 t=0``, ``nf4 bf16``."""
        p = get_precision(precision).name
        out = p
        if p in FOUR_BIT and self.double_quant:
            out += "+dq"
        if p in FOUR_BIT and self.compute_dtype:
            out += f" {self.compute_dtype}"
        if p == "int8" and self.int8_threshold != DEFAULT_INT8_THRESHOLD:
            out += f" t={self.int8_threshold:g}"
        return out


def parse_setting(text: str) -> tuple[str, BnbSettings]:
    """A precision and its bitsandbytes settings from one name, the inverse of
    :meth:`BnbSettings.label`: the precision, then ``+``-joined modifiers, ``dq`` (double
    quantisation), ``t0`` / ``t6`` (LLM.int8() threshold) and ``fp16`` / ``bf16`` / ``fp32`` (4-bit
    compute dtype); ``nf4+dq+bf16``, ``int8+t0``, and the labels as tables print them
    (``int8 t=0``, ``nf4+dq bf16``). Returns (canonical precision, settings); a modifier that
    does not apply to the precision is refused with one line."""
    parts = [x for x in str(text).lower().replace(" ", "+").split("+") if x]
    if not parts:
        raise QtsimError("empty precision setting")
    precision = get_precision(parts[0]).name
    dq, threshold, dtype = False, DEFAULT_INT8_THRESHOLD, None
    for m in parts[1:]:
        t = m.replace("t=", "t")
        if m == "dq":
            dq = True
        elif t[:1] == "t" and t[1:].replace(".", "", 1).isdigit():
            threshold = float(t[1:])
        elif m in COMPUTE_DTYPES:
            dtype = m
        else:
            raise QtsimError(f"precision setting {text!r}: unknown modifier {m!r} (dq, t0, t6, "
                             f"{', '.join(COMPUTE_DTYPES)})")
    bnb = BnbSettings(dq, threshold, dtype)
    try:
        bnb.check([precision])
    except QtsimError as e:
        raise QtsimError(f"precision setting {text!r}: {e}") from None
    return precision, bnb


def check_dtype(profile, dtype: str, option: str) -> None:
    """Refuse a 16-bit (or fp32) ``dtype`` the profile's hardware does not run natively
    (:func:`qtsim.model.precision.hardware_dtypes`): qtsim does not model an emulated format's
    cost, and answering "identical to FP16" would be wrong."""
    formats = hardware_dtypes(profile.hardware)
    if formats is None or dtype in formats or dtype == "fp32":
        return
    arch = profile.hardware.get("architecture", "")
    raise QtsimError(
        f"{option} {dtype}: {profile.name} ({arch}) has no {dtype.upper()} arithmetic (it runs "
        f"{', '.join(formats)}); torch would emulate it at a cost qtsim does not model: use fp16")


def _torch_name(dtype: str | None) -> str | None:
    """``bf16`` -> ``bfloat16`` (the torch dtype name BitsAndBytesConfig takes)."""
    return {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}.get(dtype, dtype)


@dataclass(frozen=True)
class Workload:
    """One served workload: what each query costs is a function of this and the hardware.

    Parameters
    ----------
    precision : weight precision (``fp16``, ``bf16``, ``int8``, ``nf4``, ``fp4``; aliases
        accepted, stored by canonical name)
    batch : sequences decoded together, B (a number, or an array for a grid; > 0)
    new_tokens : new tokens generated per query, K (>= 1)
    prompt_tokens : prompt tokens per query (>= 0)
    bnb : bitsandbytes settings (double quantisation, LLM.int8() threshold, 4-bit compute dtype)
    """

    precision: str = "fp16"
    batch: float | np.ndarray = 1
    new_tokens: int = 256
    prompt_tokens: int = 128
    bnb: BnbSettings = field(default_factory=BnbSettings)

    def __post_init__(self):
        object.__setattr__(self, "precision", get_precision(self.precision).name)
        if not np.all(np.asarray(self.batch, float) > 0):
            raise QtsimError(f"batch must be positive (got {self.batch!r})")
        if not (self.new_tokens >= 1 and self.prompt_tokens >= 0):
            raise QtsimError(f"new tokens must be >= 1 and prompt tokens >= 0 (got "
                             f"{self.new_tokens!r}, {self.prompt_tokens!r})")

    @property
    def quantized(self) -> bool:
        return get_precision(self.precision).quantized

    @property
    def double_quant(self) -> bool:
        """Double quantisation in force (4-bit precisions only)."""
        return self.bnb.double_quant and self.precision in FOUR_BIT

    @property
    def family(self) -> str:
        """The kernel-path family this workload runs (:func:`qtsim.model.paths.path_family`)."""
        return path_family(self.precision, self.bnb.double_quant, self.bnb.int8_threshold)

    def replace(self, **changes) -> Workload:
        """A copy with ``changes`` (e.g. ``w.replace(batch=8)``)."""
        return dataclasses.replace(self, **changes)

    def reference(self, native: str) -> Workload:
        """The 16-bit workload a quantized one is compared with (itself when not quantized)."""
        return self.replace(precision=native) if self.quantized else self
