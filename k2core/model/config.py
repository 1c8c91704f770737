"""K2 model configuration: fields mirror Hugging Face's DeepSeek-V3 / Kimi-K2 ``config.json``.

K2_REFERENCE.md §2 (K2 Table 2). Presets are code; ``ModelConfig.preset(name, **overrides)``
builds one, ``to_hf()`` / ``from_hf()`` convert to and from ``config.json``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from k2core.errors import ConfigError
from k2core.section import Section


class RopeScaling(Section):
    """YaRN context extension (DeepSeek-V3 / K2 long-context configs)."""

    type: Literal["yarn"] = "yarn"
    factor: float = Field(32.0, gt=1.0)
    original_max_position_embeddings: int = Field(4096, ge=1)
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 1.0


class ModelConfig(Section):
    """A K2 (DeepSeek-V3 architecture) model. Field names are Hugging Face's."""

    vocab_size: int = Field(32_000, ge=2)
    hidden_size: int = Field(1024, ge=8)
    intermediate_size: int = Field(2816, ge=1, description="dense MLP width (first_k_dense_replace layers)")
    moe_intermediate_size: int = Field(512, ge=1, description="width of each routed / shared expert")
    num_hidden_layers: int = Field(8, ge=1)
    num_attention_heads: int = Field(8, ge=1)
    q_lora_rank: int | None = Field(384, ge=1, description="None = full-rank q_proj")
    kv_lora_rank: int = Field(256, ge=1)
    qk_nope_head_dim: int = Field(128, ge=1)
    qk_rope_head_dim: int = Field(64, ge=2, multiple_of=2)
    v_head_dim: int = Field(128, ge=1)
    n_routed_experts: int = Field(64, ge=1)
    n_shared_experts: int = Field(1, ge=0)
    num_experts_per_tok: int = Field(8, ge=1)
    n_group: int = Field(1, ge=1, description="expert groups for group-limited routing (K2: 1)")
    topk_group: int = Field(1, ge=1)
    first_k_dense_replace: int = Field(1, ge=0, description="the first k layers use a dense MLP")
    routed_scaling_factor: float = Field(2.827, gt=0)
    norm_topk_prob: bool = True
    rms_norm_eps: float = Field(1e-6, gt=0)
    rope_theta: float = Field(50_000.0, gt=0)
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = Field(4096, ge=1)
    initializer_range: float = Field(0.02, gt=0)
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 0
    eos_token_id: int | None = 1
    pad_token_id: int | None = None
    # k2 training knobs (not read by transformers / vLLM; kept in config.json under "k2")
    bias_update_speed: float = Field(1e-3, ge=0, description="aux-loss-free balancing γ (DeepSeek-V3 §2.1.2)")
    seq_aux_loss_alpha: float = Field(0.0, ge=0, description="sequence-wise balance loss weight (DeepSeek: 1e-4)")

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.num_experts_per_tok > self.n_routed_experts:
            raise ValueError(f"num_experts_per_tok={self.num_experts_per_tok} exceeds "
                             f"n_routed_experts={self.n_routed_experts}")
        if self.n_routed_experts % self.n_group:
            raise ValueError(f"n_routed_experts={self.n_routed_experts} is not divisible by n_group={self.n_group}")
        if self.topk_group > self.n_group:
            raise ValueError(f"topk_group={self.topk_group} exceeds n_group={self.n_group}")
        return self

    # ------------------------------------------------------------------ derived sizes
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def softmax_scale(self) -> float:
        """(d_nope + d_rope)^-0.5, times YaRN's mscale² when YaRN is on (DeepSeek-V3)."""
        scale = self.qk_head_dim ** -0.5
        rs = self.rope_scaling
        if rs is not None and rs.mscale_all_dim:
            m = yarn_mscale(rs.factor, rs.mscale_all_dim)
            scale *= m * m
        return scale

    def is_moe_layer(self, i: int) -> bool:
        return i >= self.first_k_dense_replace and self.n_routed_experts > 0

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose from {', '.join(PRESETS)}")
        try:
            return cls(**{**PRESETS[name], **overrides})
        except ValueError as e:
            raise ConfigError(f"model preset {name!r} with {overrides}: {e}") from None

    # ------------------------------------------------------------------ Hugging Face config.json
    def to_hf(self) -> dict[str, Any]:
        """The ``config.json`` transformers' DeepseekV3ForCausalLM and vLLM load."""
        d = self.model_dump(exclude={"bias_update_speed", "seq_aux_loss_alpha", "rope_scaling"})
        d.update(
            model_type="deepseek_v3",
            architectures=["DeepseekV3ForCausalLM"],
            num_key_value_heads=self.num_attention_heads,
            hidden_act="silu",
            topk_method="noaux_tc",          # vLLM needs these two to load the routing bias
            scoring_func="sigmoid",
            num_nextn_predict_layers=0,
            rope_interleave=True,             # DeepSeek's interleaved rotary layout
            attention_bias=False,
            attention_dropout=0.0,
            torch_dtype="bfloat16",
            use_cache=True,
            rope_scaling=self.rope_scaling.model_dump() if self.rope_scaling else None,
            k2={"bias_update_speed": self.bias_update_speed, "seq_aux_loss_alpha": self.seq_aux_loss_alpha},
        )
        return d

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> "ModelConfig":
        if d.get("model_type") not in ("deepseek_v3", "kimi_k2"):
            raise ConfigError(f"config.json has model_type={d.get('model_type')!r}; expected 'deepseek_v3'")
        if d.get("num_key_value_heads", d["num_attention_heads"]) != d["num_attention_heads"]:
            raise ConfigError("num_key_value_heads must equal num_attention_heads for MLA")
        fields = set(cls.model_fields) - {"rope_scaling", "rope_theta"}
        kw = {k: d[k] for k in fields if k in d}
        rope = d.get("rope_parameters") or {}
        kw["rope_theta"] = d.get("rope_theta", rope.get("rope_theta", 10_000.0))
        rs = d.get("rope_scaling") or (rope if rope.get("rope_type") == "yarn" else None)
        if rs and (rs.get("type") or rs.get("rope_type")) == "yarn":
            kw["rope_scaling"] = RopeScaling(**{k: rs[k] for k in RopeScaling.model_fields if k in rs and k != "type"})
        elif rs and (rs.get("type") or rs.get("rope_type")) not in (None, "default"):
            raise ConfigError(f"rope scaling {rs!r} is not supported (only yarn)")
        kw.update(d.get("k2") or {})
        return cls(**kw)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_hf(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        return cls.from_hf(json.loads(Path(path).read_text()))


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


# ---------------------------------------------------------------------------- presets
PRESETS: dict[str, dict[str, Any]] = {
    # trains on a 2-core CPU in minutes: 2 layers (1 dense + 1 MoE), 8 experts of 64
    "tiny": dict(vocab_size=4096, hidden_size=128, intermediate_size=384, moe_intermediate_size=64,
                 num_hidden_layers=2, num_attention_heads=4, q_lora_rank=64, kv_lora_rank=32,
                 qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=8,
                 num_experts_per_tok=2, max_position_embeddings=1024),
    # the embedded default's model (`make demo`, 2 CPU cores): 3 layers (1 dense + 2 MoE), 192 wide, 6
    # heads — the smallest shape measured to learn exact tool calls in SFT (tiny's 2 layers, 4 heads
    # reach the right tool names but copy no argument value: docs/benchmarks.md, "SFT that teaches")
    "demo": dict(vocab_size=4096, hidden_size=192, intermediate_size=576, moe_intermediate_size=96,
                 num_hidden_layers=3, num_attention_heads=6, q_lora_rank=64, kv_lora_rank=32,
                 qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=8,
                 num_experts_per_tok=2, max_position_embeddings=4096),
    # one H200: ~0.9B total / ~0.2B active
    "h200": dict(vocab_size=32_000, hidden_size=1024, intermediate_size=2816, moe_intermediate_size=512,
                 num_hidden_layers=8, num_attention_heads=8, q_lora_rank=384, kv_lora_rank=256,
                 qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=64,
                 num_experts_per_tok=8, max_position_embeddings=4096),
    # the published Kimi K2 (moonshotai/Kimi-K2-Base config.json)
    "k2-1t": dict(vocab_size=163_840, hidden_size=7168, intermediate_size=18_432, moe_intermediate_size=2048,
                  num_hidden_layers=61, num_attention_heads=64, q_lora_rank=1536, kv_lora_rank=512,
                  qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=384,
                  n_shared_experts=1, num_experts_per_tok=8, n_group=1, topk_group=1,
                  first_k_dense_replace=1, routed_scaling_factor=2.827, rope_theta=50_000.0,
                  max_position_embeddings=131_072, bos_token_id=163_584, eos_token_id=163_585,
                  rope_scaling=dict(factor=32.0, original_max_position_embeddings=4096, beta_fast=1.0,
                                    beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0)),
}
# tiny, but the latent + rotary key is 512 + 64: the only MLA shape vLLM's CPU kernel serves
PRESETS["tiny-vllm"] = dict(PRESETS["tiny"], hidden_size=256, intermediate_size=512, q_lora_rank=128,
                            kv_lora_rank=512, qk_nope_head_dim=64, qk_rope_head_dim=64, v_head_dim=64)


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """Total and activated (per token) parameter counts, from the shapes alone.

    Activated = everything but the routed experts not chosen: embeddings and lm_head included,
    as K2's and DeepSeek-V3's published "activated parameters" count them.
    """
    h, nh = cfg.hidden_size, cfg.num_attention_heads
    if cfg.q_lora_rank:
        q = h * cfg.q_lora_rank + cfg.q_lora_rank + cfg.q_lora_rank * nh * cfg.qk_head_dim
    else:
        q = h * nh * cfg.qk_head_dim
    kv = (h * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + cfg.kv_lora_rank
          + cfg.kv_lora_rank * nh * (cfg.qk_nope_head_dim + cfg.v_head_dim))
    attn = q + kv + nh * cfg.v_head_dim * h + 2 * h          # + o_proj + two layer norms
    expert = 3 * h * cfg.moe_intermediate_size
    dense_mlp = 3 * h * cfg.intermediate_size
    n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
    n_dense = cfg.num_hidden_layers - n_moe
    moe_shared = cfg.n_routed_experts * h + cfg.n_shared_experts * expert   # router + shared experts
    embed = cfg.vocab_size * h * (1 if cfg.tie_word_embeddings else 2) + h
    total = embed + cfg.num_hidden_layers * attn + n_dense * dense_mlp + n_moe * (
        moe_shared + cfg.n_routed_experts * expert)
    active = embed + cfg.num_hidden_layers * attn + n_dense * dense_mlp + n_moe * (
        moe_shared + cfg.num_experts_per_tok * expert)
    return {"total": total, "active": active, "embedding": embed,
            "active_non_embedding": active - embed, "moe_layers": n_moe, "dense_layers": n_dense}


def flops_per_token(cfg: ModelConfig, seq_len: int, training: bool = True) -> float:
    """Model FLOPs per token for MFU: matmuls of the activated parameters plus causal attention.

    2 FLOPs per multiply-add in the forward, ×3 for forward + backward. Embedding lookups are not
    matmuls and are excluded; lm_head is included. Attention counts QKᵀ (d_nope + d_rope) and PV
    (d_v) over the causal context, (seq_len + 1) / 2 keys per query on average — half what the
    "6N + 12·L·H·d·T" convention counts, so our MFU is the conservative one.
    """
    c = param_counts(cfg)
    norms = cfg.hidden_size + cfg.num_hidden_layers * (2 * cfg.hidden_size + (cfg.q_lora_rank or 0) + cfg.kv_lora_rank)
    matmul = c["active"] - cfg.vocab_size * cfg.hidden_size - norms       # no embedding lookup, no norm gains
    if cfg.tie_word_embeddings:
        matmul += cfg.vocab_size * cfg.hidden_size
    ctx = (seq_len + 1) / 2
    attn = 2 * cfg.num_hidden_layers * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim) * ctx
    fwd = 2 * matmul + attn
    return 3 * fwd if training else fwd
