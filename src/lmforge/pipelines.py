"""Pipelines: a checkpoint folder (or model + tokenizer) behind one call, as `transformers.pipeline`.

    fill = pipeline("fill-mask", model="runs/pretrain/final")
    fill("the acting in this [MASK] was terrible", top_k=3)
    clf = pipeline("text-classification", model="runs/finetune/best")
    clf(["great!", "awful"], top_k=None)

Inputs are sorted by length and run in batches (restoring the caller's order afterwards), so a
batch holds sequences of similar length and little padding.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from .auto import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoModelForTokenClassification
from .data.batches import length_sorted_batches
from .modeling import cpu_caps, onednn
from .tokenizers import AutoTokenizer


class Pipeline:
    task: str = ""
    auto_model: Any = None

    def __init__(self, model, tokenizer=None, device: str | torch.device | None = None, batch_size: int = 32,
                 max_length: int | None = None, bf16: bool = False, unpad: bool = True):
        if isinstance(model, (str, os.PathLike)):
            path = model
            model = self.auto_model.from_pretrained(path)
            tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(path)
        elif tokenizer is None:
            raise ValueError(f"{self.task}: pass a tokenizer together with a model object")
        elif isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        # Pipelines read outputs at real tokens only, where "unpadded" equals "sdpa" (within 1e-5)
        # and runs faster: padding is dropped before the layers. unpad=False keeps padded batches.
        self.model = model.eval().set_attn_implementation("unpadded" if unpad else "sdpa")
        if device is not None:
            self.model.to(device)
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
        inputs = {k: v.to(self.device) for k, v in batch.items()
                  if k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(**inputs)

    def _run_batched(self, items: list[Any], lengths: list[int], run: Callable[[list[Any]], list[Any]]) -> list[Any]:
        results: list[Any] = [None] * len(items)
        with onednn.frozen_weights():  # the weights do not change during a call: prepare them once
            for indices in length_sorted_batches(lengths, self.batch_size):
                for i, out in zip(indices, run([items[i] for i in indices])):
                    results[i] = out
        return results


class FillMaskPipeline(Pipeline):
    task = "fill-mask"
    auto_model = AutoModelForMaskedLM

    def __call__(self, inputs: str | list[str], top_k: int = 5):
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        mask_token = self.tokenizer.mask_token
        for text in texts:
            if mask_token not in text:
                raise ValueError(f"fill-mask: no {mask_token} token in {text!r}")
        lengths = [len(t) for t in texts]
        results = self._run_batched(texts, lengths, lambda batch: self._fill(batch, top_k))
        return results[0] if single else results

    def _fill(self, texts: list[str], top_k: int) -> list[Any]:
        batch = self._encode(texts)
        logits = self._forward(batch).logits.float()  # (B, T, V)
        mask_id = self.tokenizer.mask_token_id
        outputs = []
        for b in range(len(texts)):
            ids = batch["input_ids"][b][batch["attention_mask"][b].bool()]
            positions = (ids == mask_id).nonzero().flatten().tolist()
            per_mask = []
            for position in positions:
                probs = logits[b, position].softmax(-1)
                scores, token_ids = probs.topk(top_k)
                candidates = []
                for score, token_id in zip(scores.tolist(), token_ids.tolist()):
                    filled = ids.clone()
                    filled[position] = token_id
                    candidates.append({
                        "score": score,
                        "token": token_id,
                        "token_str": self.tokenizer.decode([token_id]),
                        "sequence": self.tokenizer.decode(filled.tolist(), skip_special_tokens=True),
                    })
                per_mask.append(candidates)
            # One mask: a list of candidates (as HF); several masks: one list per mask.
            outputs.append(per_mask[0] if len(per_mask) == 1 else per_mask)
        return outputs


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


class TokenClassificationPipeline(Pipeline):
    """Per-token tags aggregated into entities (BIO groups) with character offsets into the text."""

    task = "token-classification"
    auto_model = AutoModelForTokenClassification

    def __call__(self, inputs: str | list[str], aggregation_strategy: str = "simple"):
        if aggregation_strategy not in ("simple", "none"):
            raise ValueError(f"aggregation_strategy must be 'simple' or 'none', got {aggregation_strategy!r}")
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        results = self._run_batched(texts, [len(t) for t in texts], lambda b: self._tag(b, aggregation_strategy))
        return results[0] if single else results

    def _tag(self, texts: list[str], aggregation_strategy: str) -> list[Any]:
        batch = self._encode(texts, return_offsets_mapping=True)
        probs = self._forward(batch).logits.float().softmax(-1)  # (B, T, num_labels)
        id2label = self.model.config.id2label
        out = []
        for b, text in enumerate(texts):
            word_ids = batch.word_ids(b)
            offsets = batch["offset_mapping"][b].tolist()
            tokens = []
            for t, word in enumerate(word_ids):
                if word is None:
                    continue
                score, label_id = probs[b, t].max(-1)
                start, end = offsets[t]
                first = t == 0 or word_ids[t - 1] != word
                tokens.append({"entity": id2label[int(label_id)], "score": float(score), "index": t,
                               "word": text[start:end], "start": start, "end": end, "word_id": word, "first": first})
            if aggregation_strategy == "none":
                out.append([{k: v for k, v in tok.items() if k not in ("word_id", "first")} for tok in tokens])
            else:
                out.append(_group_entities(text, tokens))
        return out


def _group_entities(text: str, tokens: list[dict]) -> list[dict]:
    """Words take the tag of their first sub-token; B-X starts an entity, I-X continues one of X."""
    words: list[dict] = []
    for tok in tokens:
        if tok["first"] or not words:
            words.append({"entity": tok["entity"], "scores": [tok["score"]], "start": tok["start"], "end": tok["end"]})
        else:
            words[-1]["end"] = tok["end"]
            words[-1]["scores"].append(tok["score"])
    entities: list[dict] = []
    current: dict | None = None
    for word in words:
        tag = word["entity"]
        prefix, _, kind = tag.partition("-") if "-" in tag else ("", "", tag)
        if tag == "O":
            current = None
            continue
        if current is not None and prefix == "I" and current["entity_group"] == kind:
            current["end"] = word["end"]
            current["scores"].extend(word["scores"])
            continue
        current = {"entity_group": kind, "scores": list(word["scores"]), "start": word["start"], "end": word["end"]}
        entities.append(current)
    return [{"entity_group": e["entity_group"], "score": sum(e["scores"]) / len(e["scores"]),
             "word": text[e["start"]:e["end"]], "start": e["start"], "end": e["end"]} for e in entities]


PIPELINES = {
    "fill-mask": FillMaskPipeline,
    "text-classification": TextClassificationPipeline,
    "sentiment-analysis": TextClassificationPipeline,
    "token-classification": TokenClassificationPipeline,
    "ner": TokenClassificationPipeline,
}


def pipeline(task: str, model=None, tokenizer=None, device=None, batch_size: int = 32, bf16: bool = False,
             unpad: bool = True) -> Pipeline:
    if task not in PIPELINES:
        raise ValueError(f"unknown pipeline task {task!r}; available: {sorted(PIPELINES)}")
    if model is None:
        raise ValueError(f"pipeline({task!r}) needs model=<checkpoint folder>: nothing is downloaded from a hub")
    return PIPELINES[task](model, tokenizer=tokenizer, device=device, batch_size=batch_size, bf16=bf16, unpad=unpad)
