"""Options shared by several commands."""

from __future__ import annotations

import math

import click

from qtsim.errors import QtsimError
from qtsim.model.precision import PRECISIONS
from qtsim.model.stack import CURRENT_BNB
from qtsim.model.workload import DEFAULT_INT8_THRESHOLD, BnbSettings
from qtsim.report.budget import BudgetAssumptions

FORMATS = click.Choice(["text", "json", "csv"], case_sensitive=False)


class StrictCommand(click.Command):
    """A command that refuses an option given twice (click keeps the last one silently), unless
    the option is declared repeatable (``multiple=True``) or counts (``count=True``)."""

    def parse_args(self, ctx, args):
        parser = self.make_parser(ctx)
        try:
            opts, _, order = parser.parse_args(args=list(args))
        except click.UsageError:
            return super().parse_args(ctx, args)  # click words its own usage errors
        seen: dict[str, int] = {}
        for p in order:
            if isinstance(p, click.Option) and not (p.multiple or p.count):
                seen[p.name] = seen.get(p.name, 0) + 1
                if seen[p.name] == 2:
                    raise QtsimError(
                        f"{p.opts[0]} given more than once: give it once"
                        + (" (it takes a comma-separated list)" if _takes_list(p) else "")
                        + f"; only one value is used (`qtsim {ctx.command_path.split(' ', 1)[-1]} "
                        "--help`)")
        return super().parse_args(ctx, args)


def _takes_list(option: click.Option) -> bool:
    text = (option.help or "").lower()
    return "comma" in text


class StrictGroup(click.Group):
    """A group whose subcommands are :class:`StrictCommand` s."""

    command_class = StrictCommand


def split_list(value: str, name: str) -> list[str]:
    items = [v.strip() for v in str(value).split(",") if v.strip()]
    if not items:
        raise click.BadParameter(f"{name} needs at least one value")
    return items


def int_list(value: str, name: str, minimum: int = 1) -> list[int]:
    out = []
    for v in split_list(value, name):
        try:
            x = int(v)
        except ValueError:
            raise click.BadParameter(f"{name}: {v!r} is not an integer") from None
        if x < minimum:
            raise click.BadParameter(f"{name}: {x} is below {minimum}")
        out.append(x)
    return out


def precision_list(value: str) -> list[str]:
    out = []
    for v in split_list(value, "--precision"):
        if v.lower() not in PRECISIONS:
            raise click.BadParameter(f"unknown precision {v!r} (choose from {', '.join(PRECISIONS)})")
        out.append(v.lower())
    return out


def profile_options(f):
    f = click.option("--profile", "profile_path", type=click.Path(dir_okay=False),
                     help="Load this profile TOML instead of looking --gpu up.")(f)
    f = click.option("--gpu", help="Hardware profile name or alias (see `qtsim profiles list`).")(f)
    return f


# ---- bitsandbytes settings and budget assumptions (shared by trap, compare, simulate, validate) --
def bnb_options(f):
    """--double-quant, --int8-threshold, --compute-dtype (BitsAndBytesConfig's three knobs).

    Values are checked by :class:`qtsim.model.workload.BnbSettings` (one-line error, exit 2)."""
    f = click.option("--compute-dtype", "compute_dtype", metavar="fp16|bf16|fp32",
                     help="4-bit compute dtype (bnb_4bit_compute_dtype); default the profile's "
                          "(its native dtype).")(f)
    f = click.option("--int8-threshold", "int8_threshold", metavar="6|0",
                     help="LLM.int8() outlier threshold (llm_int8_threshold): 6 (default: outlier "
                          "columns in fp16) or 0 (no outlier decomposition).")(f)
    f = click.option("--double-quant", "double_quant", is_flag=True,
                     help="NF4/FP4 with double quantisation of the scales "
                          "(bnb_4bit_use_double_quant; QLoRA's default).")(f)
    return f


def stack_option(f):
    """--bnb-version: the bitsandbytes release the prediction describes (:mod:`qtsim.model.stack`)."""
    return click.option(
        "--bnb-version", "bnb_version", metavar="VERSION",
        help=f"bitsandbytes release you run (default {CURRENT_BNB}, the current one, stated as "
             "assumed): from 0.50 4-bit layers run a fused GEMM for batch 2-64 on CUDA, before "
             "it they dequantise every weight each step. A calibrated profile is the stack it "
             "was calibrated with.")(f)


def bnb_settings(double_quant=False, int8_threshold=None, compute_dtype=None):
    """A :class:`qtsim.model.workload.BnbSettings` from the options of :func:`bnb_options`."""
    t = DEFAULT_INT8_THRESHOLD if int8_threshold is None else int8_threshold
    if isinstance(t, str):
        t = number_option(t, "--int8-threshold")
    return BnbSettings(bool(double_quant), t, compute_dtype)


def budget_options(f):
    """--pue, --grid-gco2-per-kwh, --usd-per-hour: the assumptions behind budget figures."""
    f = click.option("--usd-per-hour", "usd_per_hour", metavar="USD",
                     help="GPU price per hour (rental or amortised): adds the $ figures "
                          "(compare and plan: one price, or one per GPU in --gpu order).")(f)
    f = click.option("--grid-gco2-per-kwh", "grid_gco2_per_kwh", metavar="G",
                     help="Grid carbon intensity, gCO2e/kWh: adds the carbon figures.")(f)
    f = click.option("--pue", metavar="PUE", default="1.0", show_default=True,
                     help="Facility power usage effectiveness (>= 1); 1 = GPU board energy only.")(f)
    return f


def budget_assumptions(pue="1.0", grid_gco2_per_kwh=None, usd_per_hour=None):
    """A :class:`qtsim.report.budget.BudgetAssumptions` from the options of :func:`budget_options`."""
    def opt(v, name):
        return None if v is None else number_option(v, name)

    return BudgetAssumptions(number_option(pue, "--pue"), opt(grid_gco2_per_kwh, "--grid-gco2-per-kwh"),
                             opt(usd_per_hour, "--usd-per-hour"))


def int_option(text, name: str, minimum: int) -> int:
    """An integer option given as text (checked here so the error is one line, exit 2)."""
    try:
        x = int(str(text))
    except ValueError:
        raise QtsimError(f"{name} {text!r} is not an integer") from None
    if x < minimum:
        raise QtsimError(f"{name} {x} is below {minimum}")
    return x


def prices_option(text):
    """``--usd-per-hour``: one price, or one per GPU (comma-separated), USD per GPU-hour."""
    if text is None:
        return None
    return [budget_assumptions("1.0", None, v).usd_per_hour
            for v in split_list(text, "--usd-per-hour")]


def number_option(text, name: str) -> float:
    """A finite number given as text (one-line error otherwise, exit 2)."""
    try:
        x = float(text)
    except (TypeError, ValueError):
        raise QtsimError(f"{name} {text!r} is not a number") from None
    if not math.isfinite(x):
        raise QtsimError(f"{name} {text!r} must be finite")
    return x
