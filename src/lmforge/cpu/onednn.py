"""CPU inference linears through oneDNN: activation fused into the matmul, weights prepared once.

Without autograd on a CPU, in fp32 or under `torch.autocast("cpu", dtype=torch.bfloat16)`, a BERT
feed-forward `gelu(x W^T + b)` through ATen is a matmul plus a separate GELU pass over the (N, 4C)
output; on a 2-core CPU that pass costs ~40% (bf16) to ~70% (fp32) as much as the matmul. oneDNN
applies the GELU to the accumulators in the same kernel (before any rounding to bf16), and its
matmul primitive is also 3-15% faster than ATen's for these shapes (measured for M = 600..3000
tokens, K/N = 384/1536). fp32 results are fp32 matmuls too, only summed in another order
(~1e-6 relative). The op is `torch.ops.mkldnn._linear_pointwise` (what `torch.compile` emits for
CPU linears); where `cpu_caps` says it is missing (or bf16 is asked for and oneDNN cannot run bf16
on this CPU, e.g. AVX2), or with autograd on, everything runs the plain ATen way (same results, up
to summation order), except eval-mode fp32 packed activations: `eval_with_grad`, at the end.

Under bf16 autocast the weights are cast to bf16 on every call (as autocast itself does under
`inference_mode`), except inside `frozen_weights()`: a block whose caller promises not to change the
weights (pipelines, `predict`, `evaluate`), where each cast (and the Q|K|V concatenation) is made
once and the weight is reordered into oneDNN's blocked layout. There is no cache outside such a
block: fused optimizers (`torch.optim.AdamW(fused=True)`) update parameters in place without
bumping their version counters, so a cache keyed on versions would serve stale weights after a
training step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.mlp import ACTIVATIONS
from . import capabilities as cpu_caps

# activation name (a key of `nn.mlp.ACTIVATIONS`) -> (oneDNN post-op, algorithm): the activations oneDNN fuses
# into the matmul. Others run as ATen after it.
POST_OPS = {
    "gelu": ("gelu", "none"),
    "gelu_new": ("gelu", "tanh"),  # GPT-2's tanh approximation, the same formula as torch's approximate="tanh"
    "gelu_pytorch_tanh": ("gelu", "tanh"),
    "relu": ("relu", ""),
    "silu": ("swish", ""),
    "swish": ("swish", ""),
}


def _bf16_autocast() -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def compute_dtype(x: Tensor, weight: Tensor, fp32: bool) -> torch.dtype | None:
    """The dtype the oneDNN path computes `x @ weight^T` in, or None where it does not apply: it needs
    a CPU, no autograd, oneDNN's linear (`cpu_caps`), and bf16 autocast, or no autocast with bf16 (or,
    if `fp32`, fp32) activations and weights alike; bf16 also needs oneDNN bf16 on this CPU (not on
    AVX2). `fp32=False` keeps fp32 on ATen's matmul, whose summation order transformers shares:
    lmforge's padded "sdpa" mode stays identical to transformers at every position (its
    padding rows are ill-conditioned: oneDNN's order moves them by up to ~1e-4 on MiniLM, and real
    tokens by ~5e-6)."""
    if x.device.type != "cpu" or torch.is_grad_enabled():
        return None
    caps = cpu_caps.get()
    if not caps.onednn_linear:
        return None
    if torch.is_autocast_enabled("cpu"):
        return torch.bfloat16 if _bf16_autocast() and caps.onednn_bf16 else None
    if x.dtype != weight.dtype:
        return None
    if x.dtype == torch.bfloat16:
        return x.dtype if caps.onednn_bf16 else None
    return x.dtype if fp32 and x.dtype == torch.float32 else None


def active(x: Tensor, weight: Tensor, fp32: bool) -> bool:
    """Whether `x @ weight^T` takes the oneDNN path."""
    return compute_dtype(x, weight, fp32) is not None


_frozen: ContextVar[dict | None] = ContextVar("lmforge_frozen_weights", default=None)


@contextmanager
def frozen_weights(prepared: dict | None = None) -> Iterator[None]:
    """Within this block weight casts/concatenations are made once and reused: the weights must not change.

    A block inside another shares the outer one's preparations (the outer block already holds the weights
    still). `prepared`: the store of earlier blocks over the same, unchanged weights (a dict that started
    empty), for a caller that enters one block per step, e.g. a generator that must not hold a block open
    across its yields; by default a new, empty one."""
    if prepared is None:
        prepared = _frozen.get()
    token = _frozen.set({} if prepared is None else prepared)
    try:
        yield
    finally:
        _frozen.reset(token)


def prepared(owner: object, dtype: torch.dtype, params: Callable[[], tuple[Tensor, Tensor | None]]
             ) -> tuple[Tensor, Tensor | None]:
    """(weight, bias) of `owner` for `linear` in `dtype`. Inside a `frozen_weights()` block they are
    cast once and the weight is reordered into oneDNN's blocked layout (5-15% faster matmuls than
    from the plain layout, which oneDNN otherwise re-blocks on every call); elsewhere they are cast
    on each call, or used as they are."""
    cache = _frozen.get()
    if cache is None:
        return weights_in(dtype, *params())
    key = (id(owner), dtype)
    if key not in cache:
        weight, bias = weights_in(dtype, *params())
        blocked = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous())  # an opaque oneDNN tensor
        cache[key] = (owner, (blocked, bias))  # holding `owner` keeps its id from being reused in the block
    return cache[key][1]


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None = None) -> Tensor:
    """`activation(F.linear(x, weight, bias))` through oneDNN, in `weight`'s dtype (x is cast to it).
    Call only where `active(x, weight, ...)`. activation: a key of POST_OPS or None."""
    attr, algorithm = POST_OPS[activation] if activation else ("none", "")
    return torch.ops.mkldnn._linear_pointwise(x.to(weight.dtype), weight, bias, attr, [], algorithm)


def _activation(name: str) -> Callable[[Tensor], Tensor]:
    """The torch function of a POST_OPS activation, for the ATen path."""
    return ACTIVATIONS[name]


def weights_in(dtype: torch.dtype, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
    return weight.to(dtype), bias.to(dtype) if bias is not None else None  # no copy where already `dtype`


def linear_module(x: Tensor, module: nn.Linear, fp32: bool, activation: str | None = None) -> Tensor:
    """`activation(module(x))`, through oneDNN where `active(x, module.weight, fp32)` (or, with autograd
    on, `eval_with_grad`), else through ATen. Weights prepared (cast, blocked) once per
    `frozen_weights()` block."""
    dtype = compute_dtype(x, module.weight, fp32)
    if dtype is None:
        if eval_with_grad(x, module.weight, module.training, fp32):
            return linear_with_grad(x, module.weight, module.bias, activation)
        return _activation(activation)(module(x)) if activation else module(x)
    weight, bias = prepared(module, dtype, lambda: (module.weight, module.bias))
    return linear(x, weight, bias, activation)


def fused_linears(x: Tensor, owner: nn.Module, layers: tuple[nn.Linear, ...]) -> tuple[Tensor, ...]:
    """`tuple(layer(x) for layer in layers)`. oneDNN where `active(x, weight, fp32=False)` (bf16 CPU inference):
    one matmul over the concatenated weights, the concatenation and cast made once per `frozen_weights()` block
    (keyed by `owner`), one pass over x. Elsewhere (fp32, autograd) one ATen matmul per layer: the same numbers,
    and no weight copy. Concatenating there would copy the weights on every call, and at one token per row (a
    decode step, which streams the weights from memory) that copy cost more than the matmul: 25% of a fp32
    SmolLM2 step at batch 1 and 8."""

    def params() -> tuple[Tensor, Tensor | None]:
        weight = torch.cat([layer.weight for layer in layers])  # (sum of outputs, C)
        bias = torch.cat([layer.bias for layer in layers]) if layers[0].bias is not None else None
        return weight, bias

    dtype = compute_dtype(x, layers[0].weight, fp32=False)
    if dtype is None:
        return tuple(F.linear(x, layer.weight, layer.bias) for layer in layers)
    out = linear(x, *prepared(owner, dtype, params))  # (..., sum of outputs)
    return out.split([layer.out_features for layer in layers], dim=-1)


def linear_times(x: Tensor, module: nn.Linear, multiply: Tensor) -> Tensor:
    """`module(x) * multiply` through oneDNN, the product fused into the matmul (a binary post-op: the output
    is written once). Call only where `active(x, module.weight, fp32=False)`; multiply has the output's shape."""
    weight, bias = prepared(module, compute_dtype(x, module.weight, fp32=False), lambda: (module.weight, module.bias))
    return torch.ops.mkldnn._linear_pointwise.binary(x.to(weight.dtype), multiply.to(weight.dtype).contiguous(),
                                                     weight, bias, "mul")


# ------------------------------------------------------------------------ autograd on, eval mode
# `outputs = model(**inputs)` without `torch.no_grad()` (the usual transformers example) runs with autograd
# on; the model is in eval mode. There the fp32 forward takes the same oneDNN matmuls (GELU fused) as
# without autograd (ATen's matmul + separate GELU cost ~35% more on MiniLM), and a backward, if one runs,
# is ATen's. Training (train mode) keeps ATen throughout: its backward would pay the recomputation below.


def eval_with_grad(x: Tensor, weight: Tensor, training: bool, fp32: bool) -> bool:
    """Whether `x @ weight^T` runs through `linear_with_grad`: autograd on, a module in eval mode, fp32
    packed activations (`fp32`, as in `compute_dtype`) on a CPU, no autocast."""
    return (fp32 and not training and torch.is_grad_enabled() and x.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu") and x.dtype == weight.dtype == torch.float32
            and cpu_caps.get().onednn_linear)


def linear_with_grad(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None = None) -> Tensor:
    """`activation(F.linear(x, weight, bias))` with a oneDNN forward and an ATen backward (see `_Linear`)."""
    return _Linear.apply(x, weight, bias, activation)


class _Linear(torch.autograd.Function):
    """oneDNN's fused matmul + activation forward; the backward is written out in ATen. oneDNN never returns
    the pre-activation, so with an activation the backward recomputes it (one matmul more, paid only if a
    backward runs) instead of the forward keeping an (N, I) tensor for it."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None) -> Tensor:
        ctx.save_for_backward(x, weight, bias)
        ctx.activation = activation
        return linear(x, weight, bias, activation)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, bias = ctx.saved_tensors
        if ctx.activation is not None:
            with torch.enable_grad():
                pre = F.linear(x, weight, bias).detach().requires_grad_()  # (..., out)
                (grad,) = torch.autograd.grad(_activation(ctx.activation)(pre), pre, grad)
        flat = grad.reshape(-1, grad.size(-1))  # (M, out)
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None  # (..., in)
        grad_weight = flat.T @ x.reshape(-1, x.size(-1)) if ctx.needs_input_grad[1] else None  # (out, in)
        grad_bias = flat.sum(0) if bias is not None and ctx.needs_input_grad[2] else None  # (out,)
        return grad_x, grad_weight, grad_bias, None
