"""Llama's (and Qwen2's) checkpoint keys, literally. Module names equal HF's, so HF folders load as they are;
this file lists what else the loaders need, including the GGUF (llama.cpp) tensor and metadata names.

    model.embed_tokens.weight                        (V, C)
    model.layers.{i}.input_layernorm.weight          (C,)
    model.layers.{i}.self_attn.q_proj.{weight,bias}  (H*D, C)     bias: attention_bias (Llama) / always (Qwen2)
    model.layers.{i}.self_attn.k_proj.{weight,bias}  (Hk*D, C)
    model.layers.{i}.self_attn.v_proj.{weight,bias}  (Hk*D, C)
    model.layers.{i}.self_attn.o_proj.{weight,bias}  (C, H*D)     bias: attention_bias (Llama only)
    model.layers.{i}.post_attention_layernorm.weight (C,)
    model.layers.{i}.mlp.{gate,up}_proj.weight       (I, C)
    model.layers.{i}.mlp.down_proj.weight            (C, I)
    model.norm.weight                                (C,)
    lm_head.weight | score.weight                    (V, C) | (num_labels, C); lm_head tied to embed_tokens or not
"""

from __future__ import annotations

import re

from ...hub import KeyRules

BASE_MODEL_PREFIX = "model"
TIED_WEIGHTS = {"lm_head.weight": "model.embed_tokens.weight"}
KEY_RULES = KeyRules(
    ignored=(re.compile(r"(^|\.)rotary_emb\.inv_freq$"),),  # older transformers saved the rotary table
)

# GGUF tensor name -> HF key ({i}: the layer). llama.cpp's names; tensors not listed are refused.
GGUF_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",  # absent when tied to the embeddings
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.attn_q.bias": "model.layers.{i}.self_attn.q_proj.bias",
    "blk.{i}.attn_k.bias": "model.layers.{i}.self_attn.k_proj.bias",
    "blk.{i}.attn_v.bias": "model.layers.{i}.self_attn.v_proj.bias",
    "blk.{i}.attn_output.bias": "model.layers.{i}.self_attn.o_proj.bias",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
# llama.cpp's Llama converter permutes Q and K rows for its interleaved rotary layout (its Qwen2 converter
# does not); the reader undoes it for these, grouping rows by the given head count field.
GGUF_PERMUTED = {"llama": {"attn_q": "num_attention_heads", "attn_k": "num_key_value_heads"}, "qwen2": {}}

# GGUF metadata key (after "<architecture>.") -> config field.
GGUF_CONFIG = {
    "context_length": "max_position_embeddings",
    "embedding_length": "hidden_size",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta",
    "rope.dimension_count": "head_dim",
    "vocab_size": "vocab_size",
}
# GGUF architecture -> model_type
GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}
