"""Attention on a CPU. Encoders: one Q|K|V matmul (oneDNN in inference) and `varlen_attention` on packed
(unpadded) tokens (`CPUSelfAttention` replaces `nn.attention.EncoderSelfAttention`). Decoders: Q|K|V (and
cross-attention's K|V) as one matmul over the concatenated weights through oneDNN in bf16 CPU inference
(`FusedQKVSelfAttention`, `FusedKVCrossAttention` replace `SelfAttention`, `CrossAttention`). Each
replaces its readable parent in a model (`cpu.fast_paths`); all attend through `nn.attention.attend` on
padded batches, except bf16 decode steps (one query per row: `decode_attention`), and the tests check the
paths agree. Shape legend: `lmforge.nn.attention`'s.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.attention import CrossAttention, EncoderSelfAttention, SelfAttention, attend
from . import onednn
from .dropout import dropout


class CPUSelfAttention(EncoderSelfAttention):
    """`EncoderSelfAttention` with Q, K and V from one matmul over the concatenated weights (3 GEMMs -> 1:
    same numbers, less dispatch and better cache use; oneDNN in CPU inference) and, on packed tokens on
    a CPU outside training (no autograd, or eval mode: `model(**batch)` without `no_grad`), attention
    one sequence at a time (`varlen_attention`). In training it runs on a re-padded (B, T) view, as on a
    GPU: there one fused SDPA kernel beats a loop of small launches, and in CPU training the loop's
    backward (32 small graphs per batch) is ~3% slower than the padded math on length-sorted or short
    batches. No parameters of its own: the state dict is `EncoderSelfAttention`'s.
    """

    def forward(self, x: Tensor, layout, output_attentions: bool = False) -> tuple[Tensor, Tensor | None]:
        packed = x.dim() == 2  # (N, C): the real tokens of a `Packing` layout
        qkv = self._qkv(x, packed)  # (..., 3C)
        dropout_p = self.dropout.p if self.training else 0.0
        if packed and x.device.type == "cpu" and not (self.training and torch.is_grad_enabled()):
            return varlen_attention(qkv, layout.lengths, self.num_heads, dropout_p, self.training), None  # (N, C)
        qkv = layout.pad(qkv)  # (B, T, 3C)
        B, T, _ = qkv.shape
        q, k, v = qkv.view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, T, D)
        context, probs = attend(q, k, v, layout.additive_mask, dropout=self.dropout, need_probs=output_attentions)
        return layout.unpad(context), probs  # (B, T, C) or (N, C)

    def _qkv(self, x: Tensor, packed: bool) -> Tensor:
        # fp32 oneDNN on packed tokens only: see `onednn.compute_dtype`.
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


class DecodeAttention:
    """The `_attend` of the decoders' fast attention classes: one new query per row (a decode step) in bf16 CPU
    inference runs `decode_attention` (fp32 matmuls, query heads grouped per key/value head) instead of SDPA,
    whose bf16 CPU kernel takes ~5x longer at these shapes (1.2 ms vs 0.22 ms per SmolLM2 layer at batch 8,
    160 cached positions; ~30% of a bf16 decode step). Everything else: the parent's `_attend`."""

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool,
                need_probs: bool) -> tuple[Tensor, Tensor | None]:
        dropout = self.attn_dropout.training and self.attn_dropout.p > 0.0
        if (q.size(2) == 1 and q.dtype == torch.bfloat16 and q.device.type == "cpu" and not need_probs
                and not dropout and self.attn_implementation == "sdpa" and not torch.is_grad_enabled()):
            return self.o_proj(decode_attention(q, k, v, mask, self.scale)), None  # (B, 1, C)
        return super()._attend(q, k, v, mask, is_causal, need_probs)


class FusedQKVSelfAttention(DecodeAttention, SelfAttention):
    """`SelfAttention` with Q, K and V from one matmul over the concatenated weights in bf16 CPU inference
    (oneDNN; the concatenation and cast made once per `frozen_weights()` block): one pass over x and one GEMM
    launch instead of three. fp32 and autograd: three ATen matmuls, as the parent (see `onednn.fused_linears`).
    bf16 decode steps attend through `decode_attention`."""

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return onednn.fused_linears(x, self, (self.q_proj, self.k_proj, self.v_proj))  # (B, T, H*D), 2 x (B, T, Hk*D)


class FusedKVCrossAttention(DecodeAttention, CrossAttention):
    """`CrossAttention` with K and V of the encoder output from one matmul (as `FusedQKVSelfAttention`)."""

    def project_kv(self, encoder_states: Tensor) -> tuple[Tensor, Tensor]:
        return onednn.fused_linears(encoder_states, self, (self.k_proj, self.v_proj))  # 2 x (B, S, Hk*D)


def decode_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None = None) -> Tensor:
    """Attention of one new query per row over S keys: q (B, H, 1, D), k/v (B, Hk, S, D), mask additive
    (B or 1, 1 or H, 1, S) or None -> context (B, 1, H*D) in q's dtype. The one query sees every key (the
    decoders' causal rule for the last position), so there is no causal mask to build.

    Query heads sharing a key/value head are stacked as that head's rows (query head h reads key/value head
    h // (H / Hk)), so grouped-query attention is two batched matmuls over the cache as it is, with no
    repeated K/V. Scores, softmax and the weighted sum run in fp32, as SDPA accumulates them.
    """
    B, H, _, D = q.shape
    Hk, S = k.size(1), k.size(2)
    scale = D ** -0.5 if scale is None else scale
    grouped = q.reshape(B, Hk, H // Hk, D).float()  # (B, Hk, H/Hk, D): the query heads of each key/value head
    scores = (grouped @ k.float().transpose(-1, -2)).mul_(scale).view(B, H, 1, S)  # (B, H, 1, S)
    if mask is not None:
        scores = scores + mask.float()
    probs = scores.softmax(dim=-1).view(B, Hk, H // Hk, S)  # (B, Hk, H/Hk, S)
    context = probs @ v.float()  # (B, Hk, H/Hk, D)
    return context.view(B, 1, H * D).to(q.dtype)  # (B, 1, H*D)


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
