"""pipeline(task, model): one file per task over a shared base (base.py). A checkpoint folder (or model + tokenizer) behind one call, as `transformers.pipeline`.

    fill = pipeline("fill-mask", model="runs/pretrain/final")
    fill("the acting in this [MASK] was terrible", top_k=3)
    clf = pipeline("text-classification", model="runs/finetune/best")
    clf(["great!", "awful"], top_k=None)
    embed = pipeline("sentence-embedding", model="all-MiniLM-L6-v2-folder")  # pooled (+ normalised) vectors
    gen = pipeline("text-generation", model="runs/clm/final")
    gen("Once upon a time", max_new_tokens=40)
    mt = pipeline("translation", model="runs/mt/best")        # any encoder-decoder folder (BART, Marian, T5)
    mt("Open the file", num_beams=4)                            # [{"translation_text": ...}]

Inputs are sorted by length and run in batches (restoring the caller's order afterwards), so a
batch holds sequences of similar length and little padding.
"""

from __future__ import annotations

from .base import Pipeline
from .fill_mask import FillMaskPipeline
from .sentence_embedding import SentenceEmbeddingPipeline
from .text2text import SummarizationPipeline, TranslationPipeline
from .text_classification import TextClassificationPipeline
from .text_generation import TextGenerationPipeline
from .token_classification import TokenClassificationPipeline

PIPELINES = {
    "fill-mask": FillMaskPipeline,
    "text-classification": TextClassificationPipeline,
    "sentiment-analysis": TextClassificationPipeline,
    "text-generation": TextGenerationPipeline,
    "token-classification": TokenClassificationPipeline,
    "ner": TokenClassificationPipeline,
    "sentence-embedding": SentenceEmbeddingPipeline,
    "translation": TranslationPipeline,
    "summarization": SummarizationPipeline,
}


def pipeline(task: str, model=None, tokenizer=None, device=None, batch_size: int = 32, bf16: bool = False,
             unpad: bool = True) -> Pipeline:
    if task not in PIPELINES:
        raise ValueError(f"unknown pipeline task {task!r}; available: {sorted(PIPELINES)}")
    if model is None:
        raise ValueError(f"pipeline({task!r}) needs model=<checkpoint folder>: nothing is downloaded from a hub")
    return PIPELINES[task](model, tokenizer=tokenizer, device=device, batch_size=batch_size, bf16=bf16, unpad=unpad)
