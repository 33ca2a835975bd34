"""BERT (post-LN encoder): BertConfig, BertModel and its task heads; registers model_type 'bert'."""

from ...auto import register_model
from .config import BertConfig
from .model import (
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForNextSentencePrediction,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    BertPreTrainedModel,
)

register_model(
    "bert",
    BertConfig,
    {
        "base": BertModel,
        "masked-lm": BertForMaskedLM,
        "pretraining": BertForPreTraining,
        "next-sentence": BertForNextSentencePrediction,
        "sequence-classification": BertForSequenceClassification,
        "token-classification": BertForTokenClassification,
        "question-answering": BertForQuestionAnswering,
        "multiple-choice": BertForMultipleChoice,
    },
)

__all__ = [
    "BertConfig", "BertForMaskedLM", "BertForMultipleChoice", "BertForNextSentencePrediction", "BertForPreTraining",
    "BertForQuestionAnswering", "BertForSequenceClassification", "BertForTokenClassification", "BertModel",
    "BertPreTrainedModel",
]
