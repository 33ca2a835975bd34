"""pipeline(task, model): one file per task over a shared base (base.py). A checkpoint folder (or model + tokenizer) behind one call, as `transformers.pipeline`.

    fill = pipeline("fill-mask", model="runs/pretrain/final")
    fill("the acting in this [MASK] was terrible", top_k=3)
    clf = pipeline("text-classification", model="runs/finetune/best")
    clf(["great!", "awful"], top_k=None)
    gen = pipeline("text-generation", model="runs/clm/final")
    gen("Once upon a time", max_new_tokens=40)

Inputs are sorted by length and run in batches (restoring the caller's order afterwards), so a
batch holds sequences of similar length and little padding.
"""

from __future__ import annotations

from .base import Pipeline
from .fill_mask import FillMaskPipeline
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
}


def pipeline(task: str, model=None, tokenizer=None, device=None, batch_size: int = 32, bf16: bool = False,
             unpad: bool = True) -> Pipeline:
    if task not in PIPELINES:
        raise ValueError(f"unknown pipeline task {task!r}; available: {sorted(PIPELINES)}")
    if model is None:
        raise ValueError(f"pipeline({task!r}) needs model=<checkpoint folder>: nothing is downloaded from a hub")
    return PIPELINES[task](model, tokenizer=tokenizer, device=device, batch_size=batch_size, bf16=bf16, unpad=unpad)
