"""bf16 inference on CPU: linear layers through oneDNN with the activation fused, weights cast once.

Under `torch.autocast("cpu", dtype=torch.bfloat16)` and without autograd, a BERT feed-forward
`gelu(x W^T + b)` costs a bf16 matmul plus a separate GELU pass over the (N, 4C) output, which on
a 2-core CPU takes ~40% as long as the matmul itself. oneDNN applies the GELU to the fp32
accumulators before rounding (so it is also slightly more accurate) in the same kernel, and its
matmul primitive is a few % faster than the ATen path for these shapes. The op is
`torch.ops.mkldnn._linear_pointwise` (what `torch.compile` emits for CPU linears); when it is
missing, or outside bf16 autocast inference, everything runs the plain way.

Weights are cast to bf16 on every call (as autocast does under `inference_mode`), except inside
`frozen_weights()`: a block whose caller promises not to change the weights (pipelines, `predict`,
`evaluate`), where each cast is made once. There is no cache outside such a block: fused optimizers
(`torch.optim.AdamW(fused=True)`) update parameters in place without bumping their version
counters, so a cache keyed on versions would serve stale weights after a training step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

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


_frozen_casts: ContextVar[dict | None] = ContextVar("lmforge_frozen_casts", default=None)


@contextmanager
def frozen_weights() -> Iterator[None]:
    """Within this block bf16 weight casts are made once and reused: the weights must not change."""
    token = _frozen_casts.set({})
    try:
        yield
    finally:
        _frozen_casts.reset(token)


def cast_once(owner: object, build: Callable[[], tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
    """`build()` (bf16 weights of `owner`), reused within a `frozen_weights()` block."""
    cache = _frozen_casts.get()
    if cache is None:
        return build()
    key = id(owner)
    if key not in cache:
        cache[key] = (owner, build())  # holding `owner` keeps its id from being reused in the block
    return cache[key][1]


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None = None) -> Tensor:
    """`activation(F.linear(x, weight, bias))` in bf16 through oneDNN. Call only when `active(x)`;
    `weight`/`bias` already bf16. activation: a key of FUSED_ACTIVATIONS or None."""
    attr, algorithm = FUSED_ACTIVATIONS[activation] if activation else ("none", "")
    return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), weight, bias, attr, [], algorithm)


def linear_module(x: Tensor, module: nn.Linear, activation: str | None = None) -> Tensor:
    """`linear` with the module's weights cast to bf16 (once per `frozen_weights()` block)."""

    def build() -> tuple[Tensor, ...]:
        bias = module.bias.to(torch.bfloat16) if module.bias is not None else None
        return module.weight.to(torch.bfloat16), bias

    weight, bias = cast_once(module, build)
    return linear(x, weight, bias, activation)
