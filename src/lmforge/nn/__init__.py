"""Building blocks the model families share, written to be read: attention (masks, the SDPA / written-out
core, decoder and encoder self-attention, cross-attention, the KV cache), encoder batch layouts (packing),
rotary embeddings, normalisation, feed-forward blocks and the activation table, head losses (IGNORE_INDEX),
GPT's Conv1D. The blocks hold no fast path and import nothing from `lmforge.cpu`, which swaps in its own
versions when a model is built (`cpu.fast_paths`)."""

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
