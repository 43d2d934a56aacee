"""Train the trust probe's small decoder (``qtsim trust train``): a ``LlamaForCausalLM`` from a
transformers config, a few million parameters, on pointer chasing (:mod:`qtsim.trust.tasks`)
on this CPU in minutes.

The recipe (:class:`Recipe`) and its seed fix everything: the model's initial weights
(``torch.manual_seed``), the training problems (the task family's ``train`` split, one seed per
step) and the thread count (CPU reductions depend on it). The loss is next-token cross-entropy
on the chain tokens only (teacher forcing: every hop of every chain is one example); the
prompt is context. AdamW with linear warm-up and cosine decay, gradients clipped.

The checkpoint is written with ``save_pretrained`` as safetensors in 16-bit (``save_dtype``,
fp16 by default, as LLM checkpoints ship; the probe quantizes from it as bitsandbytes does
from a Hugging Face checkpoint) next to ``recipe.json``: the recipe, the versions, the CPU,
the loss curve, the time taken, teacher-forced accuracy per hop on held-out problems and the
checkpoint's SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from qtsim.calibration.measure.conditions import package_version
from qtsim.calibration.measure.device import cpu_model_name
from qtsim.calibration.probes.decode import _quiet_progress_bars
from qtsim.errors import QtsimError, read_user_file
from qtsim.trust import tasks
from qtsim.trust.shipped import MODEL_NAME

WEIGHTS_FILE = "model.safetensors"
RECIPE_FILE = "recipe.json"


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the trained model (recorded in ``recipe.json``)."""

    n_nodes: int = 16  # map size: edges in every prompt
    train_hops: int = 8  # chain length trained on (every hop of it is a target)
    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    max_position_embeddings: int = 64
    steps: int = 130
    batch: int = 64
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    beta2: float = 0.98
    clip_norm: float = 1.0
    seed: int = 0
    threads: int = 1  # torch intra-op threads (results depend on it)
    save_dtype: str = "fp16"
    eval_problems: int = 512  # held-out problems for the teacher-forced check

    def __post_init__(self):
        tasks.check_args(self.n_nodes, self.train_hops)
        if tasks.prompt_length(self.n_nodes) + self.train_hops > self.max_position_embeddings:
            raise QtsimError("max_position_embeddings is shorter than a training sequence")
        for f in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "steps", "batch", "threads", "eval_problems"):
            if int(getattr(self, f)) < 1:
                raise QtsimError(f"recipe {f} must be >= 1, got {getattr(self, f)}")
        if self.hidden_size % self.num_attention_heads:
            raise QtsimError("hidden_size must be a multiple of num_attention_heads")
        if self.save_dtype not in ("fp16", "bf16", "fp32"):
            raise QtsimError(f"save_dtype must be fp16, bf16 or fp32, got {self.save_dtype!r}")

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def hf_config(recipe: Recipe):
    """The ``LlamaConfig`` of the recipe (vocabulary from the task family)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=tasks.vocab_size(recipe.n_nodes), hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size, num_hidden_layers=recipe.num_hidden_layers,
        num_attention_heads=recipe.num_attention_heads,
        num_key_value_heads=recipe.num_attention_heads,
        max_position_embeddings=recipe.max_position_embeddings, tie_word_embeddings=False,
        bos_token_id=tasks.BOS, eos_token_id=tasks.SEP, pad_token_id=tasks.PAD)


def _lr_factor(step: int, recipe: Recipe) -> float:
    warm = min(1.0, (step + 1) / max(1, recipe.warmup_steps))
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(step, recipe.steps) / recipe.steps))


def teacher_forced_accuracy(model, recipe: Recipe, seed: int | None = None) -> list[float]:
    """Per-hop next-token accuracy on held-out problems (``eval`` split), hops 1..train_hops."""
    import torch

    p = tasks.problems(recipe.eval_problems, recipe.train_hops, recipe.n_nodes,
                       seed=recipe.seed if seed is None else seed, split="eval")
    lp = tasks.prompt_length(recipe.n_nodes)
    was = model.training
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(p.sequences())
        pred = model(x[:, :-1]).logits[:, lp - 1:].argmax(-1).numpy()
    model.train(was)
    return [float(v) for v in (pred == p.chain_tokens).mean(axis=0)]


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fit(model, recipe: Recipe, progress, log_every: int) -> list[list]:
    """The training loop (AdamW, warm-up + cosine, clipped); returns the loss curve."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, recipe.beta2),
                            weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, recipe))
    lp = tasks.prompt_length(recipe.n_nodes)
    curve = []
    model.train()
    for step in range(recipe.steps):
        p = tasks.problems(recipe.batch, recipe.train_hops, recipe.n_nodes,
                           seed=recipe.seed * 1_000_003 + step, split="train")
        x = torch.from_numpy(p.sequences())
        labels = x.clone()
        labels[:, :lp] = -100  # the prompt is context; the chain is the target
        loss = model(input_ids=x, labels=labels).loss
        if not torch.isfinite(loss):
            raise QtsimError(f"training diverged at step {step} (loss {loss.item()}); lower lr")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % log_every == 0 or step == recipe.steps - 1:
            curve.append([step, round(float(loss.item()), 5)])
        if progress is not None:
            progress(1)
    return curve


def train(recipe: Recipe, out_dir, progress=None, log_every: int = 10) -> dict[str, Any]:
    """Train the model of ``recipe`` and write it to ``out_dir``; returns the ``recipe.json`` record.

    ``progress(n)``: called after each step (a progress bar).
    """
    import torch
    from transformers import LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        torch.manual_seed(recipe.seed)
        model = LlamaForCausalLM(hf_config(recipe))
        n_params = sum(p.numel() for p in model.parameters())
        wall0, cpu0 = time.perf_counter(), time.process_time()
        curve = _fit(model, recipe, progress, log_every)
        wall_s, cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
        tf_acc = teacher_forced_accuracy(model, recipe)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
        with _quiet_progress_bars():
            model.to(dtype[recipe.save_dtype]).save_pretrained(out, safe_serialization=True)
    finally:
        torch.set_num_threads(threads_before)
    record = {
        "model": out.resolve().name or MODEL_NAME,
        "task": "pointer-chase",
        "recipe": asdict(recipe),
        "n_params": int(n_params),
        "vocab_size": tasks.vocab_size(recipe.n_nodes),
        "loss_curve": {"columns": ["step", "loss"], "rows": curve},
        "train_wall_s": round(wall_s, 2),
        "train_cpu_s": round(cpu_s, 2),
        "teacher_forced_accuracy_per_hop": tf_acc,
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": sha256(out / WEIGHTS_FILE),
        "versions": {k: package_version(k) for k in ("torch", "transformers", "bitsandbytes")},
        "cpu": cpu_model_name(),
        "command": "qtsim trust train" + _recipe_options(recipe),
    }
    (out / RECIPE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _recipe_options(recipe: Recipe) -> str:
    """The non-default recipe fields as ``--recipe-set`` options (reproduces the run)."""
    default = Recipe()
    return "".join(f" --set {k}={v}" for k, v in asdict(recipe).items()
                   if getattr(default, k) != v)


def read_recipe(ckpt_dir) -> dict[str, Any]:
    """The ``recipe.json`` next to a checkpoint (one-line error when absent or corrupt)."""
    path = Path(ckpt_dir) / RECIPE_FILE
    text = read_user_file(path, QtsimError, "no recipe.json (not a `qtsim trust train` checkpoint)")
    try:
        rec = json.loads(text)
        Recipe.from_dict(rec["recipe"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise QtsimError(f"{path}: not a trust-probe recipe ({e})") from None
    return rec
