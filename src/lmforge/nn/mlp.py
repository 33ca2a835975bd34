"""Feed-forward blocks and the one table of activation functions (HF `hidden_act` / `activation_function` names).

BERT's blocks, with HF's attribute names: `DenseAct` (intermediate), `DenseActNorm` (MLM head transform),
`PostNormOutput` (the post-LN output of each sub-layer); their oneDNN versions are in `lmforge.cpu.mlp`.

`GatedMLP` is Llama's SwiGLU, down(act(gate(x)) * up(x)), with HF's parameter names. GPT-2's plain MLP keeps
its Conv1D weights and lives in `models/gpt2/model.py`, using this table.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .linear import linear, onednn_dtype


def gelu_new(x: Tensor) -> Tensor:
    """The tanh approximation of GELU used by GPT-2 (HF's "gelu_new"), written as the paper does."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def gelu_fast(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": gelu_new,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": gelu_fast,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}


class GatedMLP(nn.Module):
    """down_proj(act(gate_proj(x)) * up_proj(x)): (B, T, C) -> (B, T, I) -> (B, T, C).

    fp32 / autograd: gate and up are one matmul over the concatenated weights (same numbers, one pass over
    x). CPU inference under bf16 autocast: the activation is fused into the gate matmul and the product into
    the up matmul (oneDNN, see `nn.linear`), so the (B, T, I) intermediate is written once.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str, bias: bool):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.hidden_act = hidden_act
        self.act = ACTIVATIONS[hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        if onednn_dtype(x, self.gate_proj.weight) is not None:
            gated = linear(x, self.gate_proj, activation=self.hidden_act)  # (B, T, I)
            return linear(linear(x, self.up_proj, multiply=gated), self.down_proj)  # (B, T, C)
        weight = torch.cat([self.gate_proj.weight, self.up_proj.weight])  # (2I, C)
        bias = torch.cat([self.gate_proj.bias, self.up_proj.bias]) if self.gate_proj.bias is not None else None
        gate, up = F.linear(x, weight, bias).chunk(2, dim=-1)  # (B, T, I) each
        return self.down_proj(self.act(gate) * up)  # (B, T, C)


class DenseAct(nn.Module):
    """act(dense(x)): (..., in) -> (..., out). BERT's `intermediate` block."""

    def __init__(self, in_features: int, out_features: int, hidden_act: str):
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)
        self.hidden_act = hidden_act
        self.act = ACTIVATIONS[hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.dense(x))


class DenseActNorm(DenseAct):
    """LayerNorm(act(dense(x))): (..., in) -> (..., out). BERT's MLM head `transform` (in = out = C) and
    ELECTRA's generator head (hidden size -> embedding size)."""

    def __init__(self, in_features: int, out_features: int, hidden_act: str, eps: float):
        super().__init__(in_features, out_features, hidden_act)
        self.LayerNorm = nn.LayerNorm(out_features, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.LayerNorm(super().forward(x))


class PostNormOutput(nn.Module):
    """LayerNorm(dropout(dense(x)) + residual): (..., in) -> (..., C), the end of a post-LN sub-layer
    (BERT's `attention.output` and `output`)."""

    def __init__(self, in_features: int, hidden_size: int, eps: float, dropout: float):
        super().__init__()
        self.dense = nn.Linear(in_features, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)
