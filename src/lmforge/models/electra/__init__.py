"""ELECTRA (BERT's encoder, replaced-token-detection heads): ElectraConfig, ElectraModel and its heads, and the
pretraining objective (`ElectraPretrainingModel`: generator + discriminator). Registers model_type 'electra'."""

from ...auto import register_model
from .config import ElectraConfig
from .model import (
    ElectraForMaskedLM,
    ElectraForPreTraining,
    ElectraForSequenceClassification,
    ElectraForTokenClassification,
    ElectraModel,
    ElectraPreTrainedModel,
)
from .pretraining import ElectraPretrainingModel, generator_config

register_model(
    "electra",
    ElectraConfig,
    {
        "base": ElectraModel,
        "pretraining": ElectraForPreTraining,
        "masked-lm": ElectraForMaskedLM,
        "sequence-classification": ElectraForSequenceClassification,
        "token-classification": ElectraForTokenClassification,
    },
)

__all__ = [
    "ElectraConfig", "ElectraForMaskedLM", "ElectraForPreTraining", "ElectraForSequenceClassification",
    "ElectraForTokenClassification", "ElectraModel", "ElectraPreTrainedModel", "ElectraPretrainingModel",
    "generator_config",
]
