"""Which pipeline a model folder gets, from the architectures in its config.json: `lmforge serve` offers the
endpoints of that one task."""

from __future__ import annotations

import os

from ..models.config import read_config_json

# Architecture name suffix -> pipeline task; the first match wins. Bare encoders (BertModel) embed sentences.
TASK_BY_ARCHITECTURE = (
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForMaskedLM", "fill-mask"),
    ("ForPreTraining", "fill-mask"),
    ("ForCausalLM", "text-generation"),
    ("LMHeadModel", "text-generation"),
    ("ForConditionalGeneration", "translation"),  # encoder-decoders: BART, T5 (--task summarization for summaries)
    ("MTModel", "translation"),  # MarianMTModel
    ("Model", "sentence-embedding"),
)

# Pipeline task -> the endpoints serving it.
ENDPOINTS = {
    "text-classification": ("/v1/classify",),
    "token-classification": ("/v1/token-classify",),
    "fill-mask": ("/v1/fill-mask",),
    "sentence-embedding": ("/v1/embeddings",),
    "text-generation": ("/v1/completions", "/v1/chat/completions"),
    "translation": ("/v1/translate",),
    "summarization": ("/v1/summarize",),
}


def detect_task(folder: str | os.PathLike) -> str:
    if str(folder).endswith(".gguf"):  # llama.cpp files hold causal LMs
        return "text-generation"
    data, file = read_config_json(folder)
    architectures = data.get("architectures") or []
    for suffix, task in TASK_BY_ARCHITECTURE:
        if any(arch.endswith(suffix) for arch in architectures):
            return task
    raise ValueError(f"{file}: cannot tell what to serve from architectures {architectures!r}; "
                     f"pass --task (one of {sorted(ENDPOINTS)})")
