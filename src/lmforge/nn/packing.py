"""Batch layouts for encoders: the padded batch as given, or its real tokens packed end to end.

A layout tells an encoder where its tokens are. Blocks that act on the last dimension (linear layers,
LayerNorm, dropout, activations) do not care; only attention reads the layout (`additive_mask`, and
`pad` / `unpad` to move between (B, T, ...) and the packed (N, ...) tokens; see `nn.attention`'s legend).
- `Padded`: (B, T, ...); `pad` and `unpad` are the identity.
- `Packing`: the N real tokens of a right- or left-padded batch, (N, ...): padding never reaches a
  projection, the feed-forward block or LayerNorm ("unpadded" attention, the encoders' default).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .attention import has_padding, to_additive


class Padded:
    """The batch as given: (B, T, ...). `additive_mask` (B, 1, 1, T), or None when nothing is padding."""

    def __init__(self, additive_mask: Tensor | None):
        self.additive_mask = additive_mask

    def unpad(self, x: Tensor) -> Tensor:
        return x

    def pad(self, x: Tensor) -> Tensor:
        return x


class Packing:
    """Where the real tokens of a right- or left-padded batch are, to drop padding and restore it.

    `index` lists the flat positions b * T + t of the N real tokens; `pad`/`unpad` move a tensor
    between the packed (N, ...) and padded (B, T, ...) layouts (padding positions become zero).
    """

    def __init__(self, attention_mask: Tensor, dtype: torch.dtype):
        self.B, self.T = attention_mask.shape
        self.index = attention_mask.reshape(-1).nonzero().squeeze(1)  # (N,)
        self.attention_mask = attention_mask
        self.additive_mask = to_additive(attention_mask.bool()[:, None, None, :], dtype)  # (B, 1, 1, T)

    @functools.cached_property
    def lengths(self) -> list[int]:
        """Tokens per row (rows with none skipped): the packed layout holds each row's tokens together.
        Computed on first use only: on a GPU `.tolist()` waits for the device, and only the CPU path needs it."""
        return [n for n in self.attention_mask.sum(1).tolist() if n > 0]

    @property
    def num_tokens(self) -> int:
        return self.index.numel()

    def unpad(self, x: Tensor) -> Tensor:
        """(B, T, ...) -> (N, ...); a (1, T) or (T,) tensor (positions) is broadcast over the batch first."""
        x = x.expand(self.B, self.T, *x.shape[2:])
        return x.reshape(self.B * self.T, *x.shape[2:]).index_select(0, self.index)  # (N, ...)

    def pad(self, x: Tensor) -> Tensor:
        out = x.new_zeros(self.B * self.T, *x.shape[1:])
        return out.index_copy(0, self.index, x).view(self.B, self.T, *x.shape[1:])  # (B, T, ...)


def batch_layout(attention_mask: Tensor | None, attn_implementation: str, keep_padding: bool,
                 dtype: torch.dtype) -> Padded | Packing:
    """The layout an encoder runs a batch in: packed when the batch has padding, the attention mode is
    "unpadded" and nothing asks to keep padding (attention probabilities, a loss that reads padding);
    else padded. `dtype`: the model's; the packed mask takes the autocast dtype inside autocast (the
    dtype its attention scores have)."""
    if not has_padding(attention_mask):
        return Padded(None)
    if attn_implementation == "unpadded" and not keep_padding:
        packing = Packing(attention_mask, dtype)
        device = attention_mask.device.type
        if torch.is_autocast_enabled(device):
            packing.additive_mask = packing.additive_mask.to(torch.get_autocast_dtype(device))
        return packing
    return Padded(to_additive(attention_mask.bool()[:, None, None, :], dtype))  # (B, 1, 1, T)
