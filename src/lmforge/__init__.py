"""lmforge: pretrained Transformer language models on PyTorch, with a Hugging-Face-compatible surface."""

from .auto import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForNextSentencePrediction,
    AutoModelForPreTraining,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    register_model,
)
from .checkpoint import CheckpointError
from .config import BertConfig, ConfigError
from .modeling.bert import (
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForNextSentencePrediction,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)


def __getattr__(name: str):
    # Tokenizer and pipelines are imported lazily: `import lmforge` stays light.
    if name in ("AutoTokenizer", "Tokenizer"):
        from . import tokenization

        return getattr(tokenization, name)
    if name == "pipeline":
        from .pipelines import pipeline

        return pipeline
    raise AttributeError(f"module 'lmforge' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "AutoConfig", "AutoModel", "AutoModelForMaskedLM", "AutoModelForMultipleChoice",
    "AutoModelForNextSentencePrediction", "AutoModelForPreTraining", "AutoModelForQuestionAnswering",
    "AutoModelForSequenceClassification", "AutoModelForTokenClassification", "AutoTokenizer", "BertConfig",
    "BertForMaskedLM", "BertForMultipleChoice", "BertForNextSentencePrediction", "BertForPreTraining",
    "BertForQuestionAnswering", "BertForSequenceClassification", "BertForTokenClassification", "BertModel",
    "CheckpointError", "ConfigError", "Tokenizer", "pipeline", "register_model",
]
