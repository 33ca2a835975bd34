"""T5 (v1.0 and v1.1 / Flan-T5): T5Model, T5ForConditionalGeneration, T5EncoderModel. Importing this package
registers the family with the Auto classes (model_type "t5")."""

from ...auto import register_model
from .config import T5Config
from .model import T5EncoderModel, T5ForConditionalGeneration, T5Model, T5PreTrainedModel

register_model("t5", T5Config, {
    "base": T5Model,
    "seq2seq-lm": T5ForConditionalGeneration,
})

__all__ = ["T5Config", "T5EncoderModel", "T5ForConditionalGeneration", "T5Model", "T5PreTrainedModel"]
