"""text-classification: labels and scores of texts or text pairs."""

from __future__ import annotations

from typing import Any

import torch

from ..auto import AutoModelForSequenceClassification
from .base import Pipeline


class TextClassificationPipeline(Pipeline):
    """Single texts, or pairs given as {"text": ..., "text_pair": ...}. top_k=None returns every label."""

    task = "text-classification"
    auto_model = AutoModelForSequenceClassification

    def __call__(self, inputs, top_k: int | None = 1, function_to_apply: str | None = None):
        single = isinstance(inputs, (str, dict))
        items = [inputs] if single else list(inputs)
        pairs = [(x["text"], x.get("text_pair")) if isinstance(x, dict) else (x, None) for x in items]
        lengths = [len(a) + len(b or "") for a, b in pairs]
        results = self._run_batched(pairs, lengths, lambda batch: self._classify(batch, top_k, function_to_apply))
        return results[0] if single else results

    def scores(self, pairs: list[tuple[str, str | None]], function_to_apply: str | None = None) -> torch.Tensor:
        texts = [a for a, _ in pairs]
        second = [b for _, b in pairs]
        batch = self._encode(texts, second if any(s is not None for s in second) else None)
        logits = self._forward(batch).logits.float()  # (B, num_labels)
        config = self.model.config
        if function_to_apply is None:
            multi = config.problem_type == "multi_label_classification" or config.num_labels == 1
            function_to_apply = "sigmoid" if multi else "softmax"
        if function_to_apply == "sigmoid":
            return logits.sigmoid()
        if function_to_apply == "softmax":
            return logits.softmax(-1)
        if function_to_apply == "none":
            return logits
        raise ValueError(f"function_to_apply must be softmax, sigmoid or none, got {function_to_apply!r}")

    def _classify(self, pairs, top_k, function_to_apply) -> list[Any]:
        id2label = self.model.config.id2label
        out = []
        for row in self.scores(pairs, function_to_apply).tolist():
            ranked = sorted(({"label": id2label[i], "score": s} for i, s in enumerate(row)), key=lambda d: -d["score"])
            if top_k == 1:
                out.append(ranked[0])
            else:
                out.append(ranked if top_k is None else ranked[:top_k])
        return out
