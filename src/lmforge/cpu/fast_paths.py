"""Which CPU fast path replaces which readable block: `apply(model)` (called by `PreTrainedModel.post_init`,
so `BertModel(config)` and `from_pretrained` both get them) and `restore(model)` (the readable blocks).

The swap changes a module's class only (`module.__class__ = fast`): each fast class subclasses the block
it replaces, overrides `forward` and adds no parameters or buffers, so the state dict, HF keys, weight
tying, `isinstance` and pickling are unchanged. Each fast forward decides per call (device, autograd,
autocast, dtype, packed tokens) and otherwise computes what its parent computes.
"""

from __future__ import annotations

from torch import nn

from ..nn.attention import EncoderSelfAttention
from ..nn.mlp import DenseAct, DenseActNorm, PostNormOutput
from .attention import CPUSelfAttention
from .dropout import Dropout
from .mlp import OneDNNDenseAct, OneDNNDenseActNorm, OneDNNPostNormOutput

FAST_PATHS: dict[type[nn.Module], type[nn.Module]] = {
    EncoderSelfAttention: CPUSelfAttention,  # one Q|K|V matmul; varlen attention on packed tokens
    DenseAct: OneDNNDenseAct,  # oneDNN matmul + fused GELU/ReLU
    DenseActNorm: OneDNNDenseActNorm,
    PostNormOutput: OneDNNPostNormOutput,
    nn.Dropout: Dropout,  # 16-bit random draws on CPU
}
READABLE = {fast: readable for readable, fast in FAST_PATHS.items()}


def apply(model: nn.Module) -> nn.Module:
    """Swap every readable block (exact type) of `model` for its fast path, in place; idempotent."""
    return _swap(model, FAST_PATHS)


def restore(model: nn.Module) -> nn.Module:
    """Swap every fast path of `model` back to its readable block, in place."""
    return _swap(model, READABLE)


def _swap(model: nn.Module, table: dict[type[nn.Module], type[nn.Module]]) -> nn.Module:
    for module in model.modules():
        new = table.get(type(module))
        if new is not None:
            module.__class__ = new
    return model
