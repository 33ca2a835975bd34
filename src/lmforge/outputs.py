"""One output dataclass per kind of model. Fields are named as in `transformers`.

`outputs.logits` is the normal access; `outputs["logits"]` and `outputs[0]` (the first field that is
not None, as in HF) also work so that code written for `transformers` runs unchanged.

Loss parts: a field whose name ends in `_loss` (other than `loss`) is a detached part of `loss`
(`PreTrainingOutput.mlm_loss` and `nsp_loss`; `ElectraPretrainingOutput.mlm_loss` and `rtd_loss`, the latter
unweighted), set whenever that part was computed, None otherwise.
The training loop logs every such field by name, `{f.name: v for f in fields(out) if
f.name.endswith("_loss") and v is not None}`, so a model with new loss terms adds fields, not loop code.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from torch import Tensor


class ModelOutput:
    def to_tuple(self) -> tuple:
        return tuple(v for v in (getattr(self, f.name) for f in fields(self)) if v is not None)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: str | int):
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]


@dataclass
class BaseModelOutput(ModelOutput):
    last_hidden_state: Tensor  # (B, T, C)
    pooler_output: Tensor | None = None  # (B, C)
    hidden_states: tuple[Tensor, ...] | None = None  # embeddings + one per layer, each (B, T, C)
    attentions: tuple[Tensor, ...] | None = None  # one per layer, each (B, H, T, T)


@dataclass
class MaskedLMOutput(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None  # (B, T, V); (N, V) over masked positions with sparse_mlm=True
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


@dataclass
class NextSentencePredictorOutput(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None  # (B, 2): index 0 = IsNext, 1 = NotNext
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


@dataclass
class PreTrainingOutput(ModelOutput):
    loss: Tensor | None = None
    prediction_logits: Tensor | None = None  # (B, T, V); (N, V) with sparse_mlm=True
    seq_relationship_logits: Tensor | None = None  # (B, 2)
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    mlm_loss: Tensor | None = None  # the two parts of `loss`, detached, for logging
    nsp_loss: Tensor | None = None


@dataclass
class ElectraForPreTrainingOutput(ModelOutput):
    loss: Tensor | None = None  # binary cross-entropy over non-padding tokens
    logits: Tensor | None = None  # (B, T): > 0 means "replaced"
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


@dataclass
class ElectraPretrainingOutput(ModelOutput):
    """The ELECTRA objective (generator + discriminator, `models.electra.pretraining`)."""

    loss: Tensor | None = None  # mlm_loss + disc_weight * rtd_loss
    generator_logits: Tensor | None = None  # (N, V) at the N masked positions
    logits: Tensor | None = None  # (B, T) discriminator logits on the corrupted input: > 0 means "replaced"
    replaced: Tensor | None = None  # (B, T) bool: the token the discriminator saw differs from the original
    mlm_loss: Tensor | None = None  # the generator's masked-LM loss, detached
    rtd_loss: Tensor | None = None  # the discriminator's replaced-token-detection loss (unweighted), detached


@dataclass
class SequenceClassifierOutput(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None  # (B, num_labels)
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


@dataclass
class TokenClassifierOutput(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None  # (B, T, num_labels)
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


@dataclass
class QuestionAnsweringOutput(ModelOutput):
    loss: Tensor | None = None
    start_logits: Tensor | None = None  # (B, T)
    end_logits: Tensor | None = None  # (B, T)
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


@dataclass
class MultipleChoiceOutput(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None  # (B, num_choices)
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


# ---------------------------------------------------------------------------------------------- decoders
# `past_key_values` is the `nn.KVCache` a forward pass extended (None unless `use_cache=True`); transformers 5
# calls that field `cache` (and keeps `past_key_values` as an alias), so both names read it here.
class _CacheAlias:
    @property
    def cache(self):
        return self.past_key_values


@dataclass
class BaseModelOutputWithPast(_CacheAlias, ModelOutput):
    last_hidden_state: Tensor  # (B, T, C), after the final norm
    past_key_values: Any = None  # nn.KVCache
    hidden_states: tuple[Tensor, ...] | None = None  # embeddings + one per layer (the last one normed), (B, T, C)
    attentions: tuple[Tensor, ...] | None = None  # one per layer, each (B, H, T, S)
    cross_attentions: tuple[Tensor, ...] | None = None  # one per layer, each (B, H, T, S_encoder)


@dataclass
class CausalLMOutputWithPast(_CacheAlias, ModelOutput):
    loss: Tensor | None = None  # mean next-token cross-entropy over labels != -100
    logits: Tensor | None = None  # (B, T, V), or the last `logits_to_keep` positions
    past_key_values: Any = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    cross_attentions: tuple[Tensor, ...] | None = None


@dataclass
class SequenceClassifierOutputWithPast(_CacheAlias, ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None  # (B, num_labels), from each row's last non-padding token
    past_key_values: Any = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


# ---------------------------------------------------------------------------------------------- encoder-decoders
@dataclass
class Seq2SeqModelOutput(_CacheAlias, ModelOutput):
    last_hidden_state: Tensor  # (B, T, C): the decoder's output, after its final norm
    past_key_values: Any = None  # nn.KVCache: decoder self-attention keys/values, and `cross` (encoder keys/values)
    decoder_hidden_states: tuple[Tensor, ...] | None = None
    decoder_attentions: tuple[Tensor, ...] | None = None
    cross_attentions: tuple[Tensor, ...] | None = None  # one per decoder layer, each (B, H, T, S_encoder)
    encoder_last_hidden_state: Tensor | None = None  # (B, S_encoder, C)
    encoder_hidden_states: tuple[Tensor, ...] | None = None
    encoder_attentions: tuple[Tensor, ...] | None = None


@dataclass
class Seq2SeqLMOutput(_CacheAlias, ModelOutput):
    loss: Tensor | None = None  # mean cross-entropy of the logits against labels != -100 (no shift: labels are targets)
    logits: Tensor | None = None  # (B, T, V)
    past_key_values: Any = None
    decoder_hidden_states: tuple[Tensor, ...] | None = None
    decoder_attentions: tuple[Tensor, ...] | None = None
    cross_attentions: tuple[Tensor, ...] | None = None
    encoder_last_hidden_state: Tensor | None = None
    encoder_hidden_states: tuple[Tensor, ...] | None = None
    encoder_attentions: tuple[Tensor, ...] | None = None
