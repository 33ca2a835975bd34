"""GPT2Config: HF's field names (`n_embd`, `n_layer`, ...), validated; unknown keys kept in `extra`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...nn.mlp import ACTIVATIONS
from ..config import ConfigError, PretrainedConfig, positive_int, probability

# HF's GPT2Config.attribute_map: generic names some config.json files use instead of GPT-2's own.
GENERIC_NAMES = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
                 "max_position_embeddings": "n_positions"}


@dataclass
class GPT2Config(PretrainedConfig):
    model_type: ClassVar[str] = "gpt2"
    _omit_if_none: ClassVar[tuple[str, ...]] = ("torch_dtype", "problem_type", "classifier_dropout")

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # feed-forward size; None means 4 * n_embd
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True  # scores / sqrt(D); False: no scaling
    scale_attn_by_inverse_layer_idx: bool = False  # scores further / (layer index + 1)
    reorder_and_upcast_attn: bool = False  # scores and softmax in fp32 (matters under half precision only)
    add_cross_attention: bool = False  # a cross-attention block per layer (GPT-2 as an encoder-decoder's decoder)
    use_cache: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | None = 50256
    pad_token_id: int | None = None
    tie_word_embeddings: bool = True
    classifier_dropout: float | None = None  # GPT2ForTokenClassification; falls back to 0.1 as in HF

    @classmethod
    def _normalise_dict(cls, data: dict[str, Any]) -> dict[str, Any]:
        data = super()._normalise_dict(data)
        for generic, own in GENERIC_NAMES.items():
            if generic in data and own not in data:
                data[own] = data.pop(generic)
        return data

    def _validate(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            positive_int(self, name)
        if self.n_inner is not None:
            positive_int(self, "n_inner")
        if self.n_embd % self.n_head != 0:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.activation_function not in ACTIVATIONS:
            raise ConfigError(f"activation_function {self.activation_function!r} is not supported; "
                              f"choose one of {sorted(ACTIVATIONS)}")
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "classifier_dropout"):
            probability(self, name)
        if not float(self.layer_norm_epsilon) > 0:
            raise ConfigError(f"layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"pad_token_id ({self.pad_token_id}) must be in [0, vocab_size={self.vocab_size})")

    # HF's generic names, read-only (the fields above are what config.json holds).
    @property
    def hidden_size(self) -> int:
        return self.n_embd

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layer

    @property
    def num_attention_heads(self) -> int:
        return self.n_head

    @property
    def max_position_embeddings(self) -> int:
        return self.n_positions

    @property
    def intermediate_size(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head
