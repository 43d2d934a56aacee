"""Host calibration's measurement plan: the host/software part of a profile, measured on this
machine (no GPU).

DESIGN.md sec. 2a: host constants describe the CPU and the software stack (Python, torch,
transformers, bitsandbytes), not the accelerator. ``qtsim calibrate --host`` measures them by
greedy-decoding **tiny-width** random-weight models (hidden 64: the weights of a whole layer fit
in L1/L2, so the work each aten op does is negligible beside its dispatch) at three depths on
every kernel path (fp16, bf16, LLM.int8() at threshold 6 and 0, NF4 with and without double
quantisation) at batch 1 and 3, and records every decode to HDF5 like ``calibrate`` does
(:mod:`qtsim.calibration.measure.raw`, append-only, resumable); the host constants are then
fitted from them (:mod:`qtsim.calibration.fit.host_part`).
"""

from __future__ import annotations

from qtsim.calibration.probes.plan import DecodeSpec
from qtsim.model import paths

#: the tiny architecture the host decodes use (Qwen3 layout, as the CPU calibration's decodes)
HOST_CONFIG = {
    "model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
    "head_dim": 32, "vocab_size": 512, "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": False,
}
HOST_DEPTHS = (1, 4, 10)
HOST_BATCHES = (1, 3)
HOST_PRECISIONS = ("fp16", "bf16", "int8", "int8_t0", "nf4", "nf4dq")
HOST_NEW_TOKENS = 12
HOST_PROMPT = 8


def host_configs(depths=HOST_DEPTHS) -> list[tuple[str, dict]]:
    return [(f"host-qwen3-h64-{d}l", {**HOST_CONFIG, "num_hidden_layers": int(d)})
            for d in depths]


def host_plan(device, depths=HOST_DEPTHS, batches=HOST_BATCHES, precisions=HOST_PRECISIONS,
              reps: int = 3) -> list:
    """Decode points of the host calibration (grouped so each model is built once)."""
    plan = []
    for name, cfg in host_configs(depths):
        for p in precisions:
            base, dq, thr = paths.family_settings(p)
            for b in batches:
                plan.append(DecodeSpec(name, cfg, base, b, HOST_PROMPT, HOST_NEW_TOKENS, reps,
                                       double_quant=dq, threshold=thr))
    return plan


__all__ = ["HOST_CONFIG", "HOST_DEPTHS", "HOST_BATCHES", "HOST_PRECISIONS", "host_configs",
           "host_plan"]
