"""GPT-2: GPT2Model, GPT2LMHeadModel, GPT2ForSequenceClassification, GPT2ForTokenClassification.
Importing this package registers the family with the Auto classes (model_type "gpt2")."""

from ...auto import register_model
from .config import GPT2Config
from .model import (
    GPT2ForSequenceClassification,
    GPT2ForTokenClassification,
    GPT2LMHeadModel,
    GPT2Model,
    GPT2PreTrainedModel,
)

register_model("gpt2", GPT2Config, {
    "base": GPT2Model,
    "causal-lm": GPT2LMHeadModel,
    "sequence-classification": GPT2ForSequenceClassification,
    "token-classification": GPT2ForTokenClassification,
})

__all__ = ["GPT2Config", "GPT2ForSequenceClassification", "GPT2ForTokenClassification", "GPT2LMHeadModel",
           "GPT2Model", "GPT2PreTrainedModel"]
