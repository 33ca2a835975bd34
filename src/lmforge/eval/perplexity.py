"""Perplexity of a causal LM on a text, with a sliding window, computed as the transformers perplexity guide
("Perplexity of fixed-length models") computes it:

    windows start every `stride` tokens and hold up to `max_length` tokens; in each, only the tokens not
    scored by the previous window are targets (the rest is context, label -100); the window's mean loss is
    weighted by (targets - 1), the guide's count; perplexity = exp(weighted mean).

stride == max_length gives disjoint windows (fast, pessimistic); a smaller stride gives every scored token more
context (closer to the model's true perplexity, more forward passes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..nn.heads import IGNORE_INDEX


@dataclass
class Perplexity:
    perplexity: float
    mean_nll: float
    tokens: int  # tokens of the text
    scored: int  # the guide's count of scored tokens (the weights)
    windows: int
    max_length: int
    stride: int


@torch.inference_mode()
def sliding_window_perplexity(model: torch.nn.Module, ids: Tensor, max_length: int, stride: int) -> Perplexity:
    """ids (1, N) of the whole text; the model takes `labels` and returns the mean next-token loss."""
    if ids.dim() != 2 or ids.size(0) != 1:
        raise ValueError(f"perplexity: ids must have shape (1, N), got {tuple(ids.shape)}")
    if not 0 < stride <= max_length:
        raise ValueError(f"perplexity: stride must be in [1, max_length={max_length}], got {stride}")
    N = ids.size(1)
    if N < 2:
        raise ValueError(f"perplexity: the text has {N} token(s); at least 2 are needed")
    nll_sum, counted, windows, prev_end = 0.0, 0, 0, 0
    for begin in range(0, N, stride):
        end = min(begin + max_length, N)
        targets = end - prev_end  # tokens not scored by the previous window
        window = ids[:, begin:end].to(model.device)
        labels = window.clone()
        labels[:, :-targets] = IGNORE_INDEX
        loss = model(window, labels=labels).loss
        weight = int((labels != IGNORE_INDEX).sum()) - labels.size(0)  # the guide: minus one for the shift
        nll_sum += float(loss) * weight
        counted += weight
        windows += 1
        prev_end = end
        if end == N:
            break
    mean = nll_sum / counted
    return Perplexity(math.exp(mean), mean, N, counted, windows, max_length, stride)
