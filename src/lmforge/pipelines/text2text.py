"""translation and summarization: an encoder-decoder (BART, Marian, T5) generating a text for each input, with
transformers' output shapes: `[{"translation_text": ...}]` / `[{"summary_text": ...}]` for one text, one dict per
text for a list.

Sources are encoded as in fine-tuning (`lmforge.data.parallel.token_ids`: the tokenizer's special tokens, EOS
appended when its template adds none), generated greedily or with beams (`num_beams`), and decoded without special
tokens or space clean-up, as transformers' Text2TextGenerationPipeline did (transformers 5 has dropped it).
"""

from __future__ import annotations

from typing import Any

from ..auto import AutoModelForSeq2SeqLM
from ..eval.translation import translate
from .base import Pipeline

# The longest source when neither the tokenizer nor a position table bounds it (T5's relative positions).
DEFAULT_MAX_SOURCE_LENGTH = 512


class Text2TextPipeline(Pipeline):
    auto_model = AutoModelForSeq2SeqLM
    output_key = ""

    def __init__(self, model, tokenizer=None, device=None, batch_size: int = 32, bf16: bool = False,
                 unpad: bool = True):
        # The base reads max_position_embeddings, which T5 has not: pass a bound, then set the real one.
        super().__init__(model, tokenizer=tokenizer, device=device, batch_size=batch_size,
                         max_length=DEFAULT_MAX_SOURCE_LENGTH, bf16=bf16, unpad=unpad)
        limits = [self.tokenizer.model_max_length, getattr(self.model.config, "max_position_embeddings", None),
                  DEFAULT_MAX_SOURCE_LENGTH]
        self.max_length = min(x for x in limits if x)

    def __call__(self, inputs: str | list[str], num_beams: int = 1, max_new_tokens: int | None = None
                 ) -> list[dict[str, Any]]:
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        if not all(isinstance(t, str) and t for t in texts):
            raise ValueError(f"{self.task}: inputs must be non-empty strings")
        outputs = translate(self.model, self.tokenizer, texts, batch_size=self.batch_size, num_beams=num_beams,
                            max_new_tokens=max_new_tokens or self.max_length, max_source_length=self.max_length)
        return [{self.output_key: text} for text in outputs]


class TranslationPipeline(Text2TextPipeline):
    task = "translation"
    output_key = "translation_text"


class SummarizationPipeline(Text2TextPipeline):
    task = "summarization"
    output_key = "summary_text"
