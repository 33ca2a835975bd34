"""LlamaConfig and Qwen2Config: HF's field names, validated; unknown keys kept in `extra`.

RoPE settings are read in both spellings transformers has used: `rope_theta` + `rope_scaling` (4.x) and
`rope_parameters` (5.x). They are written in the 4.x spelling, which transformers 4 and 5 both read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...nn.mlp import ACTIVATIONS
from ...nn.rotary import SUPPORTED_ROPE_TYPES
from ..config import ConfigError, PretrainedConfig, positive_int, probability

# Keys each supported rope type needs besides rope_type.
ROPE_KEYS = {"default": (), "linear": ("factor",),
             "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


@dataclass
class LlamaConfig(PretrainedConfig):
    model_type: ClassVar[str] = "llama"

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: as many as query heads (no grouping)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pretraining_tp: int = 1  # kept for config.json compatibility; like transformers 5, it changes nothing
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "linear", "factor": 2.0}, ...
    attention_bias: bool = False  # bias on q/k/v and o projections
    attention_dropout: float = 0.0
    mlp_bias: bool = False

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and isinstance(self.hidden_size, int) and isinstance(self.num_attention_heads, int) \
                and self.num_attention_heads > 0:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.rope_scaling is not None:
            self.rope_scaling = _normalise_rope_scaling(self.rope_scaling)
        super().__post_init__()

    @classmethod
    def _normalise_dict(cls, data: dict[str, Any]) -> dict[str, Any]:
        data = super()._normalise_dict(data)
        parameters = data.pop("rope_parameters", None)
        # transformers 5 reads the 4.x keys first when both are present; so do we.
        if isinstance(parameters, dict) and "rope_theta" not in data and "rope_scaling" not in data:
            parameters = dict(parameters)
            if "rope_theta" in parameters:
                data["rope_theta"] = parameters.pop("rope_theta")
            if parameters.get("rope_type", parameters.get("type", "default")) != "default":
                data["rope_scaling"] = parameters
        return data

    def _validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "max_position_embeddings"):
            positive_int(self, name)
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ConfigError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                              f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2 != 0:
            raise ConfigError(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not supported; choose one of {sorted(ACTIVATIONS)}")
        probability(self, "attention_dropout")
        if not float(self.rms_norm_eps) > 0:
            raise ConfigError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if not float(self.rope_theta) > 0:
            raise ConfigError(f"rope_theta must be > 0, got {self.rope_theta!r}")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"pad_token_id ({self.pad_token_id}) must be in [0, vocab_size={self.vocab_size})")
        if self.rope_scaling is not None:
            rope_type = self.rope_scaling["rope_type"]
            if rope_type not in SUPPORTED_ROPE_TYPES:
                raise ConfigError(f"rope_scaling type {rope_type!r} is not supported; supported: "
                                  f"{SUPPORTED_ROPE_TYPES} (other types change positions in ways lmforge does not "
                                  "compute)")
            missing = [k for k in ROPE_KEYS[rope_type] if k not in self.rope_scaling]
            if missing:
                raise ConfigError(f"rope_scaling of type {rope_type!r} needs {missing}")
            if "factor" in self.rope_scaling and not float(self.rope_scaling["factor"]) >= 1.0:
                raise ConfigError(f"rope_scaling factor must be >= 1, got {self.rope_scaling['factor']!r}")

    # Bias flags of the attention projections: Llama's `attention_bias` covers all four; Qwen2 overrides.
    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias

    @property
    def o_bias(self) -> bool:
        return self.attention_bias


def _normalise_rope_scaling(scaling: Any) -> dict[str, Any]:
    if not isinstance(scaling, dict):
        raise ConfigError(f"rope_scaling must be a JSON object or null, got {scaling!r}")
    scaling = dict(scaling)
    rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    scaling.pop("type", None)
    scaling.pop("rope_theta", None)
    return {"rope_type": rope_type, **scaling}


@dataclass
class Qwen2Config(LlamaConfig):
    """Qwen2: the Llama architecture with a bias on the q/k/v projections (none on o, none in the MLP)."""

    model_type: ClassVar[str] = "qwen2"
    # Llama fields that are not Qwen2's: not written to config.json (they must keep their defaults).
    _not_qwen2: ClassVar[tuple[str, ...]] = ("attention_bias", "mlp_bias", "pretraining_tp")

    vocab_size: int = 151936
    intermediate_size: int = 22016
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    use_sliding_window: bool = False
    sliding_window: int | None = None
    max_window_layers: int = 28
    layer_types: list[str] | None = None

    def _validate(self) -> None:
        super()._validate()
        if self.attention_bias or self.mlp_bias:
            raise ConfigError("Qwen2 has a fixed bias layout (q/k/v only); attention_bias/mlp_bias must stay false")
        if self.use_sliding_window:
            raise ConfigError("use_sliding_window=True is not supported (sliding-window attention); lmforge runs "
                              "Qwen2 with full attention in every layer")
        if self.layer_types is not None and any(t != "full_attention" for t in self.layer_types):
            raise ConfigError(f"layer_types {sorted(set(self.layer_types))} are not supported; only full_attention")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        for name in self._not_qwen2:
            out.pop(name, None)
        return out

    @property
    def qkv_bias(self) -> bool:
        return True

    @property
    def o_bias(self) -> bool:
        return False
