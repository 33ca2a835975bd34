"""Rotary position embeddings (RoPE, Su et al. 2021), in the "half" layout HF's Llama uses.

Each head vector x of size D is split into halves (x1, x2) of D/2; pair i is rotated by the angle
position * inv_freq[i], inv_freq[i] = theta^(-2i / D):

    out = (x1 * cos - x2 * sin,  x2 * cos + x1 * sin)

(llama.cpp stores Q/K rows for an interleaved layout, pairs (x[2i], x[2i+1]); the GGUF reader undoes
that permutation, see `gguf.py`.) Scaling types (`rope_scaling["rope_type"]`) change inv_freq only:
"linear" divides it by `factor` (positions stretched), "llama3" divides the low frequencies by
`factor` and blends the middle band (Llama 3.1's long-context recipe). Others are refused by the
config with a clear error; `SUPPORTED_ROPE_TYPES` lists what this file computes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def inverse_frequencies(head_dim: int, theta: float, scaling: dict[str, Any] | None = None) -> Tensor:
    """(D/2,) fp32 rotation speeds of the D/2 pairs, after the scaling rule."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device="cpu") / head_dim))
    rope_type = (scaling or {}).get("rope_type", "default")
    if rope_type == "default":
        return inv_freq
    factor = float(scaling["factor"])
    if rope_type == "linear":
        return inv_freq / factor
    if rope_type == "llama3":
        return _llama3_frequencies(inv_freq, factor, scaling)
    raise ValueError(f"rope_type {rope_type!r} is not supported; supported: {SUPPORTED_ROPE_TYPES}")


def _llama3_frequencies(inv_freq: Tensor, factor: float, scaling: dict[str, Any]) -> Tensor:
    # Wavelengths longer than original_context / low_freq_factor are slowed by `factor`; shorter than
    # original_context / high_freq_factor are kept; in between, a linear blend in (context / wavelength).
    context = float(scaling["original_max_position_embeddings"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    wavelength = 2 * math.pi / inv_freq
    scaled = torch.where(wavelength > context / low, inv_freq / factor, inv_freq)
    blend = (context / wavelength - low) / (high - low)  # 0 at the low-frequency edge, 1 at the high one
    blended = (1 - blend) * scaled / factor + blend * scaled
    middle = (wavelength >= context / high) & (wavelength <= context / low)
    return torch.where(middle, blended, scaled)


class RotaryEmbedding(nn.Module):
    """position_ids (B, T) -> (cos, sin), each (B, T, 1, D/2) fp32, broadcast over the heads of (B, T, H, D).

    inv_freq is a plain attribute (not a buffer): it is not part of checkpoints (as in HF) and stays correct
    when the model is built on the meta device for loading.
    """

    def __init__(self, head_dim: int, theta: float, scaling: dict[str, Any] | None = None):
        super().__init__()
        self.head_dim = head_dim
        self.inv_freq = inverse_frequencies(head_dim, theta, scaling)  # (D/2,) on the CPU

    def forward(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        if self.inv_freq.device != position_ids.device:
            self.inv_freq = self.inv_freq.to(position_ids.device)
        with torch.autocast(position_ids.device.type, enabled=False):
            angles = position_ids.float()[..., None] * self.inv_freq  # (B, T, D/2)
        return angles.cos()[:, :, None, :], angles.sin()[:, :, None, :]  # (B, T, 1, D/2) each


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, T, n_heads, D) by (cos, sin) (B, T, 1, D/2); the result has x's dtype.

    x1*cos - x2*sin and x2*cos + x1*sin: the same products and sums as transformers'
    `q * cos + rotate_half(q) * sin`, so fp32 results are bit-identical to it (a fused multiply-add, e.g.
    `addcmul`, would round once less and differ in the last bit). Without autograd each half is written
    straight into the output, which saves the concatenation pass.
    """
    if x.dtype != cos.dtype:  # half precision: rotate in fp32
        return apply_rotary(x.float(), cos, sin).to(x.dtype)
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]  # (B, T, n, D/2) each
    if torch.is_grad_enabled() and x.requires_grad:
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)  # (B, T, n, D)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # (B, T, n, D)
    torch.mul(x1, cos, out=out[..., :half]).sub_(x2 * sin)
    torch.mul(x2, cos, out=out[..., half:]).add_(x1 * sin)
    return out
