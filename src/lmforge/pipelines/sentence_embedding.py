"""sentence-embedding: one vector per text, pooled over its tokens as sentence-transformers does.

A sentence-transformers folder (e.g. all-MiniLM-L6-v2) says how to pool in 1_Pooling/config.json (CLS token,
mean or max over real tokens) and whether to L2-normalise (a Normalize module in modules.json); a plain encoder
folder gets mean pooling without normalisation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..auto import AutoModel
from .base import Pipeline

POOLING_MODES = ("cls", "mean", "max")


def read_pooling(folder: str | os.PathLike) -> tuple[str, bool]:
    """(pooling mode, normalize) of a sentence-transformers folder; ("mean", False) when it has no such files."""
    folder = Path(folder)
    mode, normalize = "mean", False
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return mode, normalize
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    for module in modules:
        kind = module.get("type", "").rsplit(".", 1)[-1]
        if kind == "Normalize":
            normalize = True
        elif kind == "Pooling":
            pooling_file = folder / module.get("path", "") / "config.json"
            if pooling_file.is_file():
                config = json.loads(pooling_file.read_text(encoding="utf-8"))
                chosen = [m for m in POOLING_MODES if config.get(f"pooling_mode_{m}_token" if m == "cls"
                                                                  else f"pooling_mode_{m}_tokens")]
                if len(chosen) != 1:
                    raise ValueError(f"{pooling_file}: exactly one of cls / mean / max pooling is supported, "
                                     f"got {chosen or 'none'}")
                mode = chosen[0]
    return mode, normalize


class SentenceEmbeddingPipeline(Pipeline):
    """texts -> list of float vectors (hidden_size each). `pooling` and `normalize` default to the folder's
    sentence-transformers settings (mean, no normalisation for a model object or a plain folder)."""

    task = "sentence-embedding"
    auto_model = AutoModel

    def __init__(self, model, tokenizer=None, device=None, batch_size: int = 32, max_length: int | None = None,
                 bf16: bool = False, unpad: bool = True, pooling: str | None = None, normalize: bool | None = None):
        folder_mode, folder_normalize = (read_pooling(model) if isinstance(model, (str, os.PathLike))
                                         else ("mean", False))
        super().__init__(model, tokenizer=tokenizer, device=device, batch_size=batch_size, max_length=max_length,
                         bf16=bf16, unpad=unpad)
        self.pooling = pooling or folder_mode
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        self.normalize = folder_normalize if normalize is None else normalize

    def __call__(self, inputs: str | list[str]) -> list[float] | list[list[float]]:
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        results = self._run_batched(texts, [len(t) for t in texts], self._embed)
        return results[0] if single else results

    def _embed(self, texts: list[str]) -> list[list[float]]:
        batch = self._encode(texts)
        hidden = self._forward(batch).last_hidden_state.float()  # (B, T, H)
        mask = batch["attention_mask"].to(hidden.device)
        return pool_embeddings(hidden, mask, self.pooling, self.normalize).tolist()


def pool_embeddings(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str, normalize: bool) -> torch.Tensor:
    """hidden (B, T, H), attention_mask (B, T) -> one vector per row (B, H): the CLS token, or the mean or max
    over real tokens; L2-normalised when `normalize` (sentence-transformers' Pooling + Normalize modules)."""
    mask = attention_mask.unsqueeze(-1).bool()  # (B, T, 1)
    if pooling == "cls":
        pooled = hidden[:, 0]
    elif pooling == "mean":
        pooled = hidden.masked_fill(~mask, 0).sum(1) / mask.sum(1).clamp(min=1)  # (B, H)
    else:
        pooled = hidden.masked_fill(~mask, float("-inf")).amax(1)  # (B, H)
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
    return pooled
