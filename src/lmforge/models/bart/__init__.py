"""BART: BartModel, BartForConditionalGeneration, BartForSequenceClassification, and the encoder-decoder layers
Marian reuses. Importing this package registers the family with the Auto classes (model_type "bart")."""

from ...auto import register_model
from .config import BartConfig
from .model import (
    BartForConditionalGeneration,
    BartForSequenceClassification,
    BartModel,
    BartPreTrainedModel,
    shift_tokens_right,
)

register_model("bart", BartConfig, {
    "base": BartModel,
    "seq2seq-lm": BartForConditionalGeneration,
    "sequence-classification": BartForSequenceClassification,
})

__all__ = ["BartConfig", "BartForConditionalGeneration", "BartForSequenceClassification", "BartModel",
           "BartPreTrainedModel", "shift_tokens_right"]
