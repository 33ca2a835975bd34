"""BartConfig: HF's field names (`d_model`, `encoder_layers`, ...), validated; unknown keys kept in `extra`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...nn.mlp import ACTIVATIONS
from ..config import ConfigError, PretrainedConfig, positive_int, probability

# HF's BartConfig.attribute_map: generic names some config.json files use instead of BART's own.
GENERIC_NAMES = {"hidden_size": "d_model", "num_attention_heads": "encoder_attention_heads",
                 "num_hidden_layers": "encoder_layers"}


@dataclass
class BartConfig(PretrainedConfig):
    model_type: ClassVar[str] = "bart"
    _omit_if_none: ClassVar[tuple[str, ...]] = ("torch_dtype", "problem_type")
    default_num_labels: ClassVar[int] = 3  # HF's default for BART (MNLI heads)

    vocab_size: int = 50265
    max_position_embeddings: int = 1024
    d_model: int = 1024
    encoder_layers: int = 12
    encoder_ffn_dim: int = 4096
    encoder_attention_heads: int = 16
    decoder_layers: int = 12
    decoder_ffn_dim: int = 4096
    decoder_attention_heads: int = 16
    encoder_layerdrop: float = 0.0  # read and written back; layers are never skipped here (HF's default 0.0)
    decoder_layerdrop: float = 0.0
    activation_function: str = "gelu"
    dropout: float = 0.1  # embeddings and each sub-layer's output
    attention_dropout: float = 0.0  # attention probabilities
    activation_dropout: float = 0.0  # after the feed-forward activation
    init_std: float = 0.02
    classifier_dropout: float = 0.0
    scale_embedding: bool = False  # token embeddings * sqrt(d_model)
    use_cache: bool = True
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2
    decoder_start_token_id: int | None = 2
    forced_eos_token_id: int | None = 2
    is_encoder_decoder: bool = True
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.id2label is None and self.num_labels is None:
            self.num_labels = self.default_num_labels
        super().__post_init__()

    @classmethod
    def _normalise_dict(cls, data: dict[str, Any]) -> dict[str, Any]:
        data = super()._normalise_dict(data)
        for generic, own in GENERIC_NAMES.items():
            if generic in data and own not in data:
                data[own] = data.pop(generic)
        return data

    def _validate(self) -> None:
        for name in ("vocab_size", "max_position_embeddings", "d_model", "encoder_layers", "encoder_ffn_dim",
                     "encoder_attention_heads", "decoder_layers", "decoder_ffn_dim", "decoder_attention_heads"):
            positive_int(self, name)
        for name in ("encoder_attention_heads", "decoder_attention_heads"):
            if self.d_model % getattr(self, name) != 0:
                raise ConfigError(f"d_model ({self.d_model}) must be divisible by {name} ({getattr(self, name)})")
        if self.activation_function not in ACTIVATIONS:
            raise ConfigError(f"activation_function {self.activation_function!r} is not supported; "
                              f"choose one of {sorted(ACTIVATIONS)}")
        for name in ("dropout", "attention_dropout", "activation_dropout", "classifier_dropout",
                     "encoder_layerdrop", "decoder_layerdrop"):
            probability(self, name)
        if self.encoder_layerdrop or self.decoder_layerdrop:
            raise ConfigError("encoder_layerdrop / decoder_layerdrop > 0 (skipping whole layers in training) is not "
                              "supported; set them to 0.0")
        if not self.tie_word_embeddings:
            raise ConfigError("tie_word_embeddings=False is not supported: the LM head shares the decoder's token "
                              "embeddings (as in every released BART / Marian checkpoint)")
        if self.pad_token_id is None or not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"pad_token_id ({self.pad_token_id}) must be in [0, vocab_size={self.vocab_size}): "
                              "encoder-decoders pad and shift labels with it")

    @property
    def target_vocab_size(self) -> int:
        """Rows of the decoder's token embeddings, the LM head and final_logits_bias (Marian may differ)."""
        return self.vocab_size

    # HF's generic names, read-only (the fields above are what config.json holds).
    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_hidden_layers(self) -> int:
        return self.encoder_layers

    @property
    def num_attention_heads(self) -> int:
        return self.encoder_attention_heads
