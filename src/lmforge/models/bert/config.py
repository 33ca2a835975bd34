"""BERT's configuration: `BertConfig`, with the field names of transformers' BertConfig."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...nn.mlp import ACTIVATIONS
from ..config import ConfigError, PretrainedConfig, positive_int, probability


@dataclass
class BertConfig(PretrainedConfig):
    model_type: ClassVar[str] = "bert"
    _omit_if_none: ClassVar[tuple[str, ...]] = ("torch_dtype", "problem_type", "classifier_dropout",
                                                 "classifier_pooling")

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_dropout: float | None = None
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    tie_word_embeddings: bool = True
    # What BertForSequenceClassification classifies: None / "cls" is BERT's pooled [CLS] (the pooler);
    # "mean" the mean of the last hidden states over real tokens (ModernBERT's config name). transformers'
    # BertForSequenceClassification ignores the key and always uses the pooler.
    classifier_pooling: str | None = None

    def _validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings"):
            positive_int(self, name)
        if not isinstance(self.type_vocab_size, int) or self.type_vocab_size < 1:
            raise ConfigError(f"type_vocab_size must be >= 1, got {self.type_vocab_size!r}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not supported; choose one of {sorted(ACTIVATIONS)}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            probability(self, name)
        if self.classifier_pooling not in (None, "cls", "mean"):
            raise ConfigError(f"classifier_pooling must be 'cls' or 'mean', got {self.classifier_pooling!r}")
        if not (float(self.layer_norm_eps) > 0):
            raise ConfigError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        if not (0 <= self.pad_token_id < self.vocab_size):
            raise ConfigError(f"pad_token_id ({self.pad_token_id}) must be in [0, vocab_size={self.vocab_size})")
        if self.position_embedding_type != "absolute":
            raise ConfigError(
                f"position_embedding_type {self.position_embedding_type!r} is not supported (only 'absolute')"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads
