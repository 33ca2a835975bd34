"""GPT's Conv1D: a linear layer whose weight is stored (in, out), as OpenAI GPT / GPT-2 checkpoints keep it."""

from __future__ import annotations

import torch
from torch import Tensor, nn


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
