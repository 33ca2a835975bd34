"""`Pipeline`: a model and its tokenizer behind one call. Inputs run in length-sorted batches (order restored);
the model runs as a view of the caller's (its own module tree, sharing the tensors), so the caller's model keeps
its training flag, attention mode and device."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

import torch

from ..cpu import capabilities as cpu_caps
from ..cpu import onednn
from ..data.batches import length_sorted_batches
from ..tokenizers import AutoTokenizer


def shared_view(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model`'s module tree whose parameters and buffers are the caller's own tensors (tying
    included): switching the copy to eval or another attention mode leaves the caller's model as it was."""
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)


class Pipeline:
    task: str = ""
    auto_model: Any = None

    def __init__(self, model, tokenizer=None, device: str | torch.device | None = None, batch_size: int = 32,
                 max_length: int | None = None, bf16: bool = False, unpad: bool = True):
        if isinstance(model, (str, os.PathLike)):
            path = model
            model = self.auto_model.from_pretrained(path)  # the pipeline's own: it may move it
            tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(path)
            if device is not None:
                model.to(device)
        elif tokenizer is None:
            raise ValueError(f"{self.task}: pass a tokenizer together with a model object")
        else:
            if isinstance(tokenizer, (str, os.PathLike)):
                tokenizer = AutoTokenizer.from_pretrained(tokenizer)
            if device is not None and torch.device(device) != model.device:
                raise ValueError(f"{self.task}: the model is on {model.device}, not {device}; move the model "
                                 "first (the pipeline does not change the caller's model)")
            model = shared_view(model)
        # Pipelines read outputs at real tokens only, where "unpadded" equals "sdpa" (within 1e-5)
        # and runs faster: padding is dropped before the layers. unpad=False keeps padded batches.
        self.model = model.eval().set_attn_implementation("unpadded" if unpad else "sdpa")
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length or min(tokenizer.model_max_length, model.config.max_position_embeddings)
        self.bf16 = bf16
        if bf16:
            cpu_caps.warn_if_bf16_slow(self.device)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _encode(self, texts: list[str], pairs: list[str] | None = None, **extra):
        return self.tokenizer(texts, pairs, padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt", **extra)

    def _forward(self, batch) -> Any:
        inputs = {k: v.to(self.device) for k, v in batch.items() if k in self.tokenizer.model_input_names}
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(**inputs)

    def _run_batched(self, items: list[Any], lengths: list[int], run: Callable[[list[Any]], list[Any]]) -> list[Any]:
        results: list[Any] = [None] * len(items)
        with onednn.frozen_weights():  # the weights do not change during a call: prepare them once
            for indices in length_sorted_batches(lengths, self.batch_size):
                for i, out in zip(indices, run([items[i] for i in indices])):
                    results[i] = out
        return results
