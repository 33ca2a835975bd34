"""Vocabulary projection + cross-entropy in one autograd node, without returning the (N, V) logits.

Training a small BERT, the MLM decoder's logits are the largest tensor of a step: 600 masked
tokens x 30,522 words = 74 MB in fp32. `F.cross_entropy(F.linear(...))` writes them, writes the
log-probabilities (another 74 MB), zero-fills a gradient of the same size and writes the gradient
of the logits; on a CPU those passes (and the page faults of fresh allocations that large) cost
about as much as the projection's matmuls. Here the logits buffer is the only large tensor:

    logits = h W^T + b                               (N, V), one allocation
    per row chunk (~8 MB, in cache): log_softmax -> loss_i = -log p_i[y_i];
                                     then softmax - onehot(y), over N, written over the logits
    dh = G W,  dW = G^T h,  db = sum(G)              computed in the forward, kept for backward

The gradients are computed during the forward (this node is only used with autograd on) and the
backward scales them by the incoming gradient. The result equals `F.cross_entropy(F.linear(h, W, b), y)`
(mean over rows) in value and gradients; matmuls run in the autocast dtype when autocast is on,
softmax and the gradient of the logits in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.heads import MaskedLMHead
from . import onednn

CHUNK_BYTES = 8 * 2**20  # rows per log-softmax chunk: its temporary stays small and near cache


def _compute_dtype(x: Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, dtype: torch.dtype,
                label_smoothing: float):
        # hidden: (N, C), weight: (V, C), bias: (V,), targets: (N,) in [0, V)
        N, V = hidden.size(0), weight.size(0)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        h, w = hidden.to(dtype), weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        # No autograd in here, so oneDNN's matmul can serve on CPU: for (600 x 256) @ (256 x 30522) it
        # runs ~1.6x faster than ATen's addmm (which sits near 80 GFLOP/s on this shape). `active` asks
        # cpu_caps: ATen where oneDNN (or, for bf16, oneDNN bf16: not on AVX2) is unavailable.
        logits = onednn.linear(h, w, b) if onednn.active(h, w, fp32=True) else F.linear(h, w, b)  # (N, V)
        grad_logits = logits if logits.dtype == torch.float32 else torch.empty_like(logits, dtype=torch.float32)
        loss = hidden.new_zeros((), dtype=torch.float32)
        chunk = max(1, CHUNK_BYTES // (4 * V))
        for start in range(0, N, chunk):
            rows = slice(start, start + chunk)
            log_probs = torch.log_softmax(logits[rows].float(), dim=-1)  # (n, V), a cache-sized temporary
            picked = torch.arange(log_probs.size(0), device=log_probs.device), targets[rows]
            # Label smoothing (as F.cross_entropy's): loss_i = (1 - e) * -log p_i[y_i] + e * mean_v(-log p_i[v]).
            loss -= (1.0 - label_smoothing) * log_probs[picked].sum()
            if label_smoothing:
                loss -= label_smoothing / V * log_probs.sum()
            # softmax - target distribution, over N for the mean; written over the logits, not needed again.
            g = log_probs.exp_()
            g[picked] -= 1.0 - label_smoothing
            if label_smoothing:
                g -= label_smoothing / V
            torch.div(g, N, out=grad_logits[rows])
        g = grad_logits.to(dtype)  # (N, V)
        ctx.grads = (
            (g @ w).to(hidden.dtype) if need_h else None,  # (N, C)
            (g.t() @ h).to(weight.dtype) if need_w else None,  # (V, C)
            grad_logits.sum(0).to(bias.dtype) if need_b else None,  # (V,)
        )
        return loss / N

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        grads = ctx.grads
        ctx.grads = None  # free them with the graph
        if not torch.equal(grad_loss, torch.ones_like(grad_loss)):  # e.g. gradient accumulation's 1/k
            grads = tuple(g * grad_loss.to(g.dtype) if g is not None else None for g in grads)
        return (*grads, None, None, None)


def linear_cross_entropy(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                         label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of `F.linear(hidden, weight, bias)` against `targets`, chunked over rows.

    hidden: (N, C), weight: (V, C), bias: (V,) or None, targets: (N,) class indices (no ignore index:
    select the rows first); label_smoothing in [0, 1) as `F.cross_entropy`'s. Returns a scalar fp32 loss
    (NaN when N == 0, as `F.cross_entropy`).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    dtype = _compute_dtype(hidden)
    with torch.autocast(hidden.device.type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, bias, targets, dtype, float(label_smoothing))


class FusedLossMaskedLMHead(MaskedLMHead):
    """`MaskedLMHead` whose `loss` is `linear_cross_entropy` (replaces it in a model: `cpu.fast_paths`)."""

    def loss(self, x: Tensor, targets: Tensor) -> Tensor:
        return linear_cross_entropy(self.transform(x), self.decoder.weight, self.bias, targets)
