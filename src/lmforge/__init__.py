"""lmforge: pretrained Transformer language models on PyTorch, with a Hugging-Face-compatible surface."""

import logging

from .auto import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForNextSentencePrediction,
    AutoModelForPreTraining,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    register_model,
)
from .hub import CheckpointError
from .models.bert import (
    BertConfig,
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForNextSentencePrediction,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from .models.config import ConfigError

# A library only adds a NullHandler; the application (lmforge.cli, or the caller) configures output.
logging.getLogger("lmforge").addHandler(logging.NullHandler())

# Decoder families, ELECTRA, T5 and the KV cache, imported on first use: `import lmforge` stays light.
_LAZY = {
    **{name: "lmforge.models.gpt2" for name in (
        "GPT2Config", "GPT2Model", "GPT2LMHeadModel", "GPT2ForSequenceClassification", "GPT2ForTokenClassification")},
    **{name: "lmforge.models.llama" for name in (
        "LlamaConfig", "LlamaModel", "LlamaForCausalLM", "LlamaForSequenceClassification",
        "Qwen2Config", "Qwen2Model", "Qwen2ForCausalLM", "Qwen2ForSequenceClassification")},
    **{name: "lmforge.models.electra" for name in (
        "ElectraConfig", "ElectraModel", "ElectraForPreTraining", "ElectraForMaskedLM",
        "ElectraForSequenceClassification", "ElectraForTokenClassification")},
    **{name: "lmforge.models.bart" for name in (
        "BartConfig", "BartModel", "BartForConditionalGeneration", "BartForSequenceClassification")},
    **{name: "lmforge.models.marian" for name in ("MarianConfig", "MarianModel", "MarianMTModel")},
    **{name: "lmforge.models.t5" for name in (
        "T5Config", "T5Model", "T5ForConditionalGeneration", "T5EncoderModel")},
    "KVCache": "lmforge.nn",
    **{name: "lmforge.generation" for name in ("GenerationConfig", "TextStreamer")},
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    # Tokenizer and pipelines are imported lazily: `import lmforge` stays light.
    if name in ("AutoTokenizer", "Tokenizer"):
        from . import tokenizers

        return getattr(tokenizers, name)
    if name == "pipeline":
        from .pipelines import pipeline

        return pipeline
    raise AttributeError(f"module 'lmforge' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    *_LAZY,
    "AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForMaskedLM", "AutoModelForMultipleChoice",
    "AutoModelForNextSentencePrediction", "AutoModelForPreTraining", "AutoModelForQuestionAnswering",
    "AutoModelForSeq2SeqLM", "AutoModelForSequenceClassification", "AutoModelForTokenClassification",
    "AutoTokenizer", "BertConfig",
    "BertForMaskedLM", "BertForMultipleChoice", "BertForNextSentencePrediction", "BertForPreTraining",
    "BertForQuestionAnswering", "BertForSequenceClassification", "BertForTokenClassification", "BertModel",
    "CheckpointError", "ConfigError", "Tokenizer", "pipeline", "register_model",
]
