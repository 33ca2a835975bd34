"""Shared pieces of the decoder parity tests: batches padded on either side, weight perturbation, comparison."""

from __future__ import annotations

import torch

ATOL = 1e-5


def perturb_(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Move every parameter away from its initial value (zero biases and unit norms hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def padded_batch(vocab_size: int, side: str, B: int = 4, T: int = 11, pad_id: int = 0, seed: int = 0):
    """Token ids (no pad ids inside real tokens) and a mask with rows of lengths T, T-3, 5, 2, padded on `side`."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab_size, (B, T), generator=g)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate([T, T - 3, 5, 2][:B]):
        if side == "right":
            mask[b, :n] = 1
        else:
            mask[b, T - n:] = 1
    return ids.masked_fill(mask == 0, pad_id), mask


def hf_positions(mask: torch.Tensor) -> torch.Tensor:
    """The positions lmforge uses (counted from each row's first real token), for transformers' models,
    whose default counts from column 0 (so left padding would shift them)."""
    first = mask.argmax(1, keepdim=True)
    return (torch.arange(mask.size(1))[None, :] - first).clamp(min=0)


def lm_labels(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ids.masked_fill(mask == 0, -100)


def close(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor | None = None, atol: float = ATOL, msg: str = ""):
    """assert_close, at the positions `where` (a (B, T) bool mask over the first two dims) only if given."""
    if where is not None:
        a, b = a[where], b[where]
    torch.testing.assert_close(a, b, atol=atol, rtol=0, msg=msg)
