"""bf16 inference on CPU: linear layers through oneDNN with the activation fused, weights cast once.

Under `torch.autocast("cpu", dtype=torch.bfloat16)` and without autograd, a BERT feed-forward
`gelu(x W^T + b)` costs a bf16 matmul plus a separate GELU pass over the (N, 4C) output, which on
a 2-core CPU takes ~40% as long as the matmul itself. oneDNN applies the GELU to the fp32
accumulators before rounding (so it is also slightly more accurate) in the same kernel, and its
matmul primitive is a few % faster than the ATen path for these shapes. The op is
`torch.ops.mkldnn._linear_pointwise` (what `torch.compile` emits for CPU linears); when it is
missing, or outside bf16 autocast inference, everything runs the plain way.

Weights are cast to bf16 on every call (cheap next to the matmul). They are not cached across calls:
fused optimizers (`torch.optim.AdamW(fused=True)`) update parameters in place without bumping their
version counters, so a cache keyed on versions would serve stale weights after a training step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# hidden_act -> (oneDNN post-op, its algorithm). Exact-erf GELU only: the approximations differ.
FUSED_ACTIVATIONS = {"gelu": ("gelu", "none"), "relu": ("relu", "")}


def _linear_pointwise_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


_AVAILABLE = _linear_pointwise_available()


def active(x: Tensor) -> bool:
    """Whether `x` takes the fused bf16 path: CPU, no autograd, bf16 autocast on."""
    return (
        _AVAILABLE
        and x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None = None) -> Tensor:
    """`activation(F.linear(x, weight, bias))` in bf16 through oneDNN. Call only when `active(x)`;
    `weight`/`bias` already bf16. activation: a key of FUSED_ACTIVATIONS or None."""
    attr, algorithm = FUSED_ACTIVATIONS[activation] if activation else ("none", "")
    return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), weight, bias, attr, [], algorithm)


def linear_module(x: Tensor, module: nn.Linear, activation: str | None = None) -> Tensor:
    """`linear` with the module's weights, cast to bf16 on each call (see the module docstring)."""
    bias = module.bias.to(torch.bfloat16) if module.bias is not None else None
    return linear(x, module.weight.to(torch.bfloat16), bias, activation)
