"""Linear layers: the CPU inference fast path (oneDNN, activation or product fused) and GPT's Conv1D.

`fused_linear` computes `act(x W^T + b)`, optionally times `multiply`. Under bf16 autocast in CPU inference
it runs one oneDNN matmul with the activation (SiLU for SwiGLU's gate, GELU) or the product (SwiGLU's
`up(x) * silu(gate(x))`) fused, weights prepared once inside `onednn.frozen_weights()`. In fp32 it runs
ATen's matmul, as transformers does: oneDNN's fp32 matmul is 1.2-1.7x faster on SmolLM2's shapes here but
sums in another order, which moves SmolLM2's logits by up to ~5e-4 (30 layers amplify the last-bit
differences); with ATen the decoders' fp32 logits equal transformers' bit for bit (see docs/design.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cpu import onednn


def fused_linear(
    x: Tensor, owner: object, weight: Tensor, params: Callable[[], tuple[Tensor, Tensor | None]],
    activation: str | None = None, multiply: Tensor | None = None,
) -> Tensor:
    """`act(F.linear(x, *params()))`, times `multiply` (same shape as the output) if given.

    `owner` keys the prepared weights inside `onednn.frozen_weights()`; `weight` is the parameter whose
    dtype decides the path (params() may build a concatenation, so it is only called when needed).
    """
    dtype = onednn_dtype(x, weight)
    if dtype is not None and (activation is None or activation in onednn.POST_OPS):
        w, b = onednn.prepared(owner, dtype, params)
        x = x.to(dtype)
        if multiply is not None:
            if activation is not None:
                y = torch.ops.mkldnn._linear_pointwise(x, w, b, *_post_op(activation))
                return y.mul_(multiply.to(y.dtype))
            return torch.ops.mkldnn._linear_pointwise.binary(x, multiply.to(dtype).contiguous(), w, b, "mul")
        return torch.ops.mkldnn._linear_pointwise(x, w, b, *_post_op(activation))
    from .mlp import ACTIVATIONS

    y = F.linear(x, *params())
    if activation is not None:
        y = ACTIVATIONS[activation](y)
    return y * multiply if multiply is not None else y


def onednn_dtype(x: Tensor, weight: Tensor) -> torch.dtype | None:
    """bf16 where `x @ weight^T` takes the oneDNN path (CPU inference under bf16 autocast), else None."""
    return onednn.compute_dtype(x, weight, fp32=False)


def _post_op(activation: str | None) -> tuple[str, list, str]:
    attr, algorithm = onednn.POST_OPS[activation] if activation is not None else ("none", "")
    return attr, [], algorithm


def linear(x: Tensor, module: nn.Linear, activation: str | None = None, multiply: Tensor | None = None) -> Tensor:
    """`fused_linear` of an `nn.Linear`."""
    return fused_linear(x, module, module.weight, lambda: (module.weight, module.bias), activation, multiply)


class Conv1D(nn.Module):
    """A linear layer whose weight is stored (in_features, out_features): OpenAI GPT / GPT-2 checkpoints keep
    it that way (HF's `Conv1D`), so state dicts move between lmforge and transformers untouched.
    y = x @ W + b, computed as HF does (`addmm`)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features))  # (in, out)
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.addmm(self.bias, x.reshape(-1, self.in_features), self.weight)  # (B*T, out)
        return out.view(*x.shape[:-1], self.out_features)  # (B, T, out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
