"""Architecture counts from a Hugging Face ``config.json`` (dense decoder-only transformers).

What one decoding step costs depends on the shapes, not the weight values, so everything the
physical model needs is counted here: parameters, the linear layers bitsandbytes quantizes (every
``nn.Linear`` inside the decoder layers; ``lm_head`` stays 16-bit), linear calls per token,
weight bytes per precision including quantisation scales, KV-cache bytes and FLOPs per token.

Families: Llama, Mistral, Qwen2, Qwen3, Falcon3 (Llama layout), Gemma 1/2/3-text. Mixture-of-
experts configs are refused (their per-token weight traffic depends on routing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from qtsim.errors import ArchitectureError, UnknownNameError, read_user_file, suggest
from qtsim.model.precision import get_precision

DENSE_TYPES = {"llama", "mistral", "qwen2", "qwen3", "falcon3", "gemma", "gemma2", "gemma3_text"}
#: the transformers model classes whose decode step the operation inventory traces
#: (``data/reference/op_inventory.json``); ``ArchCounts.model_class`` is an index into it
MODEL_CLASSES = ("llama", "mistral", "qwen2", "qwen3", "gemma2")
#: model types that decode with another traced class's layer (falcon3 ships as LlamaForCausalLM)
MODEL_CLASS_OF = {"falcon3": "llama", "falcon": "llama", "gemma": "gemma2", "gemma3_text": "gemma2"}


def model_class_code(model_type: str) -> int:
    """Index in :data:`MODEL_CLASSES` of the class a ``model_type`` decodes with."""
    mt = MODEL_CLASS_OF.get(model_type, model_type)
    return MODEL_CLASSES.index(mt) if mt in MODEL_CLASSES else 0
MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
NATIVE_BYTES = 2  # 16-bit weights, activations and KV cache
LINEARS_PER_LAYER = 7  # q, k, v, o, gate, up, down


@dataclass(frozen=True)
class Linear:
    name: str
    in_features: int
    out_features: int
    bias: bool

    @property
    def n_weights(self) -> int:
        return self.in_features * self.out_features


@dataclass(frozen=True)
class Architecture:
    """A dense decoder's shapes. Build with :func:`from_config` or :func:`load_architecture`."""

    name: str
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    qkv_bias: bool = False
    norms_per_layer: int = 2
    qk_norm: bool = False
    source: str = ""
    config: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def shape_key(self) -> tuple:
        """The facts that make two configs the same network (decoder class and every shape),
        whatever they are called: what published figures are matched by."""
        return (MODEL_CLASS_OF.get(self.model_type, self.model_type), self.hidden_size,
                self.intermediate_size, self.num_layers, self.num_heads, self.num_kv_heads,
                self.head_dim, self.vocab_size, self.tie_word_embeddings)

    def shape_text(self) -> str:
        """The shape facts in words, e.g. ``qwen3, 28 layers, hidden 1024``."""
        return f"{self.model_type}, {self.num_layers} layers, hidden {self.hidden_size}"

    # ---- per-layer structure -------------------------------------------------------------
    @property
    def layer_linears(self) -> tuple[Linear, ...]:
        h, q, kv, i = (self.hidden_size, self.num_heads * self.head_dim,
                       self.num_kv_heads * self.head_dim, self.intermediate_size)
        b = self.qkv_bias
        return (
            Linear("q_proj", h, q, b), Linear("k_proj", h, kv, b), Linear("v_proj", h, kv, b),
            Linear("o_proj", q, h, False), Linear("gate_proj", h, i, False),
            Linear("up_proj", h, i, False), Linear("down_proj", i, h, False),
        )

    @property
    def layer_norm_params(self) -> int:
        return self.norms_per_layer * self.hidden_size + (2 * self.head_dim if self.qk_norm else 0)

    # ---- counts --------------------------------------------------------------------------
    @property
    def n_linear_calls(self) -> int:
        """Quantizable linear calls per decoding step (lm_head excluded)."""
        return self.num_layers * LINEARS_PER_LAYER

    @property
    def n_quant_weights(self) -> int:
        """Weights in quantizable linears (what bitsandbytes converts)."""
        return self.num_layers * sum(lin.n_weights for lin in self.layer_linears)

    @property
    def n_bias_params(self) -> int:
        return self.num_layers * sum(lin.out_features for lin in self.layer_linears if lin.bias)

    @property
    def n_embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def n_lm_head_params(self) -> int:
        """Weights the lm_head matmul reads each step (the embedding matrix when tied)."""
        return self.vocab_size * self.hidden_size

    @property
    def n_norm_params(self) -> int:
        return self.num_layers * self.layer_norm_params + self.hidden_size

    @property
    def n_params(self) -> int:
        """Total parameters, tied embeddings counted once."""
        untied = 0 if self.tie_word_embeddings else self.n_lm_head_params
        return (self.n_embedding_params + untied + self.n_quant_weights + self.n_bias_params
                + self.n_norm_params)

    @property
    def int8_scale_bits(self) -> float:
        """LLM.int8() row-scale overhead, bits per quantized weight (one fp32 per output row)."""
        rows = self.num_layers * sum(lin.out_features for lin in self.layer_linears)
        return 32.0 * rows / self.n_quant_weights

    def bits_per_weight(self, precision: str, double_quant: bool = False) -> float:
        """Stored bits per quantizable weight at ``precision`` including scales."""
        p = get_precision(precision)
        if p.name == "int8":
            return 8.0 + self.int8_scale_bits
        return p.bits + p.scale_bits_per_weight(self.hidden_size, double_quant)

    def weight_bytes(self, precision: str, double_quant: bool = False) -> float:
        """Resident weight bytes: quantizable linears at ``precision``, the rest 16-bit."""
        quant = self.n_quant_weights * self.bits_per_weight(precision, double_quant) / 8.0
        return quant + NATIVE_BYTES * (self.n_params - self.n_quant_weights)

    def streamed_weight_bytes(self, precision: str, double_quant: bool = False) -> float:
        """Weight bytes read from memory in one decoding step (embedding gather excluded)."""
        quant = self.n_quant_weights * self.bits_per_weight(precision, double_quant) / 8.0
        native = self.n_lm_head_params + self.n_norm_params + self.n_bias_params
        return quant + NATIVE_BYTES * native

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per token per sequence (16-bit cache, all layers)."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * NATIVE_BYTES

    @property
    def attn_flops_per_token_per_ctx(self) -> int:
        """Attention FLOPs per generated token per token of context (QK^T and AV)."""
        return self.num_layers * 4 * self.num_heads * self.head_dim

    def flops_per_token(self, context: float = 0.0) -> float:
        """FLOPs to generate one token with ``context`` tokens already cached."""
        return 2.0 * (self.n_quant_weights + self.n_lm_head_params) + self.attn_flops_per_token_per_ctx * context

    def counts(self) -> ArchCounts:
        return ArchCounts.from_architecture(self)

    def scaled(self, n_params) -> ArchCounts:
        """A continuous family of this architecture scaled to ``n_params`` (see :func:`scale_counts`)."""
        return scale_counts(self, n_params)


@dataclass(frozen=True)
class ArchCounts:
    """The architecture counts the physical model consumes, as floats or broadcastable arrays.

    Model sizes nobody shipped (N* sweeps) are families of these, not :class:`Architecture`.
    """

    n_params: np.ndarray
    n_layers: np.ndarray
    n_linear_calls: np.ndarray
    n_quant_weights: np.ndarray
    n_native_streamed: np.ndarray  # lm_head + norms + biases, read every step at 16 bit
    n_native_resident: np.ndarray  # everything not quantized (embeddings, lm_head, norms, biases)
    int8_scale_bits: np.ndarray
    hidden_size: np.ndarray
    vocab_size: np.ndarray
    kv_bytes_per_token: np.ndarray
    attn_flops_per_token_per_ctx: np.ndarray
    max_linear_weights: np.ndarray  # largest single linear (dequantisation workspace)
    w_qo: np.ndarray  # weights of the q_proj (and of the o_proj) of one layer
    w_kv: np.ndarray  # weights of the k_proj (and of the v_proj) of one layer
    w_mlp: np.ndarray  # weights of the gate_proj (and up_proj, down_proj) of one layer
    model_class: np.ndarray  # index into MODEL_CLASSES (operation inventory of the decode step)

    @classmethod
    def from_architecture(cls, a: Architecture) -> ArchCounts:
        f = np.float64
        return cls(
            n_params=f(a.n_params), n_layers=f(a.num_layers), n_linear_calls=f(a.n_linear_calls),
            n_quant_weights=f(a.n_quant_weights),
            n_native_streamed=f(a.n_lm_head_params + a.n_norm_params + a.n_bias_params),
            n_native_resident=f(a.n_params - a.n_quant_weights),
            int8_scale_bits=f(a.int8_scale_bits), hidden_size=f(a.hidden_size),
            vocab_size=f(a.vocab_size), kv_bytes_per_token=f(a.kv_bytes_per_token),
            attn_flops_per_token_per_ctx=f(a.attn_flops_per_token_per_ctx),
            max_linear_weights=f(max(lin.n_weights for lin in a.layer_linears)),
            w_qo=f(a.hidden_size * a.num_heads * a.head_dim),
            w_kv=f(a.hidden_size * a.num_kv_heads * a.head_dim),
            w_mlp=f(a.hidden_size * a.intermediate_size),
            model_class=f(model_class_code(a.model_type)),
        )

    def bits_per_weight(self, precision: str, double_quant: bool = False):
        p = get_precision(precision)
        if p.name == "int8":
            return 8.0 + self.int8_scale_bits
        return p.bits + p.scale_bits_per_weight(1, double_quant) * np.ones_like(self.n_params)

    def weight_bytes(self, precision: str, double_quant: bool = False):
        return (self.n_quant_weights * self.bits_per_weight(precision, double_quant) / 8.0
                + NATIVE_BYTES * self.n_native_resident)

    def streamed_weight_bytes(self, precision: str, double_quant: bool = False):
        return (self.n_quant_weights * self.bits_per_weight(precision, double_quant) / 8.0
                + NATIVE_BYTES * self.n_native_streamed)


#: layers grow as width**DEPTH_EXPONENT along a synthetic family (dense configs we ship go from
#: 24-28 layers at hidden 896-1024 to 80 layers at hidden 8192: log-log slope about 0.55)
DEPTH_EXPONENT = 0.55


def scale_counts(a: Architecture, n_params, depth_exponent: float = DEPTH_EXPONENT) -> ArchCounts:
    """Counts for a synthetic model of ``n_params`` parameters in the family of ``a``.

    Width (hidden, intermediate, heads, KV heads) scales by ``s`` and depth by
    ``s ** depth_exponent``, head_dim and vocabulary fixed; ``s`` solved so the total parameter
    count equals ``n_params``. Counts are continuous (fractional layers and heads): a planner's
    curve, not a buildable model. Vectorised over ``n_params``.
    """
    target = np.asarray(n_params, dtype=float)
    if np.any(~np.isfinite(target)) or np.any(target <= 0):
        raise ArchitectureError("model sizes to scale to must be positive and finite")

    def parts(s):
        h = a.hidden_size * s
        layers = a.num_layers * s ** depth_exponent
        q = a.num_heads * s * a.head_dim
        kv = a.num_kv_heads * s * a.head_dim
        inter = a.intermediate_size * s
        per_layer = h * q + 2 * h * kv + q * h + 3 * h * inter
        quant = layers * per_layer
        bias = layers * (q + 2 * kv) if a.qkv_bias else 0.0 * s
        norms = layers * (a.norms_per_layer * h + (2 * a.head_dim if a.qk_norm else 0)) + h
        emb = a.vocab_size * h
        total = emb * (1 if a.tie_word_embeddings else 2) + quant + bias + norms
        return h, layers, q, kv, inter, quant, bias, norms, emb, total

    lo = np.full_like(target, 1e-3)
    hi = np.full_like(target, 1e3)
    for _ in range(80):  # bisection on log s, vectorised; total is increasing in s
        mid = np.sqrt(lo * hi)
        too_big = parts(mid)[-1] > target
        new_hi, new_lo = np.where(too_big, mid, hi), np.where(too_big, lo, mid)
        if np.array_equal(new_hi, hi) and np.array_equal(new_lo, lo):
            break  # converged to adjacent floats: every further step repeats this one
        hi, lo = new_hi, new_lo
    s = np.sqrt(lo * hi)
    h, layers, q, kv, inter, quant, bias, norms, emb, total = parts(s)
    rows = layers * (q + 2 * kv + h + 2 * inter + h)
    return ArchCounts(
        n_params=total, n_layers=layers, n_linear_calls=layers * LINEARS_PER_LAYER,
        n_quant_weights=quant, n_native_streamed=emb + norms + bias,
        n_native_resident=total - quant, int8_scale_bits=32.0 * rows / quant, hidden_size=h,
        vocab_size=np.full_like(s, a.vocab_size),
        kv_bytes_per_token=layers * 2 * kv * NATIVE_BYTES,
        attn_flops_per_token_per_ctx=layers * 4 * q,
        max_linear_weights=np.maximum(h * inter, h * q),
        w_qo=h * q, w_kv=h * kv, w_mlp=h * inter,
        model_class=np.full_like(s, model_class_code(a.model_type)),
    )


def _require(cfg: dict, key: str, where: str) -> int:
    if key not in cfg or cfg[key] is None:
        raise ArchitectureError(f"{where}: config has no {key!r}")
    val = cfg[key]
    if not isinstance(val, int) or isinstance(val, bool) or val <= 0:
        raise ArchitectureError(f"{where}: {key} must be a positive integer, got {val!r}")
    return val


def from_config(cfg: dict, name: str | None = None, source: str = "") -> Architecture:
    """Count a Hugging Face config dict. Refuses mixture-of-experts and unknown families."""
    where = name or cfg.get("_qtsim_name") or "config"
    if not isinstance(cfg, dict):
        raise ArchitectureError(f"{where}: config.json must hold a JSON object")
    if "text_config" in cfg and "hidden_size" not in cfg:
        cfg = {**cfg["text_config"], "_qtsim_name": cfg.get("_qtsim_name")}
    model_type = str(cfg.get("model_type", "")).lower()
    qc = cfg.get("quantization_config")
    if qc:
        method = str(qc.get("quant_method", "unknown") if isinstance(qc, dict) else qc)
        raise ArchitectureError(
            f"{where}: this checkpoint is already quantized (quantization_config: {method}); "
            "qtsim predicts bitsandbytes quantization of a 16-bit checkpoint, so give the "
            "base model's config.json (or delete quantization_config)")
    if any(cfg.get(k) for k in MOE_KEYS) or "moe" in model_type:
        raise ArchitectureError(
            f"{where}: mixture-of-experts models ({model_type or 'MoE'}) are not supported yet: "
            "their per-token weight traffic depends on expert routing")
    if model_type not in DENSE_TYPES:
        raise ArchitectureError(
            f"{where}: model_type {model_type!r} is not a supported dense decoder "
            f"({', '.join(sorted(DENSE_TYPES))})")
    hidden = _require(cfg, "hidden_size", where)
    heads = _require(cfg, "num_attention_heads", where)
    if not cfg.get("head_dim") and hidden % heads:
        raise ArchitectureError(f"{where}: hidden_size {hidden} is not a multiple of "
                                f"num_attention_heads {heads} and the config gives no head_dim")
    head_dim = cfg.get("head_dim") or hidden // heads
    if not isinstance(head_dim, int) or head_dim <= 0:
        raise ArchitectureError(f"{where}: head_dim must be a positive integer, got {head_dim!r}")
    kv = cfg.get("num_key_value_heads") or heads
    if not isinstance(kv, int) or isinstance(kv, bool) or kv <= 0:
        raise ArchitectureError(f"{where}: num_key_value_heads must be a positive integer, "
                                f"got {kv!r}")
    if heads % kv:
        raise ArchitectureError(
            f"{where}: num_key_value_heads {kv} does not divide num_attention_heads {heads}: "
            "grouped-query attention shares each key/value head among an equal number of query "
            "heads, so no such model can be built")
    qkv_bias = bool(cfg.get("attention_bias", False)) or model_type == "qwen2"
    norms = 4 if model_type in ("gemma2", "gemma3_text") else 2
    return Architecture(
        name=name or cfg.get("_qtsim_name") or model_type,
        model_type=model_type,
        hidden_size=hidden,
        intermediate_size=_require(cfg, "intermediate_size", where),
        num_layers=_require(cfg, "num_hidden_layers", where),
        num_heads=heads,
        num_kv_heads=int(kv),
        head_dim=int(head_dim),
        vocab_size=_require(cfg, "vocab_size", where),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", model_type.startswith("gemma"))),
        qkv_bias=qkv_bias,
        norms_per_layer=norms,
        qk_norm=model_type in ("qwen3", "gemma3_text"),
        source=source or cfg.get("_qtsim_source", ""),
        config={k: v for k, v in cfg.items() if not k.startswith("_qtsim")},
    )


def shipped_models() -> list[str]:
    files = resources.files("qtsim.data.architectures")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".json"))


def _read_json(text: str, where: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ArchitectureError(f"{where}: not valid JSON ({e.msg} at line {e.lineno})") from None


def split_model_name(text: str) -> tuple[str | None, str]:
    """``NAME=PATH`` -> (NAME, PATH); anything else (a name, or a path that exists) -> (None, text)."""
    if "=" in text and not Path(text).exists():
        name, _, rest = text.partition("=")
        if name.strip() and rest.strip():
            return name.strip(), rest.strip()
        raise ArchitectureError(f"{text!r}: give NAME=PATH (a name, '=', a config path or model name)")
    return None, text


def config_display_name(path: str | Path, config: dict) -> str:
    """The name a config file's model goes by (point ids, tables, validation reports).

    Its ``_qtsim_name`` when set; else the file's stem (``d/a.json`` -> ``a``); the folder's name
    only for a file called ``config.json`` (``models/llama/config.json`` -> ``llama``, the
    Hugging Face layout), so two configs in one folder never share a name.
    """
    name = config.get("_qtsim_name") if isinstance(config, dict) else None
    if name:
        return str(name)
    p = Path(path)
    if p.name == "config.json":
        folder = p.resolve().parent.name
        return folder or p.stem
    return p.stem


def load_config(name_or_path: str) -> tuple[dict, str, str]:
    """(config dict, name, source) for a shipped model name or a path to a config.json.

    ``NAME=PATH`` names the model NAME whatever its file says (see :func:`config_display_name`).
    """
    given, name_or_path = split_model_name(name_or_path)
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ArchitectureError(f"{name_or_path}: no such config.json")
        cfg = _read_json(read_user_file(path, ArchitectureError), str(path))
        if not isinstance(cfg, dict):
            raise ArchitectureError(f"{path}: a config.json must hold a JSON object "
                                    f"(found a JSON {type(cfg).__name__})")
        return cfg, given or config_display_name(path, cfg), str(path)
    key = name_or_path.lower()
    names = shipped_models()
    if key not in names:
        raise UnknownNameError(f"unknown model {name_or_path!r}{suggest(name_or_path, names)}; "
                               "or pass a path to a config.json")
    res = resources.files("qtsim.data.architectures") / f"{key}.json"
    cfg = _read_json(res.read_text(), f"{key}.json")
    return cfg, given or key, cfg.get("_qtsim_source", f"shipped {key}.json")


def load_architecture(name_or_path: str) -> Architecture:
    """A shipped model by name (``qtsim models``) or any Hugging Face config.json path."""
    cfg, name, source = load_config(name_or_path)
    return from_config(cfg, name=name, source=source)


def check_context(arch: Architecture, prompt_tokens: int, new_tokens: int) -> None:
    """Refuse a query longer than the model's ``max_position_embeddings`` (when it has one):
    nothing past it is a prediction of anything the model can run."""
    mpe = arch.config.get("max_position_embeddings") if isinstance(arch.config, dict) else None
    if isinstance(mpe, int) and not isinstance(mpe, bool) and mpe > 0 \
            and prompt_tokens + new_tokens > mpe:
        raise ArchitectureError(
            f"{arch.name}: a {prompt_tokens}-token prompt plus {new_tokens} new tokens = "
            f"{prompt_tokens + new_tokens} tokens exceeds its max_position_embeddings ({mpe})")
