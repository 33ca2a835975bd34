"""bf16 inference on CPU: linear layers through oneDNN with the activation fused, weights cast once.

Under `torch.autocast("cpu", dtype=torch.bfloat16)` and without autograd, a BERT feed-forward
`gelu(x W^T + b)` costs a bf16 matmul plus a separate GELU pass over the (N, 4C) output, which on
a 2-core CPU takes ~40% as long as the matmul itself. oneDNN applies the GELU to the fp32
accumulators before rounding (so it is also slightly more accurate) in the same kernel, and its
matmul primitive is a few % faster than the ATen path for these shapes. The op is
`torch.ops.mkldnn._linear_pointwise` (what `torch.compile` emits for CPU linears); when it is
missing, or outside bf16 autocast inference, everything runs the plain way.

Weights are cast to bf16 once per module and reused until the weight's version counter or storage
changes (an optimizer step or `load_state_dict` bumps the version), as autocast's own cache would
for a leaf tensor within one autocast region.
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


def cached_bf16(owner: nn.Module, *params: Tensor) -> tuple[Tensor, ...]:
    """`params` cast to bf16, cached on `owner` until one of them changes."""
    key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
    cache = owner.__dict__.get("_bf16_cache")
    if cache is None or cache[0] != key:
        with torch.inference_mode(False), torch.no_grad():
            cache = (key, tuple(p.detach().to(torch.bfloat16) for p in params))
        owner.__dict__["_bf16_cache"] = cache
    return cache[1]


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None = None) -> Tensor:
    """`activation(F.linear(x, weight, bias))` in bf16 through oneDNN. Call only when `active(x)`;
    `weight`/`bias` already bf16 (see `cached_bf16`). activation: a key of FUSED_ACTIVATIONS or None."""
    attr, algorithm = FUSED_ACTIVATIONS[activation] if activation else ("none", "")
    return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), weight, bias, attr, [], algorithm)


def linear_module(x: Tensor, module: nn.Linear, activation: str | None = None) -> Tensor:
    """`linear` with the module's weights, cast once."""
    if module.bias is None:
        (weight,) = cached_bf16(module, module.weight)
        return linear(x, weight, None, activation)
    weight, bias = cached_bf16(module, module.weight, module.bias)
    return linear(x, weight, bias, activation)
