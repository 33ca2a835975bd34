"""token-classification (ner): per-token tags grouped into entities with character offsets."""

from __future__ import annotations

from typing import Any

from ..auto import AutoModelForTokenClassification
from .base import Pipeline


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
