"""Which CPU fast path replaces which readable block: `apply(model)` (called by `PreTrainedModel.post_init`,
so `BertModel(config)` and `from_pretrained` both get them) and `restore(model)` (the readable blocks).

The swap changes a module's class only (`module.__class__ = fast`): each fast class subclasses the block
it replaces, overrides `forward` and adds no parameters or buffers, so the state dict, HF keys, weight
tying, `isinstance` and pickling are unchanged. Each fast forward decides per call (device, autograd,
autocast, dtype, packed tokens) and otherwise computes what its parent computes. The one rule beyond exact
types: plain `nn.Linear` layers of the decoder blocks and the LM head become `OneDNNLinear` (`LINEAR_OWNERS`).
`nn/` and `models/` import nothing from here: their forwards are the readable computation.
"""

from __future__ import annotations

from torch import nn

from ..nn.attention import CrossAttention, EncoderSelfAttention, SelfAttention
from ..nn.heads import MaskedLMHead
from ..nn.mlp import DenseAct, DenseActNorm, GatedMLP, PostNormOutput
from .attention import CPUSelfAttention, FusedKVCrossAttention, FusedQKVSelfAttention
from .dropout import Dropout
from .losses import FusedLossMaskedLMHead
from .mlp import OneDNNDenseAct, OneDNNDenseActNorm, OneDNNGatedMLP, OneDNNLinear, OneDNNPostNormOutput

FAST_PATHS: dict[type[nn.Module], type[nn.Module]] = {
    EncoderSelfAttention: CPUSelfAttention,  # one Q|K|V matmul; varlen attention on packed tokens
    DenseAct: OneDNNDenseAct,  # oneDNN matmul + fused GELU/ReLU
    DenseActNorm: OneDNNDenseActNorm,
    PostNormOutput: OneDNNPostNormOutput,
    SelfAttention: FusedQKVSelfAttention,  # decoders: one Q|K|V matmul (oneDNN in bf16 inference)
    CrossAttention: FusedKVCrossAttention,  # one K|V matmul over the encoder output
    GatedMLP: OneDNNGatedMLP,  # one gate|up matmul; bf16 inference: SiLU and the product fused (oneDNN)
    MaskedLMHead: FusedLossMaskedLMHead,  # sparse MLM training: projection + cross-entropy in one node
    nn.Dropout: Dropout,  # 16-bit random draws on CPU (attention probabilities included)
}
# Plain `nn.Linear` layers become `OneDNNLinear` (bf16 inference: oneDNN, the weight cast and reordered once per
# `frozen_weights()` block) where they are children of these blocks, and in a model's output embeddings (the LM
# head, a decoder's largest matmul). BERT's other linears (pooler, classifiers) keep ATen, as they always have.
LINEAR_OWNERS = (FusedQKVSelfAttention, FusedKVCrossAttention, OneDNNGatedMLP)
READABLE = {fast: readable for readable, fast in FAST_PATHS.items()} | {OneDNNLinear: nn.Linear}


def apply(model: nn.Module) -> nn.Module:
    """Swap every readable block (exact type) of `model` for its fast path, in place; idempotent."""
    _swap(model, FAST_PATHS)
    linears = [child for block in model.modules() if isinstance(block, LINEAR_OWNERS) for child in block.children()]
    output_embeddings = getattr(model, "get_output_embeddings", None)
    if output_embeddings is not None:
        linears.append(output_embeddings())
    for layer in linears:
        if type(layer) is nn.Linear:
            layer.__class__ = OneDNNLinear
    return model


def restore(model: nn.Module) -> nn.Module:
    """Swap every fast path of `model` back to its readable block, in place."""
    return _swap(model, READABLE)


def _swap(model: nn.Module, table: dict[type[nn.Module], type[nn.Module]]) -> nn.Module:
    for module in model.modules():
        new = table.get(type(module))
        if new is not None:
            module.__class__ = new
    return model
