"""Shared building blocks of lmforge's models: attention (masks, grouped-query heads, cross-attention, the
KV cache), rotary embeddings, normalisation, feed-forward blocks and the CPU fast-path linear layers."""

from .attention import (
    ATTN_IMPLEMENTATIONS,
    CrossAttention,
    KVCache,
    SelfAttention,
    attend,
    attention_reference,
    causal_mask,
    padding_mask,
    position_ids_from_mask,
)
from .linear import Conv1D
from .mlp import ACTIVATIONS, GatedMLP
from .norms import LayerNorm, RMSNorm
from .rotary import SUPPORTED_ROPE_TYPES, RotaryEmbedding, apply_rotary

__all__ = [
    "ACTIVATIONS", "ATTN_IMPLEMENTATIONS", "Conv1D", "CrossAttention", "GatedMLP", "KVCache", "LayerNorm",
    "RMSNorm", "RotaryEmbedding", "SUPPORTED_ROPE_TYPES", "SelfAttention", "apply_rotary", "attend",
    "attention_reference", "causal_mask", "padding_mask", "position_ids_from_mask",
]
