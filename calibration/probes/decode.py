"""Full real decoding runs of a random-weight causal LM built from an architecture config.

Cost depends on shapes, not values, so weights are random (seeded). Quantised models take the
honest route when transformers allows it: save the random 16-bit model as safetensors to a
temporary directory and ``from_pretrained(tmp, quantization_config=BitsAndBytesConfig(...))``.
If transformers refuses (on CPU it needs ``accelerate`` for bitsandbytes), the fallback swaps
every ``nn.Linear`` except ``lm_head`` for the bitsandbytes layer carrying the same weights,
as ``transformers.integrations.bitsandbytes.replace_with_bnb_linear`` does; the route taken and
why are recorded in the point's attrs (``build_route``, ``build_route_reason``).

Random weights have none of the activation outliers that make LLM.int8() take its fp16 path on
real models; ``outlier_injection=True`` adds forward pre-hooks to every quantised linear that
set 8 fixed input dims to +-20 (> threshold 6.0), so the outlier path runs.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from qtsim.calibration.measure.conditions import environment_attrs
from qtsim.calibration.measure.energy import EnergyMonitor
from qtsim.calibration.measure.raw import PointResult, make_point_id, now_iso
from qtsim.calibration.probes.bench import (
    DEFAULT_THRESHOLD,
    OUTLIER_N_DIMS,
    OUTLIER_SCALE,
    _torch_dtype,
    compute_dtype_name,
    is_oom,
    iters_for,
    measurements_to_datasets,
    outlier_dims,
    release_memory,
    skip_on_oom,
)
from qtsim.errors import MeasurementError, QtsimError
from qtsim.model import paths

_DROP_CONFIG_KEYS = ("architectures", "transformers_version", "torch_dtype", "dtype",
                     "quantization_config", "_name_or_path", "auto_map")
PEAK_RSS_LABEL = "process peak RSS (VmHWM from /proc/self/status)"


@dataclass
class BuiltModel:
    """A model ready to decode, with the attrs describing how it was built."""

    model: Any
    config: dict
    precision: str
    attrs: dict[str, Any]
    device: Any


def hf_config(config: dict):
    """A transformers config object from an HF config.json dict (``model_type`` required)."""
    from transformers import AutoConfig

    cfg = {k: v for k, v in config.items() if k not in _DROP_CONFIG_KEYS}
    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise QtsimError("architecture config has no model_type")
    try:
        return AutoConfig.for_model(model_type, **cfg)
    except (ValueError, KeyError) as exc:
        raise QtsimError(f"transformers cannot build a {model_type!r} config: {exc}") from None


def _random_model(config: dict, dtype_name: str, device, seed: int):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = hf_config(config)
    if device.backend == "cuda":
        with torch.device(device.torch_device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=_torch_dtype(dtype_name))
    else:
        model = AutoModelForCausalLM.from_config(cfg, dtype=_torch_dtype(dtype_name))
    return model.to(device.torch_device).eval()


def bnb_config(precision: str, device, *, double_quant: bool = False,
               threshold: float = DEFAULT_THRESHOLD):
    """The transformers ``BitsAndBytesConfig`` for a quantised precision."""
    from transformers import BitsAndBytesConfig

    if precision == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=threshold)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=precision,
        bnb_4bit_compute_dtype=_torch_dtype(compute_dtype_name(device, precision)),
        bnb_4bit_use_double_quant=double_quant,
    )


def _from_pretrained_route(config, precision, device, seed, double_quant, threshold):
    from transformers import AutoModelForCausalLM

    tmp = tempfile.mkdtemp(prefix="qtsim-random-model-")
    try:
        model16 = _random_model(config, compute_dtype_name(device, precision), device, seed)
        model16.save_pretrained(tmp, safe_serialization=True)
        del model16
        release_memory(device)
        kwargs: dict[str, Any] = {
            "quantization_config": bnb_config(precision, device, double_quant=double_quant,
                                              threshold=threshold),
            "dtype": _torch_dtype(compute_dtype_name(device, precision)),
        }
        if device.backend == "cuda":
            kwargs["device_map"] = {"": device.index}
        return AutoModelForCausalLM.from_pretrained(tmp, **kwargs).eval()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _quiet_progress_bars:
    """Turn transformers' save/load progress bars off for the duration of a block."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self._hf = hf_logging
        self._was = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc):
        if self._was:
            self._hf.enable_progress_bar()
        return False


def replace_linears_with_bnb(model, precision: str, device, *, double_quant: bool = False,
                             threshold: float = DEFAULT_THRESHOLD,
                             skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Swap each ``nn.Linear`` (not in ``skip``) for its bitsandbytes layer, same weights.

    Returns the number of layers replaced.
    """
    import bitsandbytes as bnb
    import torch

    cdt = _torch_dtype(compute_dtype_name(device, precision))
    n = 0
    for name, module in list(model.named_modules()):
        if type(module) is not torch.nn.Linear or name.split(".")[-1] in skip:
            continue
        w = module.weight.data.detach().to("cpu")
        bias = module.bias is not None
        if precision == "int8":
            new = bnb.nn.Linear8bitLt(module.in_features, module.out_features, bias=bias,
                                      has_fp16_weights=False, threshold=threshold,
                                      device="meta")
            new.weight = bnb.nn.Int8Params(w.half(), requires_grad=False,
                                           has_fp16_weights=False)
            if bias:
                new.bias = torch.nn.Parameter(module.bias.data.detach().to("cpu").half(),
                                              requires_grad=False)
        else:
            new = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=bias,
                                    compute_dtype=cdt, compress_statistics=double_quant,
                                    quant_type=precision, device="meta")
            new.weight = bnb.nn.Params4bit(w.to(cdt), requires_grad=False, quant_type=precision,
                                           compress_statistics=double_quant)
            if bias:
                new.bias = torch.nn.Parameter(module.bias.data.detach().to("cpu", cdt),
                                              requires_grad=False)
        model.set_submodule(name, new.to(device.torch_device).eval())
        n += 1
    return n


def quantised_linears(model) -> list:
    """The bitsandbytes linear layers in ``model``."""
    import bitsandbytes as bnb

    return [m for m in model.modules() if isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit))]


def add_outlier_hooks(model, n_dims: int = OUTLIER_N_DIMS, scale: float = OUTLIER_SCALE) -> int:
    """Forward pre-hooks on every quantised linear setting ``n_dims`` fixed input dims
    (:func:`~qtsim.calibration.probes.bench.outlier_dims`) to +-``scale``. Returns hooks added."""
    import torch

    # One index tensor per (device, width), made once: building it from a Python list in
    # every call is a blocking host-to-device copy on CUDA (a stall per layer per token).
    dims_cache: dict[tuple[str, int], Any] = {}

    def hook(module, args):
        x = args[0]
        key = (str(x.device), int(x.shape[-1]))
        dims = dims_cache.get(key)
        if dims is None:
            dims = dims_cache[key] = torch.tensor(outlier_dims(x.shape[-1], n_dims),
                                                  device=x.device)
        x = x.clone()
        sel = x.index_select(-1, dims)
        x.index_copy_(-1, dims, torch.where(sel < 0, -scale, scale).to(x.dtype))
        return (x, *args[1:])

    layers = quantised_linears(model)
    for m in layers:
        m.register_forward_pre_hook(hook)
    return len(layers)


def _quantised_model(config: dict, precision: str, device, seed: int, double_quant: bool,
                     threshold: float, route: str):
    """(model, build attrs) of a bitsandbytes model: through transformers' from_pretrained
    where ``route`` allows it, else (or where it refuses) by module replacement."""
    model = None
    reason = "requested"
    if route == "auto" and importlib.util.find_spec("accelerate") is None:
        route = "module_replacement"
        reason = "accelerate is not installed (transformers needs it for bitsandbytes)"
    if route in ("auto", "from_pretrained"):
        try:
            with _quiet_progress_bars():
                model = _from_pretrained_route(config, precision, device, seed,
                                               double_quant, threshold)
            return model, {"build_route": "from_pretrained",
                           "build_route_reason": "transformers BitsAndBytesConfig"}
        except Exception as exc:  # noqa: BLE001 - any refusal: fall back, reason recorded
            if route == "from_pretrained" or is_oom(exc):
                raise
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            # the failed load's frames (and their CUDA tensors) die with ``exc``
        release_memory(device)
    model = _random_model(config, compute_dtype_name(device, precision), device, seed)
    replace_linears_with_bnb(model, precision, device, double_quant=double_quant,
                             threshold=threshold)
    return model, {"build_route": "module_replacement",
                   "build_route_reason": f"from_pretrained not used: {reason}"}


def _outlier_attrs(model, sixteen: bool) -> dict[str, Any]:
    """Outlier hooks on a quantised model's linears (none on a 16-bit one), as attrs."""
    return {"outlier_hooks": 0 if sixteen else add_outlier_hooks(model),
            "outlier_n_dims": OUTLIER_N_DIMS, "outlier_scale": OUTLIER_SCALE,
            "outlier_dims_rule": f"i * in_features // {OUTLIER_N_DIMS}, "
                                 f"i < {OUTLIER_N_DIMS}; set to +-{OUTLIER_SCALE:g}"}


def build_model(config: dict, precision: str, device, *, seed: int = 0,
                outlier_injection: bool = False, double_quant: bool = False,
                threshold: float = DEFAULT_THRESHOLD, route: str = "auto") -> BuiltModel:
    """A random-weight causal LM of architecture ``config`` in ``precision`` on ``device``.

    ``precision``: fp16 | bf16 (16-bit, ``from_config``), int8 (LLM.int8(), ``threshold``),
    nf4 | fp4 (4-bit, compute dtype bf16 on CPU / fp16 on CUDA, ``double_quant``).
    ``route``: "auto" (from_pretrained, falling back to module replacement),
    "from_pretrained" or "module_replacement".
    """
    precision = precision.lower()
    known = (*paths.SIXTEEN_BIT, "int8", *paths.FOUR_BIT_PRECISIONS)
    if precision not in known:
        raise QtsimError(f"unknown precision {precision!r} (known: {', '.join(known)})")
    four = precision in paths.FOUR_BIT_PRECISIONS
    sixteen = precision in paths.SIXTEEN_BIT
    attrs: dict[str, Any] = {
        "precision": precision,
        "compute_dtype": compute_dtype_name(device, precision),
        "llm_int8_threshold": threshold if precision == "int8" else None,
        "bnb_4bit_quant_type": precision if four else None,
        "bnb_4bit_use_double_quant": double_quant if four else None,
        "seed": seed,
        "outlier_injection": outlier_injection,
    }
    if sixteen:
        model = _random_model(config, precision, device, seed)
        attrs.update(build_route="from_config", build_route_reason="16-bit: no quantisation")
    else:
        model, route_attrs = _quantised_model(config, precision, device, seed, double_quant,
                                              threshold, route)
        attrs.update(route_attrs)
    attrs["n_quantised_linears"] = 0 if sixteen else len(quantised_linears(model))
    if outlier_injection:
        attrs.update(_outlier_attrs(model, sixteen))
    try:
        attrs["model_memory_bytes"] = int(model.get_memory_footprint())
    except Exception:  # noqa: BLE001 - informative only
        attrs["model_memory_bytes"] = None
    attrs["held_tensor_bytes"] = held_tensor_bytes(model)
    return BuiltModel(model, dict(config), precision, attrs, device)


# -- peak memory ----------------------------------------------------------------------------------
def _proc_status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            m = re.search(rf"^{key}:\s+(\d+)\s+kB", f.read(), re.MULTILINE)
        return int(m.group(1)) * 1024 if m else None
    except OSError:
        return None


def reset_peak_memory(device) -> str:
    """Reset the peak-memory mark; returns how peak memory will be labelled."""
    if device.backend == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device.index)
        return "torch.cuda.max_memory_allocated"
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # Linux >= 4.0: reset VmHWM to the current RSS
        return f"{PEAK_RSS_LABEL}, reset before the measured reps"
    except OSError:
        return f"{PEAK_RSS_LABEL}, since process start (reset not permitted)"


def peak_memory_bytes(device) -> int | None:
    """Peak memory since :func:`reset_peak_memory`, in bytes."""
    if device.backend == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated(device.index))
    return _proc_status_bytes("VmHWM")


# -- decoding -------------------------------------------------------------------------------------
def decode_point_id(model_name: str, precision: str, batch: int, prompt_len: int,
                    new_tokens: int, *, double_quant: bool = False,
                    threshold: float = DEFAULT_THRESHOLD, outlier_injection: bool = False) -> str:
    """``decode__<model>__<precision>[dq|_t0]__b<batch>__p<prompt>__k<K>[__oi]``."""
    tag = precision + ("dq" if double_quant and precision in ("nf4", "fp4") else "")
    if precision == "int8" and threshold == 0.0:
        tag += "_t0"
    parts = [model_name, tag, f"b{batch}", f"p{prompt_len}", f"k{new_tokens}"]
    if outlier_injection:
        parts.append("oi")
    return make_point_id("decode", *parts)


def _timed(fn, device) -> float:
    device.synchronize()
    t0 = time.perf_counter()
    fn()
    device.synchronize()
    return time.perf_counter() - t0


def _window(monitor, key: str, generate, k: int, iters: int):
    """One measured window of ``iters`` generates of ``k`` tokens; an exception (out of
    memory) drops the window so its key can be opened again by the next point."""
    monitor.begin_window(key)
    try:
        for _ in range(iters):
            generate(k)
    except BaseException:
        monitor.abort_window(key)
        raise
    return monitor.end_window(key)


def _warm_up(generate, device, batch: int, prompt_len: int, new_tokens: int, warmup: int):
    """Check generate's output shape, then time ``warmup`` unmeasured runs: (fastest decode of
    ``new_tokens``, fastest 1-token prefill), s."""
    out = generate(new_tokens)
    if tuple(out.shape) != (batch, prompt_len + new_tokens):
        raise MeasurementError(
            f"generate returned shape {tuple(out.shape)}, expected "
            f"{(batch, prompt_len + new_tokens)}"
        )
    out = None
    t_gen = _timed(lambda: generate(new_tokens), device)
    t_pre = _timed(lambda: generate(1), device)
    for _ in range(max(0, warmup - 1)):
        t_gen = min(t_gen, _timed(lambda: generate(new_tokens), device))
        t_pre = min(t_pre, _timed(lambda: generate(1), device))
    return t_gen, t_pre


def _measure_decode(generate, device, monitor, batch: int, prompt_len: int, new_tokens: int,
                    reps: int, warmup: int, min_window_s: float | None) -> dict:
    """Warm up, then ``reps`` measured decode and prefill windows; with the peak memory."""
    t_gen, t_pre = _warm_up(generate, device, batch, prompt_len, new_tokens, warmup)
    iters = iters_for(t_gen, min_window_s) if min_window_s else 1
    p_iters = iters_for(t_pre, min_window_s) if min_window_s else 1
    peak_kind = reset_peak_memory(device)
    gen_ms, pre_ms = [], []
    for r in range(reps):
        gen_ms.append(_window(monitor, f"decode#{r}", generate, new_tokens, iters))
        pre_ms.append(_window(monitor, f"prefill#{r}", generate, 1, p_iters))
    return {"gen_ms": gen_ms, "pre_ms": pre_ms, "iters": iters, "p_iters": p_iters,
            "peak_kind": peak_kind, "peak": peak_memory_bytes(device)}


def _decode_result(attrs: dict, m: dict, device, min_window_s, new_tokens: int) -> PointResult:
    """The measured windows of :func:`_measure_decode` as a raw-store point."""
    datasets, excl, notes = measurements_to_datasets(m["gen_ms"])
    pre_data, pre_excl, pre_notes = measurements_to_datasets(m["pre_ms"], prefix="prefill_",
                                                              duration_name="prefill_s")
    datasets.update(pre_data)
    if m["peak"] is not None:
        datasets["peak_memory_bytes"] = m["peak"]
    attrs.update(
        iters_per_rep=m["iters"], prefill_iters_per_rep=m["p_iters"], min_window_s=min_window_s,
        exclusions=excl + [e for e in pre_excl if e not in excl],
        notes=notes + [n for n in pre_notes if n not in notes],
        peak_memory_kind=m["peak_kind"], status="ok", finished=now_iso(),
        tokens_generated=int(new_tokens),
    )
    if device.backend == "cpu":
        attrs["rss_bytes"] = _proc_status_bytes("VmRSS")
    attrs.update(steady_memory(m["peak"], attrs.get("held_tensor_bytes"), device))
    return PointResult(attrs, datasets)


#: what ``steady_memory_bytes`` measures, per backend, and what validation compares it with
STEADY_MEMORY_KIND = {
    "cuda": "torch.cuda.max_memory_allocated during the measured decodes (reset after the model "
            "was built): quantised weights, KV cache and dequantisation workspace, no CUDA "
            "context; compared with predicted weights + KV cache + workspace",
    "cpu": "bytes of the tensors the built model holds (parameters, buffers and bitsandbytes' "
           "quantisation state: absmax, codebooks, int8 row scales); compared with the predicted "
           "weight bytes. A CPU process's RSS cannot tell a model of a few MB from the allocator's "
           "reuse of freed memory, so KV cache and workspace are not validated on a CPU",
}


def held_tensor_bytes(model) -> int:
    """Bytes of every tensor ``model`` holds: parameters and buffers (each storage once) and the
    quantisation state bitsandbytes keeps beside its weights (4-bit absmax and codebook, with
    double quantisation's second level; LLM.int8()'s row scales)."""
    seen, total = set(), 0

    def add(t) -> None:
        nonlocal total
        if t is None or not hasattr(t, "element_size"):
            return
        key = (t.data_ptr(), t.numel())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()

    for t in (*model.parameters(), *model.buffers()):
        add(t)
        qs = getattr(t, "quant_state", None)
        for st in (qs, getattr(qs, "state2", None)):
            add(getattr(st, "absmax", None))
            add(getattr(st, "code", None))
        add(getattr(t, "SCB", None))
    return total


def steady_memory(peak, held_bytes, device) -> dict:
    """``steady_memory_bytes`` (and its kind) of a decode: what the model itself holds while it
    decodes, the quantity a memory prediction means (:data:`STEADY_MEMORY_KIND`); {} where
    nothing was measured."""
    value = peak if device.backend == "cuda" else held_bytes
    if value is None:
        return {}
    return {"steady_memory_bytes": int(value),
            "steady_memory_kind": STEADY_MEMORY_KIND["cuda" if device.backend == "cuda" else "cpu"]}


def decode_run(built: BuiltModel, batch: int, prompt_len: int, new_tokens: int,
               reps: int = 3, warmup: int = 1, *, monitor: EnergyMonitor | None = None,
               seed: int = 0, min_window_s: float | None = None, model_name: str = "model",
               purpose: str = "calibration") -> PointResult:
    """Greedy-decode exactly ``new_tokens`` (K) tokens for ``batch`` random prompts of
    ``prompt_len`` tokens, ``reps`` measured windows after ``warmup`` unmeasured runs; and a
    1-new-token generate per rep for the prefill time.

    ``duration_s``/``prefill_s`` are window durations (s); a window holds ``iters_per_rep``
    (``prefill_iters_per_rep``) generates, 1 unless ``min_window_s`` asks for longer windows.
    """
    import torch

    device = built.device
    monitor = monitor or EnergyMonitor(device)
    model = built.model
    vocab = int(built.config.get("vocab_size") or model.config.vocab_size)
    attrs: dict[str, Any] = {
        **environment_attrs(device, monitor, purpose), **built.attrs, "kind": "decode",
        "model": model_name, "config_json": json.dumps(built.config, sort_keys=True),
        "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens, "reps": reps,
        "warmup": warmup, "prompt_seed": seed, "started": now_iso(),
    }
    gen = torch.Generator().manual_seed(seed)
    try:
        with torch.inference_mode():
            ids = torch.randint(1, vocab, (batch, prompt_len), generator=gen)
            ids = ids.to(device.torch_device)
            mask = torch.ones_like(ids)

            def generate(k: int):
                return model.generate(input_ids=ids, attention_mask=mask, min_new_tokens=k,
                                      max_new_tokens=k, do_sample=False, use_cache=True,
                                      pad_token_id=0)

            measured = _measure_decode(generate, device, monitor, batch, prompt_len, new_tokens,
                                       reps, warmup, min_window_s)
        ids = mask = None
    except Exception as exc:
        ids = mask = generate = None
        return skip_on_oom(exc, device, attrs, f"batch {batch}")
    return _decode_result(attrs, measured, device, min_window_s, new_tokens)


def cleanup(built: BuiltModel) -> None:
    """Drop the model and give memory back."""
    built.model = None
    release_memory(built.device)


__all__ = [
    "BuiltModel", "build_model", "decode_run", "decode_point_id", "hf_config", "bnb_config",
    "replace_linears_with_bnb", "add_outlier_hooks", "reset_peak_memory", "peak_memory_bytes",
    "cleanup",
]
