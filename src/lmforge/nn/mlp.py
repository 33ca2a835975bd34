"""Feed-forward blocks and the one table of activation functions (HF `hidden_act` / `activation_function` names).

BERT's blocks, with HF's attribute names: `DenseAct` (intermediate), `DenseActNorm` (MLM head transform),
`PostNormOutput` (the post-LN output of each sub-layer); their oneDNN versions are in `lmforge.cpu.mlp`, as is
`GatedMLP`'s.

`GatedMLP` is Llama's SwiGLU, down(act(gate(x)) * up(x)), with HF's parameter names. GPT-2's plain MLP keeps
its Conv1D weights and lives in `models/gpt2/model.py`, using this table.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
    """down_proj(act(gate_proj(x)) * up_proj(x)): (B, T, C) -> (B, T, I) -> (B, T, C)."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str, bias: bool):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.hidden_act = hidden_act
        self.act = ACTIVATIONS[hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


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
