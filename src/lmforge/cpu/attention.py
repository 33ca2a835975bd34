"""Encoder (BERT) self-attention with its CPU paths, and the packed (unpadded) token layout.

Shape legend: `lmforge.nn.attention`'s, plus N = real tokens kept after dropping padding (N <= B * T).

`EncoderSelfAttention` projects Q, K and V with one matmul (oneDNN in CPU inference) and attends through
`nn.attention.attend` (SDPA, or the written-out formula when probabilities are requested or for dropout on
CPU) on padded batches, or through `varlen_attention` on the packed real tokens (the default "unpadded"
mode, CPU outside training); the tests check they agree.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.attention import attend, padding_mask
from . import onednn
from .dropout import dropout


class EncoderSelfAttention(nn.Module):
    """Q/K/V projections. Attribute names follow HF's `attention.self.{query,key,value}`.

    Q, K and V come from one matmul over the concatenated weights (3 GEMMs -> 1): same numbers,
    less dispatch and better cache use on CPU.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.dropout_p = dropout
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)

    def _qkv(self, x: Tensor, packed: bool = False) -> Tensor:
        dtype = onednn.compute_dtype(x, self.query.weight, fp32=packed)
        if dtype is not None:  # oneDNN; concatenation (and bf16 cast) made once per `frozen_weights()` block
            weight, bias = onednn.prepared(self, dtype, self._fused_qkv_params)
            return onednn.linear(x, weight, bias)  # (..., 3C)
        if onednn.eval_with_grad(x, self.query.weight, self.training, fp32=packed):
            return onednn.linear_with_grad(x, *self._fused_qkv_params())  # (..., 3C)
        return F.linear(x, *self._fused_qkv_params())  # (..., 3C)

    def _fused_qkv_params(self) -> tuple[Tensor, Tensor]:
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])  # (3C, C)
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])  # (3C,)
        return weight, bias

    def _attend(self, qkv: Tensor, mask: Tensor | None, output_attentions: bool) -> tuple[Tensor, Tensor | None]:
        B, T, _ = qkv.shape
        q, k, v = qkv.view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, D)
        dropout_p = self.dropout_p if self.training else 0.0
        return attend(q, k, v, mask, dropout_p=dropout_p, need_probs=output_attentions)  # (B, T, C), probs

    def forward(
        self, x: Tensor, mask: Tensor | None, output_attentions: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """x: (B, T, C), mask: additive (B, 1, 1, T) or None."""
        return self._attend(self._qkv(x), mask, output_attentions)

    def forward_packed(self, x: Tensor, packing: Packing) -> Tensor:
        """x: (N, C), the real tokens of a padded batch. Projections run on the N tokens only.

        On a CPU outside training (no autograd, or eval mode: `model(**batch)` without `no_grad`),
        attention runs one sequence at a time on the packed tokens (`varlen_attention`). In training
        it runs on a re-padded (B, T) view, as on a GPU: there one fused SDPA kernel beats a loop of
        small launches, and in CPU training the loop's backward (32 small graphs per batch) is ~3%
        slower than the padded math on length-sorted or short batches.
        """
        qkv = self._qkv(x, packed=True)  # (N, 3C)
        dropout_p = self.dropout_p if self.training else 0.0
        if x.device.type == "cpu" and not (self.training and torch.is_grad_enabled()):
            return varlen_attention(qkv, packing.lengths, self.num_heads, dropout_p, self.training)  # (N, C)
        context, _ = self._attend(packing.pad(qkv), packing.additive_mask, False)  # (B, T, C)
        return packing.unpad(context)  # (N, C)


def varlen_attention(qkv: Tensor, lengths: list[int], num_heads: int, dropout_p: float = 0.0,
                     training: bool = False) -> Tensor:
    """Sequences laid end to end: Q|K|V (N, 3C) -> context (N, C), attention within each sequence.

    Nothing is padded, so no FLOPs go to padding and no mask is needed. On a CPU these per-sequence
    matmuls also beat the fused SDPA kernel, whose tiling suits long sequences and large heads:
    MiniLM (head size 32) on 7..153-token texts spends half the time of padded SDPA.

    The scores and softmax run in fp32 whatever the input (bf16 under autocast): at these sizes a
    CPU's bf16 softmax is 4x slower than fp32 and bf16 batched matmuls are no faster.
    """
    N, C3 = qkv.shape
    H, D = num_heads, C3 // 3 // num_heads
    scale = 1.0 / math.sqrt(D)
    if N == 0:
        return qkv.new_zeros(0, C3 // 3)
    # One cast for the whole batch (a plain elementwise pass), then strided views: fp32 bmm reads them in place.
    heads = qkv.float().view(N, 3, H, D).permute(1, 2, 0, 3)  # (3, H, N, D)
    q, k, v = heads.unbind(0)  # 3 x (H, N, D)
    drop = training and dropout_p > 0.0
    contexts = []
    with torch.autocast(q.device.type, enabled=False):
        # One split per operand (views, made in C++) rather than three slices per sequence.
        for q_s, k_t, v_s in zip(q.split(lengths, 1), k.transpose(-1, -2).split(lengths, 2), v.split(lengths, 1)):
            probs = torch.bmm(q_s, k_t).mul_(scale).softmax(dim=-1)  # (H, L, L)
            if drop:
                probs = dropout(probs, dropout_p, training)
            contexts.append(torch.bmm(probs, v_s).transpose(0, 1))  # (L, H, D)
    # Written straight into the (N, H, D) layout, and cast back to the input dtype.
    if torch.is_grad_enabled() or qkv.dtype == torch.float32:
        return torch.cat(contexts).to(qkv.dtype).view(N, C3 // 3)  # (N, C)
    out = qkv.new_empty(N, H, D)  # without autograd, concatenation and cast are one pass
    return torch.cat(contexts, out=out).view(N, C3 // 3)  # (N, C)


class Packing:
    """Where the real tokens of a right- or left-padded batch are, to drop padding and restore it.

    `index` lists the flat positions b * T + t of the N real tokens; `pad`/`unpad` move a tensor
    between the packed (N, ...) and padded (B, T, ...) layouts (padding positions become zero).
    """

    def __init__(self, attention_mask: Tensor, dtype: torch.dtype):
        self.B, self.T = attention_mask.shape
        self.index = attention_mask.reshape(-1).nonzero().squeeze(1)  # (N,)
        self.attention_mask = attention_mask
        self.additive_mask = padding_mask(attention_mask, dtype)  # (B, 1, 1, T)

    @functools.cached_property
    def lengths(self) -> list[int]:
        """Tokens per row (rows with none skipped): the packed layout holds each row's tokens together.
        Computed on first use only: on a GPU `.tolist()` waits for the device, and only the CPU path needs it."""
        return [n for n in self.attention_mask.sum(1).tolist() if n > 0]

    @property
    def num_tokens(self) -> int:
        return self.index.numel()

    def unpad(self, x: Tensor) -> Tensor:
        return x.reshape(self.B * self.T, *x.shape[2:]).index_select(0, self.index)  # (N, ...)

    def pad(self, x: Tensor) -> Tensor:
        out = x.new_zeros(self.B * self.T, *x.shape[1:])
        return out.index_copy(0, self.index, x).view(self.B, self.T, *x.shape[1:])  # (B, T, ...)
