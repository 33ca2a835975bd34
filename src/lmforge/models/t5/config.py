"""T5Config: HF's field names (d_model, d_kv, d_ff, num_layers, num_heads, ...), validated; unknown keys kept.

`feed_forward_proj` is "relu" (T5 v1.0: `DenseReluDense` = wo(relu(wi(x)))) or "gated-<act>" (v1.1 / Flan-T5:
"gated-gelu" = wo(gelu_new(wi_0(x)) * wi_1(x))). HF writes the derived `dense_act_fn` / `is_gated_act` too; they
are recomputed from `feed_forward_proj` here, never read.

Tying: `tie_word_embeddings` (default True, v1.0) ties lm_head to `shared`; v1.1 checkpoints set it false.
Whether the decoder output is rescaled by d_model**-0.5 before lm_head follows it, unless `scale_decoder_outputs`
is given: transformers 5 writes `tie_word_embeddings: true` for every T5 and records the v1.1 "no rescale" there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...nn.mlp import ACTIVATIONS
from ..config import ConfigError, PretrainedConfig, positive_int, probability


@dataclass
class T5Config(PretrainedConfig):
    model_type: ClassVar[str] = "t5"
    _omit_if_none: ClassVar[tuple[str, ...]] = (*PretrainedConfig._omit_if_none, "scale_decoder_outputs")

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64  # head size (d_model need not equal num_heads * d_kv)
    d_ff: int = 2048
    num_layers: int = 6  # encoder blocks
    num_decoder_layers: int | None = None  # None: as many as the encoder
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    initializer_factor: float = 1.0
    feed_forward_proj: str = "relu"
    is_encoder_decoder: bool = True
    use_cache: bool = True
    pad_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    decoder_start_token_id: int | None = None  # T5 checkpoints set 0 (the pad id)
    classifier_dropout: float = 0.0
    tie_word_embeddings: bool = True
    scale_decoder_outputs: bool | None = None  # None: as tie_word_embeddings

    def __post_init__(self) -> None:
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        super().__post_init__()

    @classmethod
    def _normalise_dict(cls, data: dict[str, Any]) -> dict[str, Any]:
        data = super()._normalise_dict(data)
        for derived in ("dense_act_fn", "is_gated_act"):  # recomputed from feed_forward_proj
            data.pop(derived, None)
        return data

    def _validate(self) -> None:
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            positive_int(self, name)
        parts = self.feed_forward_proj.split("-") if isinstance(self.feed_forward_proj, str) else []
        if not (len(parts) == 1 or (len(parts) == 2 and parts[0] == "gated")) or self.dense_act_fn not in ACTIVATIONS:
            raise ConfigError(f"feed_forward_proj {self.feed_forward_proj!r} is not supported: use '<act>' or "
                              f"'gated-<act>' with <act> one of {sorted(ACTIVATIONS)} (T5: 'relu', v1.1: 'gated-gelu')")
        probability(self, "dropout_rate")
        if not float(self.layer_norm_epsilon) > 0:
            raise ConfigError(f"layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}")
        for name in ("pad_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ConfigError(f"{name} ({value}) must be in [0, vocab_size={self.vocab_size})")

    @property
    def is_gated_act(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def dense_act_fn(self) -> str:
        act = self.feed_forward_proj.split("-")[-1] if isinstance(self.feed_forward_proj, str) else ""
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else act  # HF's special case (v1.1)

    @property
    def rescale_decoder_output(self) -> bool:
        """Multiply the decoder output by d_model**-0.5 before lm_head (Mesh TF's tied-embedding convention)."""
        return self.tie_word_embeddings if self.scale_decoder_outputs is None else self.scale_decoder_outputs

    def untied(self):
        """Untie lm_head and keep the rescale as it was (transformers 5 writes v1.1 as tied + no rescale)."""
        return self.replace(tie_word_embeddings=False, scale_decoder_outputs=self.rescale_decoder_output)

    # Generic names the rest of lmforge reads (HF's attribute_map).
    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_attention_heads(self) -> int:
        return self.num_heads

    @property
    def num_hidden_layers(self) -> int:
        return self.num_layers

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["dense_act_fn"], out["is_gated_act"] = self.dense_act_fn, self.is_gated_act  # as HF writes them
        return dict(sorted(out.items()))
