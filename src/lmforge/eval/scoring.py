"""Scoring a model on encoded examples: logits in length-sorted batches (order restored), then the task's
metrics (`TASK_METRICS`; `LOWER_IS_BETTER` names the ones to minimise)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..cpu import capabilities as cpu_caps
from ..cpu import onednn
from ..data.batches import length_sorted_batches
from ..data.collators import pad_collate
from .metrics import compute_metrics

# Metrics each task reports on evaluation; the first is the default `metric_for_best`.
TASK_METRICS = {
    "single_label": ("accuracy", "macro_f1", "mcc", "loss"),
    "multi_label": ("micro_f1", "macro_f1", "subset_accuracy", "loss"),
    "regression": ("pearson", "spearman", "mse", "loss"),
    "token_classification": ("entity_f1", "entity_precision", "entity_recall", "accuracy", "loss"),
    # scored by generation (eval/translation.py); chrF first: it moves before BLEU's 4-grams match
    "seq2seq": ("chrf", "bleu", "placeholders", "loss"),
}


LOWER_IS_BETTER = frozenset({"loss", "mse"})


def run_model(model, features: Sequence[dict[str, Any]], batch_size: int, pad_token_id: int,
              bf16: bool = False) -> tuple[list[torch.Tensor], float | None]:
    """Logits of every feature, in the given order (batches of similar length, order restored):
    `[num_labels]` per sequence or `[length, num_labels]` per token sequence; plus the mean loss
    when the features have labels."""
    device = next(model.parameters()).device
    outputs: list[torch.Tensor] = [torch.empty(0)] * len(features)
    loss_sum, counted = 0.0, 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    if bf16:
        cpu_caps.warn_if_bf16_slow(device)
    with onednn.frozen_weights():  # the weights do not change while scoring: prepare them once
        for indices in length_sorted_batches([len(f["input_ids"]) for f in features], batch_size):
            batch = pad_collate([features[i] for i in indices], pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.inference_mode(), autocast:
                out = model(**batch)
            if out.loss is not None:
                loss_sum += float(out.loss) * len(indices)
                counted += len(indices)
            logits = out.logits.float().cpu()
            for row, i in enumerate(indices):
                outputs[i] = logits[row, : len(features[i]["input_ids"])] if logits.dim() == 3 else logits[row]
    return outputs, (loss_sum / counted if counted else None)


def task_metrics(task: str, logits: Sequence[torch.Tensor], items: Sequence[Any], features, label_map) -> dict:
    """Metrics of a task (see TASK_METRICS, less the loss) from per-example logits."""
    if task == "single_label":
        preds = [label_map.decode(int(x.argmax())) for x in logits]
        return compute_metrics(task, preds, [ex.label for ex in items])
    if task == "multi_label":
        preds = np.array([(x > 0).int().tolist() for x in logits], dtype=np.int64)
        refs = np.array([label_map.encode_multi(ex.label, ex.source) for ex in items], dtype=np.int64)
        return compute_metrics(task, preds, refs)
    if task == "regression":
        return compute_metrics(task, [float(x[0]) for x in logits], [ex.label for ex in items])
    pred_tags = [word_tags(x, f["word_ids"], len(sent.tokens), label_map) for x, f, sent in zip(logits, features, items)]
    out = compute_metrics(task, pred_tags, [sent.tags for sent in items])
    return {"entity_f1": out["f1"], "entity_precision": out["precision"], "entity_recall": out["recall"],
            "accuracy": out["accuracy"]}


def word_tags(logits: torch.Tensor, word_ids: Sequence[int | None], num_words: int, label_map) -> list[str]:
    """One tag per word: the prediction at its first sub-token; "O" for words cut by max_length."""
    tags = ["O"] * num_words
    seen: set[int] = set()
    pred = logits.argmax(-1).tolist()
    for t, w in enumerate(word_ids):
        if w is not None and w not in seen:
            seen.add(w)
            tags[w] = label_map.decode(pred[t])
    return tags


def make_scorer(task: str, items: Sequence[Any], features, label_map, batch_size: int, pad_token_id: int,
                bf16: bool = False):
    """`score(model) -> metrics` on fixed, encoded examples (the validation or test split)."""

    def score(model) -> dict[str, float]:
        logits, loss = run_model(model, features, batch_size, pad_token_id, bf16)
        metrics = task_metrics(task, logits, items, features, label_map)
        if loss is not None:
            metrics["loss"] = loss
        return metrics

    return score
