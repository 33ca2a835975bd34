"""Scoring seq2seq models by what they generate: translate sources in length-sorted batches, then sacreBLEU's
corpus BLEU and chrF against the references (Chinese targets use sacreBLEU's "zh" tokenizer, which splits CJK
characters), placeholder survival (`lmforge.data.parallel.placeholder_survival`) and the teacher-forced loss.

sacreBLEU is the optional `translate` extra (`pip install 'lmforge[translate]'`), imported on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..data.batches import length_sorted_batches
from ..data.collators import pad_collate
from ..data.parallel import Pair, pair_features, placeholder_survival, placeholders, token_ids
from ..nn.heads import IGNORE_INDEX, shift_tokens_right
from .scoring import TASK_METRICS

# Metrics a seq2seq evaluation reports; the first is fine-tuning's default metric_for_best. chrF moves with
# every character a small model gets right, while BLEU stays at 0 until whole 4-grams match.
SEQ2SEQ_METRICS = TASK_METRICS["seq2seq"]


def sacrebleu_module():
    try:
        import sacrebleu
    except ImportError as e:
        raise ImportError("BLEU / chrF need sacrebleu: pip install 'lmforge[translate]'") from e
    return sacrebleu


def bleu_tokenize(target_language: str | None) -> str:
    """sacreBLEU's tokenizer for a target language: "zh" for Chinese, else its default "13a"."""
    return "zh" if target_language in ("zh", "zh_CN", "zh-CN", "zh-Hans") else "13a"


def corpus_scores(outputs: Sequence[str], references: Sequence[str], target_language: str | None = None
                  ) -> dict[str, float]:
    """{"bleu", "chrf"} (0-100) of `outputs` against one reference each."""
    if len(outputs) != len(references):
        raise ValueError(f"{len(outputs)} outputs but {len(references)} references")
    sacrebleu = sacrebleu_module()
    bleu = sacrebleu.corpus_bleu(list(outputs), [list(references)], tokenize=bleu_tokenize(target_language))
    chrf = sacrebleu.corpus_chrf(list(outputs), [list(references)])
    return {"bleu": float(bleu.score), "chrf": float(chrf.score)}


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def translate(model, tokenizer, texts: Sequence[str], *, batch_size: int = 32, num_beams: int = 1,
              max_new_tokens: int = 128, max_source_length: int = 128) -> list[str]:
    """Outputs of an encoder-decoder for `texts` (in their order): sources encoded by `token_ids` (EOS-terminated)
    in length-sorted, right-padded batches, generated greedily or with beams, decoded without special tokens."""
    sources = token_ids(tokenizer, texts, max_source_length)
    pad_id = model.config.pad_token_id
    outputs: list[str] = [""] * len(texts)
    device = model_device(model)
    for indices in length_sorted_batches([len(s) for s in sources], batch_size):
        batch = pad_collate([{"input_ids": sources[i], "attention_mask": [1] * len(sources[i])} for i in indices],
                            pad_id)
        ids = model.generate(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                             num_beams=num_beams, max_new_tokens=max_new_tokens)
        # decoded as transformers' translation pipeline decodes (no clean-up of spaces before punctuation)
        texts = tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        for i, text in zip(indices, texts):
            outputs[i] = text
    return outputs


@torch.inference_mode()
def teacher_forced_loss(model, features: Sequence[dict[str, list[int]]], batch_size: int) -> float:
    """Mean token cross-entropy of the labels (no label smoothing) with the decoder fed the references."""
    total, count = 0.0, 0
    device = model_device(model)
    config = model.config
    for indices in length_sorted_batches([len(f["input_ids"]) for f in features], batch_size):
        batch = pad_collate([features[i] for i in indices], config.pad_token_id)
        labels = batch["labels"].to(device)
        decoder_ids = shift_tokens_right(labels, config.pad_token_id, config.decoder_start_token_id)
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                       decoder_input_ids=decoder_ids).logits.float()
        total += F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                                 reduction="sum").item()
        count += int((labels != IGNORE_INDEX).sum())
    return total / max(count, 1)


def score_pairs(model, tokenizer, pairs: Sequence[Pair], *, target_language: str | None = None, batch_size: int = 32,
                num_beams: int = 1, max_new_tokens: int = 128, max_source_length: int = 128,
                max_target_length: int = 128) -> tuple[dict[str, Any], list[str]]:
    """(metrics, outputs): chrF, BLEU, placeholder survival (None when no source has a placeholder) and the
    teacher-forced loss of `model` on `pairs`, and its output for each source."""
    outputs = translate(model, tokenizer, [p.source for p in pairs], batch_size=batch_size, num_beams=num_beams,
                        max_new_tokens=max_new_tokens, max_source_length=max_source_length)
    metrics: dict[str, Any] = corpus_scores(outputs, [p.target for p in pairs], target_language)
    metrics["placeholders"] = placeholder_survival([p.source for p in pairs], outputs)
    metrics["with_placeholders"] = sum(1 for p in pairs if placeholders(p.source))
    features = pair_features(pairs, tokenizer, max_source_length, max_target_length)
    metrics["loss"] = teacher_forced_loss(model, features, batch_size)
    return {k: metrics[k] for k in (*SEQ2SEQ_METRICS, "with_placeholders")}, outputs
