"""Llama and Qwen2 (a configuration of the same code). Importing this package registers both with the Auto
classes (model_types "llama" and "qwen2")."""

from ...auto import register_model
from .config import LlamaConfig, Qwen2Config
from .model import (
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    LlamaModel,
    LlamaPreTrainedModel,
    Qwen2ForCausalLM,
    Qwen2ForSequenceClassification,
    Qwen2Model,
)

register_model("llama", LlamaConfig, {
    "base": LlamaModel,
    "causal-lm": LlamaForCausalLM,
    "sequence-classification": LlamaForSequenceClassification,
})
register_model("qwen2", Qwen2Config, {
    "base": Qwen2Model,
    "causal-lm": Qwen2ForCausalLM,
    "sequence-classification": Qwen2ForSequenceClassification,
})

__all__ = ["LlamaConfig", "LlamaForCausalLM", "LlamaForSequenceClassification", "LlamaModel",
           "LlamaPreTrainedModel", "Qwen2Config", "Qwen2ForCausalLM", "Qwen2ForSequenceClassification", "Qwen2Model"]
