"""The trust probe's measurement (``qtsim trust probe``): a trained pointer-chasing checkpoint
(:mod:`qtsim.calibration.trust.hops_train`) loaded at each precision and bitsandbytes setting, made
to chase pointers k = 1..K hops by greedy decoding on this CPU, its chains scored exactly.

Settings (:data:`SETTINGS`; names are qtsim's kernel-path families, :mod:`qtsim.model.paths`,
plus ``fp32``):

- ``fp32``: the weights as shipped (16-bit) computed in fp32: the measurement's reference;
- ``fp16``, ``bf16``: the 16-bit references of the trap (``--trust`` reads T_SI against fp16);
- ``int8``: LLM.int8(), ``llm_int8_threshold`` 6 (outlier feature columns in fp16);
- ``int8_t0``: LLM.int8() with threshold 0 (every column in int8, no decomposition);
- ``nf4``, ``nf4dq``: 4-bit NormalFloat, blocksize 64, without and with double quantisation,
  ``bnb_4bit_compute_dtype`` fp16 (``compute_dtype``).

Quantized models load the honest way, ``from_pretrained(checkpoint,
quantization_config=BitsAndBytesConfig(...), dtype=fp16)``: every ``nn.Linear`` but ``lm_head``
becomes a bitsandbytes layer, the embeddings and norms stay fp16, the model is in eval mode
(bitsandbytes 0.50's CPU LLM.int8() takes a dequantize-and-matmul route in training mode that
ignores the threshold; in eval mode it quantizes activations row-wise and splits outlier
columns, as on CUDA).

Decoding is greedy with a KV cache (one forward pass per hop after the prompt), the argmax over
the whole vocabulary (a token that is not a node counts as a wrong hop). Each hop count k has
its own problems (``test`` split of the task family, seed ``seed``), so accuracies at different
k are independent samples. The Theorem 4.5 check decodes the same problems at batch 1 and batch
8 and records both accuracies and how many chains are identical.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from qtsim.calibration.measure.conditions import package_version
from qtsim.calibration.measure.device import cpu_model_name
from qtsim.calibration.probes.decode import _quiet_progress_bars, quantised_linears
from qtsim.calibration.trust.hops_train import WEIGHTS_FILE, read_recipe, sha256
from qtsim.errors import QtsimError
from qtsim.trust import tasks

#: setting -> (description, torch dtype of the non-quantized parts, BitsAndBytesConfig kwargs)
SETTINGS: dict[str, tuple[str, str, dict | None]] = {
    "fp32": ("fp32 (measurement reference)", "fp32", None),
    "fp16": ("fp16", "fp16", None),
    "bf16": ("bf16", "bf16", None),
    "int8": ("LLM.int8(), threshold 6", "fp16",
             {"load_in_8bit": True, "llm_int8_threshold": 6.0}),
    "int8_t0": ("LLM.int8(), threshold 0", "fp16",
                {"load_in_8bit": True, "llm_int8_threshold": 0.0}),
    "nf4": ("NF4", "fp16", {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                            "bnb_4bit_use_double_quant": False}),
    "nf4dq": ("NF4 + double quant", "fp16", {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                             "bnb_4bit_use_double_quant": True}),
}
DEFAULT_SETTINGS = tuple(SETTINGS)
COMPUTE_DTYPES = ("fp16", "bf16", "fp32")


def _dtype(name: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


def check_settings(settings) -> list[str]:
    """The settings named, checked (one-line error for an unknown one)."""
    out = []
    for s in settings:
        s = str(s).strip().lower()
        if s not in SETTINGS:
            raise QtsimError(f"unknown setting {s!r} (known: {', '.join(SETTINGS)})")
        out.append(s)
    if not out:
        raise QtsimError("no setting to probe")
    return out


def load_model(ckpt_dir, setting: str, compute_dtype: str = "fp16"):
    """(model, attrs): the checkpoint at ``setting``, in eval mode on the CPU."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    desc, dtype, bnb_kwargs = SETTINGS[setting]
    kwargs: dict[str, Any] = {"dtype": _dtype(dtype)}
    attrs: dict[str, Any] = {"setting": setting, "description": desc, "dtype": dtype}
    if bnb_kwargs is not None:
        q = dict(bnb_kwargs)
        if q.get("load_in_4bit"):
            q["bnb_4bit_compute_dtype"] = _dtype(compute_dtype)
            attrs["bnb_4bit_compute_dtype"] = compute_dtype
        kwargs["quantization_config"] = BitsAndBytesConfig(**q)
        attrs["bitsandbytes_config"] = {k: v for k, v in bnb_kwargs.items()}
    with _quiet_progress_bars():
        model = AutoModelForCausalLM.from_pretrained(str(ckpt_dir), **kwargs).eval()
    attrs["n_quantised_linears"] = len(quantised_linears(model)) if bnb_kwargs else 0
    attrs["build_route"] = "from_pretrained" + (" + BitsAndBytesConfig" if bnb_kwargs else "")
    return model, attrs


def greedy_chains(model, prompts: np.ndarray, hops: int, batch: int) -> np.ndarray:
    """Greedy decoding of ``hops`` tokens after each prompt, ``batch`` prompts at a time, with a
    KV cache: the predicted chains as node indices (n, hops), -1 where a token is not a node."""
    import torch

    out = np.empty((len(prompts), hops), dtype=np.int64)
    n_nodes = prompts.shape[1] - tasks.prompt_length(0)  # prompts are n_nodes + 3 tokens
    with torch.inference_mode():
        for lo in range(0, len(prompts), batch):
            x = torch.from_numpy(np.ascontiguousarray(prompts[lo:lo + batch]))
            res = model(input_ids=x, use_cache=True)
            toks = [res.logits[:, -1].argmax(-1)]
            for _ in range(hops - 1):
                res = model(input_ids=toks[-1][:, None], use_cache=True, **_cache_kwargs(res))
                toks.append(res.logits[:, -1].argmax(-1))
            out[lo:lo + len(x)] = tasks.token_node(torch.stack(toks, 1).numpy(), n_nodes)
    return out


def _cache_kwargs(res) -> dict[str, Any]:
    """The KV cache of a forward's output, as the next forward's keyword (transformers 5 calls
    it ``cache``, 4.x ``past_key_values``)."""
    if getattr(res, "cache", None) is not None:
        return {"cache": res.cache}
    return {"past_key_values": res.past_key_values}


def outlier_share(model, prompts: np.ndarray, threshold: float = 6.0) -> float | None:
    """Mean share of input feature columns with some |x| >= ``threshold`` over the quantized
    linears' inputs in one prefill of ``prompts``: what LLM.int8() at that threshold keeps in
    fp16 (None without bitsandbytes layers)."""
    import torch

    layers = quantised_linears(model)
    if not layers:
        return None
    shares: list[float] = []

    def hook(_module, args):
        x = args[0].detach().float().reshape(-1, args[0].shape[-1])
        shares.append(float((x.abs() >= threshold).any(dim=0).float().mean()))

    handles = [m.register_forward_pre_hook(hook) for m in layers]
    try:
        with torch.inference_mode():
            model(input_ids=torch.from_numpy(np.ascontiguousarray(prompts)))
    finally:
        for h in handles:
            h.remove()
    return float(np.mean(shares))


def probe(ckpt_dir, settings=DEFAULT_SETTINGS, max_hops: int = 8, n_per_hop: int = 1000,
          seed: int = 0, batch: int = 250, check_batches=(1, 8), check_problems: int = 96,
          check_hops: int | None = None, threads: int = 1, compute_dtype: str = "fp16",
          progress=None) -> dict[str, Any]:
    """Measure accuracy per hop count for each setting; returns the probe record (JSON-ready).

    ``progress(n)`` is called once per (setting, k) decoded and once per setting's batch check.
    """
    import torch

    ckpt = Path(ckpt_dir)
    rec = read_recipe(ckpt)
    n_nodes = int(rec["recipe"]["n_nodes"])
    settings = check_settings(settings)
    if compute_dtype not in COMPUTE_DTYPES:
        raise QtsimError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}")
    tasks.check_args(n_nodes, max_hops, n_per_hop)
    check_hops = max_hops if check_hops is None else int(check_hops)
    tasks.check_args(n_nodes, check_hops, check_problems)
    if batch < 1 or any(b < 1 for b in check_batches):
        raise QtsimError("batch sizes must be >= 1")
    hops = list(range(1, max_hops + 1))
    probs = {k: tasks.problems(n_per_hop, k, n_nodes, seed=seed, split="test") for k in hops}
    check = tasks.problems(check_problems, check_hops, n_nodes, seed=seed, split="check")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    wall0 = time.perf_counter()
    try:
        out = {s: _probe_setting(ckpt, s, compute_dtype, probs, check, batch, check_batches,
                                 progress) for s in settings}
    finally:
        torch.set_num_threads(threads_before)
    return {
        "kind": "qtsim trust probe",
        "model": rec.get("model", ckpt.name),
        "task": {"family": "pointer-chase", "n_nodes": n_nodes, "split": "test", "seed": seed,
                 "check_split": "check", "format": "one edge token per map entry; greedy "
                 "chain of thought, one node token per hop"},
        "checkpoint": {"path": str(ckpt), "weights_sha256": sha256(ckpt / WEIGHTS_FILE),
                       "n_params": rec.get("n_params"), "recipe": rec.get("recipe"),
                       "train_command": rec.get("command")},
        "max_hops": max_hops, "n_per_hop": n_per_hop, "batch": batch,
        "check": {"batches": list(check_batches), "hops": check_hops,
                  "problems": check_problems},
        "settings": out,
        "environment": {"cpu": cpu_model_name(), "threads": threads,
                        "versions": {k: package_version(k) for k in
                                     ("torch", "transformers", "bitsandbytes", "accelerate")},
                        "compute_dtype_4bit": compute_dtype},
        "wall_s": round(time.perf_counter() - wall0, 2),
    }


def _probe_setting(ckpt, setting: str, compute_dtype: str, probs: dict, check, batch: int,
                   check_batches, progress) -> dict[str, Any]:
    """One setting: load it, decode every hop count's problems, the batch check, outliers."""
    t0 = time.perf_counter()
    model, attrs = load_model(ckpt, setting, compute_dtype)
    res: dict[str, Any] = {**attrs, "hops": list(probs), "n": [], "answer_correct": [],
                           "chain_correct": [], "hops_right_hist": [], "chains": []}
    for k, p in probs.items():
        pred = greedy_chains(model, p.prompts, k, batch)
        score = tasks.chain_accuracy(pred, p.chains)
        res["n"].append(int(len(pred)))
        res["answer_correct"].append(int(score["answer"].sum()))
        res["chain_correct"].append(int(score["chain"].sum()))
        res["hops_right_hist"].append(np.bincount(score["hops_right"], minlength=k + 1).tolist())
        res["chains"].append(tasks.encode_chains(pred))
        if progress is not None:
            progress(1)
    res["batch_check"] = _batch_check(model, check, check_batches)
    if progress is not None:
        progress(1)
    if setting.startswith("int8"):
        res["outlier_column_share"] = outlier_share(model, probs[max(probs)].prompts[:64])
    res["wall_s"] = round(time.perf_counter() - t0, 2)
    return res


def _batch_check(model, check: tasks.Problems, batches) -> dict[str, Any]:
    """The same problems decoded at each batch size: answers right, and chains identical to
    those decoded at the first batch size."""
    preds = {b: greedy_chains(model, check.prompts, check.hops, b) for b in batches}
    first = preds[batches[0]]
    return {str(b): {"n": int(len(p)),
                     "answer_correct": int(tasks.chain_accuracy(p, check.chains)["answer"].sum()),
                     "identical_chains": int((p == first).all(axis=1).sum())}
            for b, p in preds.items()}
