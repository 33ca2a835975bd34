"""fill-mask: the top-k fillers of each mask token."""

from __future__ import annotations

from typing import Any

from ..auto import AutoModelForMaskedLM
from .base import Pipeline


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
