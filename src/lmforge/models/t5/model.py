"""T5 (Raffel et al. 2020): an encoder and a decoder stack over one shared token embedding, pre-norm blocks with
RMS norm (no bias, no mean subtraction), relative position buckets instead of position embeddings, and no
1/sqrt(D) scaling of the attention scores. v1.0 feed-forward: wo(relu(wi(x))); v1.1: wo(gelu(wi_0(x)) * wi_1(x)).

    encoder:  x = shared(ids);  for each block:  x = x + SelfAttn(norm(x), bias_bidirectional)
                                                 x = x + FF(norm(x))
              h_enc = norm(x)
    decoder:  y = shared(decoder_ids);  for each block:  y = y + SelfAttn(norm(y), bias_causal + causal mask)
                                                         y = y + CrossAttn(norm(y), h_enc)
                                                         y = y + FF(norm(y))
              logits = lm_head(norm(y) * d_model**-0.5 if tied else norm(y))

The relative position bias (one learned scalar per head and distance bucket) lives on the first block of each
stack (`block.0.layer.0.SelfAttention.relative_attention_bias`), is computed once per forward and added to every
block's scores, together with the padding / causal mask, as one additive mask. Attention itself is the shared
`nn.attention` code (`SelfAttention`, `CrossAttention`, `KVCache`: cross-attention keys/values are computed once
per generation) with scale 1 and HF T5's projection names. Module names are HF's (keys.py); shapes use the
legend of `lmforge.nn.attention`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...generation.mixin import Seq2SeqGenerationMixin
from ...nn.attention import (
    CrossAttention,
    KVCache,
    SelfAttention,
    causal_mask,
    check_attention_mask,
    mask_dtype,
    padding_mask,
    to_additive,
)
from ...nn.heads import seq2seq_lm_loss, shift_tokens_right
from ...nn.mlp import ACTIVATIONS
from ...nn.norms import RMSNorm
from ...outputs import BaseModelOutput, BaseModelOutputWithPast, Seq2SeqLMOutput, Seq2SeqModelOutput
from ..base import PreTrainedModel
from . import keys
from .config import T5Config


# ---------------------------------------------------------------------------------------------- relative positions
def relative_position_bucket(relative_position: Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> Tensor:
    """Bucket of each (key - query) distance (Mesh TensorFlow's rule, as HF). Bidirectional: half the buckets
    for keys after the query. Of the rest, half are exact distances 0 .. n/2 - 1, half logarithmic bins up to
    `max_distance`, beyond which everything shares the last bucket. Causal: keys after the query get bucket 0
    (the causal mask hides them anyway)."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).to(torch.long) * num_buckets
        distance = relative_position.abs()
    else:
        distance = -relative_position.clamp(max=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # The float log of 0 is -inf for distance 0; that entry takes the `is_small` branch.
    large = max_exact + (torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).to(torch.long)
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


# ---------------------------------------------------------------------------------------------- attention
class _T5Projections:
    """HF T5 names the four projections q, k, v, o (its checkpoint keys); the shared attention code reads them
    as q_proj ... o_proj (`Attention.projection_names`)."""

    projection_names = ("q", "k", "v", "o")


class T5SelfAttention(_T5Projections, SelfAttention):
    """The shared causal/bidirectional self-attention (no bias on the projections, scale 1). The first block's
    also holds `relative_attention_bias` (buckets, H) and computes the position bias every block adds."""

    def __init__(self, config: T5Config, layer_idx: int, has_relative_attention_bias: bool, bidirectional: bool):
        super().__init__(config.d_model, config.num_heads, config.num_heads, config.d_kv, qkv_bias=False,
                         out_bias=False, dropout=config.dropout_rate, layer_idx=layer_idx, scale=1.0)
        self.bidirectional = bidirectional
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(self.num_buckets, config.num_heads)

    def position_bias(self, T: int, S: int, past: int) -> Tensor:
        """(1, H, T, S): the learned bias of each query (positions past .. past + T - 1) and key (0 .. S - 1)."""
        device = self.relative_attention_bias.weight.device
        query = torch.arange(past, past + T, dtype=torch.long, device=device)[:, None]  # (T, 1)
        key = torch.arange(S, dtype=torch.long, device=device)[None, :]  # (1, S)
        buckets = relative_position_bucket(key - query, self.bidirectional, self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)[None]  # (T, S, H) -> (1, H, T, S)


class T5CrossAttention(_T5Projections, CrossAttention):
    """The shared cross-attention (no position bias, scale 1); keys/values cached once per generation."""

    def __init__(self, config: T5Config, layer_idx: int):
        super().__init__(config.d_model, config.num_heads, config.num_heads, config.d_kv, qkv_bias=False,
                         out_bias=False, dropout=config.dropout_rate, layer_idx=layer_idx, scale=1.0)


# ---------------------------------------------------------------------------------------------- feed-forward
class T5DenseActDense(nn.Module):
    """v1.0: wo(dropout(act(wi(x)))), no biases. (B, T, C) -> (B, T, d_ff) -> (B, T, C)."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.act = ACTIVATIONS[config.dense_act_fn]

    def forward(self, x: Tensor) -> Tensor:
        return self.wo(self.dropout(self.act(self.wi(x))))


class T5DenseGatedActDense(nn.Module):
    """v1.1: wo(dropout(act(wi_0(x)) * wi_1(x))), no biases."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.act = ACTIVATIONS[config.dense_act_fn]

    def forward(self, x: Tensor) -> Tensor:
        return self.wo(self.dropout(self.act(self.wi_0(x)) * self.wi_1(x)))


# ---------------------------------------------------------------------------------------------- blocks
class T5LayerSelfAttention(nn.Module):
    """x + dropout(SelfAttn(norm(x)))."""

    def __init__(self, config: T5Config, layer_idx: int, has_relative_attention_bias: bool, bidirectional: bool):
        super().__init__()
        self.SelfAttention = T5SelfAttention(config, layer_idx, has_relative_attention_bias, bidirectional)
        self.layer_norm = RMSNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: Tensor, mask: Tensor, cache: KVCache | None, need_probs: bool) -> tuple[Tensor, Tensor | None]:
        attended, probs = self.SelfAttention(self.layer_norm(x), mask, False, cache=cache, need_probs=need_probs)
        return x + self.dropout(attended), probs


class T5LayerCrossAttention(nn.Module):
    """y + dropout(CrossAttn(norm(y), encoder states))."""

    def __init__(self, config: T5Config, layer_idx: int):
        super().__init__()
        self.EncDecAttention = T5CrossAttention(config, layer_idx)
        self.layer_norm = RMSNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: Tensor, encoder_states: Tensor | None, mask: Tensor | None, cache: KVCache | None,
                need_probs: bool) -> tuple[Tensor, Tensor | None]:
        attended, probs = self.EncDecAttention(self.layer_norm(x), encoder_states, mask, cache, need_probs)
        return x + self.dropout(attended), probs


class T5LayerFF(nn.Module):
    """x + dropout(FF(norm(x)))."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.DenseReluDense = T5DenseGatedActDense(config) if config.is_gated_act else T5DenseActDense(config)
        self.layer_norm = RMSNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.dropout(self.DenseReluDense(self.layer_norm(x)))


class T5Block(nn.Module):
    """`layer`: [self-attention, (cross-attention: decoder only), feed-forward], HF's list and indices."""

    def __init__(self, config: T5Config, layer_idx: int, is_decoder: bool):
        super().__init__()
        self.is_decoder = is_decoder
        self.layer = nn.ModuleList([T5LayerSelfAttention(config, layer_idx, layer_idx == 0, not is_decoder)])
        if is_decoder:
            self.layer.append(T5LayerCrossAttention(config, layer_idx))
        self.layer.append(T5LayerFF(config))

    def forward(self, x: Tensor, mask: Tensor, encoder_states: Tensor | None, encoder_mask: Tensor | None,
                cache: KVCache | None, need_probs: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        x, probs = self.layer[0](x, mask, cache, need_probs)
        cross_probs = None
        if self.is_decoder:
            x, cross_probs = self.layer[1](x, encoder_states, encoder_mask, cache, need_probs)
        return self.layer[-1](x), probs, cross_probs


class T5Stack(nn.Module):
    """The encoder (bidirectional) or the decoder (causal, with cross-attention and a KV cache) over the shared
    embedding `embed_tokens` (the same module as the model's `shared`)."""

    def __init__(self, config: T5Config, embed_tokens: nn.Embedding, is_decoder: bool):
        super().__init__()
        self.is_decoder = is_decoder
        self.embed_tokens = embed_tokens
        num_layers = config.num_decoder_layers if is_decoder else config.num_layers
        self.block = nn.ModuleList(T5Block(config, i, is_decoder) for i in range(num_layers))
        self.final_layer_norm = RMSNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(
        self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, inputs_embeds: Tensor | None = None,
        encoder_states: Tensor | None = None, encoder_attention_mask: Tensor | None = None,
        cache: KVCache | None = None, output_attentions: bool = False, output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPast:
        """input_ids (B, T) or inputs_embeds (B, T, C); attention_mask (B, past + T), 1 = token. The decoder
        reads encoder_states (B, S_enc, C) with encoder_attention_mask (B, S_enc), or a cache holding their
        keys/values; with a cache only the new tokens are passed."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds (decoder: decoder_input_ids, "
                             "decoder_inputs_embeds, or labels)")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        B, T, _ = x.shape
        past = cache.get_seq_length() if cache is not None else 0
        check_attention_mask(attention_mask, B, past + T)
        mask = self._attention_mask(attention_mask, T, past, x)  # (B or 1, H, T, S)
        encoder_mask = padding_mask(encoder_attention_mask, mask_dtype(x)) if self.is_decoder else None

        hidden_states = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        cross_attentions = [] if output_attentions and self.is_decoder else None
        x = self.dropout(x)
        for block in self.block:
            x, probs, cross_probs = block(x, mask, encoder_states, encoder_mask, cache, output_attentions)
            if hidden_states is not None:
                hidden_states.append(x)
            if attentions is not None:
                attentions.append(probs)
            if cross_attentions is not None:
                cross_attentions.append(cross_probs)
        x = self.dropout(self.final_layer_norm(x))
        if hidden_states is not None:
            hidden_states[-1] = x  # as HF: the last entry is the normed output
        return BaseModelOutputWithPast(
            last_hidden_state=x, past_key_values=cache,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            attentions=tuple(attentions) if attentions is not None else None,
            cross_attentions=tuple(cross_attentions) if cross_attentions is not None else None,
        )

    def _attention_mask(self, attention_mask: Tensor | None, T: int, past: int, x: Tensor) -> Tensor:
        """The first block's relative position bias plus the padding (encoder) or causal + padding (decoder)
        mask: one additive (B or 1, H, T, past + T) mask that every block adds to its scores."""
        S = past + T
        bias = self.block[0].layer[0].SelfAttention.position_bias(T, S, past).to(mask_dtype(x))  # (1, H, T, S)
        if not self.is_decoder:
            mask = padding_mask(attention_mask, bias.dtype)  # (B, 1, 1, S) or None
        else:
            mask, is_causal = causal_mask(attention_mask, T, S, bias.dtype, x.device)
            if is_causal:  # the bias must be added, so SDPA's mask-free causal kernel cannot run: spell it out
                allowed = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
                mask = to_additive(allowed[None, None], bias.dtype)  # (1, 1, T, S)
        return bias if mask is None else bias + mask


# ---------------------------------------------------------------------------------------------- models
class T5PreTrainedModel(PreTrainedModel):
    config_class = T5Config
    base_model_prefix = keys.BASE_MODEL_PREFIX
    key_rules = keys.KEY_RULES
    attn_implementations = ("sdpa", "eager")
    supports_unpadding = False
    _shared_weights = keys.SHARED_WEIGHTS

    def _init_weights(self, module: nn.Module) -> None:
        """HF T5's initialisation (Mesh TF's): each weight N(0, factor * fan_in**-0.5), the query also divided
        by sqrt(d_kv) (the scaling T5 leaves out of attention), embeddings N(0, factor), norms 1."""
        factor, C, D, H = self.config.initializer_factor, self.config.d_model, self.config.d_kv, self.config.num_heads
        if isinstance(module, RMSNorm):
            nn.init.constant_(module.weight, factor)
        elif isinstance(module, (T5SelfAttention, T5CrossAttention)):
            nn.init.normal_(module.q.weight, std=factor * (C * D) ** -0.5)
            nn.init.normal_(module.k.weight, std=factor * C ** -0.5)
            nn.init.normal_(module.v.weight, std=factor * C ** -0.5)
            nn.init.normal_(module.o.weight, std=factor * (H * D) ** -0.5)
            if hasattr(module, "relative_attention_bias"):
                nn.init.normal_(module.relative_attention_bias.weight, std=factor * C ** -0.5)
        elif isinstance(module, (T5DenseActDense, T5DenseGatedActDense)):
            for name in ("wi", "wi_0", "wi_1"):
                if hasattr(module, name):
                    nn.init.normal_(getattr(module, name).weight, std=factor * C ** -0.5)
            nn.init.normal_(module.wo.weight, std=factor * self.config.d_ff ** -0.5)
        elif isinstance(module, T5PreTrainedModel) and hasattr(module, "shared"):
            nn.init.normal_(module.shared.weight, std=factor)
            if hasattr(module, "lm_head") and not self.config.tie_word_embeddings:
                nn.init.normal_(module.lm_head.weight, std=factor)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared


class T5Model(T5PreTrainedModel):
    """The encoder and the decoder; returns the decoder's last hidden state (and the encoder's)."""

    def __init__(self, config: T5Config):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, self.shared, is_decoder=False)
        self.decoder = T5Stack(config, self.shared, is_decoder=True)
        self.post_init()

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        past_key_values: KVCache | None = None,
        inputs_embeds: Tensor | None = None,
        decoder_inputs_embeds: Tensor | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> Seq2SeqModelOutput:
        encoder_outputs, decoder_out = _encode_decode(
            self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, encoder_outputs,
            past_key_values, inputs_embeds, decoder_inputs_embeds, use_cache, output_attentions, output_hidden_states)
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_out.last_hidden_state, past_key_values=decoder_out.past_key_values,
            decoder_hidden_states=decoder_out.hidden_states, decoder_attentions=decoder_out.attentions,
            cross_attentions=decoder_out.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states, encoder_attentions=encoder_outputs.attentions,
        )


class T5ForConditionalGeneration(Seq2SeqGenerationMixin, T5PreTrainedModel):
    """The encoder-decoder with lm_head (tied to `shared` unless tie_word_embeddings=False, v1.1). labels (B, T):
    the target ids (-100: no loss); the decoder reads them shifted right after decoder_start_token_id.
    `generate(input_ids, attention_mask, ...)` encodes once and returns the decoder's ids (start token first)."""

    _tied_weights = keys.TIED_WEIGHTS

    def __init__(self, config: T5Config):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, self.shared, is_decoder=False)
        self.decoder = T5Stack(config, self.shared, is_decoder=True)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.shared.weight

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def get_encoder(self) -> T5Stack:
        return self.encoder

    def get_decoder(self) -> T5Stack:
        return self.decoder

    def prepare_decoder_input_ids_from_labels(self, labels: Tensor) -> Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def head_states(self, input_ids: Tensor, attention_mask: Tensor | None, decoder_input_ids: Tensor,
                    decoder_attention_mask: Tensor | None) -> Tensor:
        """What `lm_head` projects (B, T, C): the decoder output, rescaled by d_model^-0.5 when tied (see
        BART's `head_states`)."""
        _, decoder_out = _encode_decode(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask,
                                        None, None, None, None, False, False, False)
        h = decoder_out.last_hidden_state  # (B, T, C)
        return h * self.config.d_model ** -0.5 if self.config.rescale_decoder_output else h

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        past_key_values: KVCache | None = None,
        inputs_embeds: Tensor | None = None,
        decoder_inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> Seq2SeqLMOutput:
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = shift_tokens_right(labels, self.config.pad_token_id,
                                                   self.config.decoder_start_token_id)
        encoder_outputs, decoder_out = _encode_decode(
            self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, encoder_outputs,
            past_key_values, inputs_embeds, decoder_inputs_embeds, use_cache, output_attentions, output_hidden_states)
        h = decoder_out.last_hidden_state  # (B, T, C)
        if self.config.rescale_decoder_output:
            h = h * self.config.d_model ** -0.5
        logits = self.lm_head(h)  # (B, T, V)
        loss = seq2seq_lm_loss(logits, labels) if labels is not None else None
        return Seq2SeqLMOutput(
            loss=loss, logits=logits, past_key_values=decoder_out.past_key_values,
            decoder_hidden_states=decoder_out.hidden_states, decoder_attentions=decoder_out.attentions,
            cross_attentions=decoder_out.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states, encoder_attentions=encoder_outputs.attentions,
        )


class T5EncoderModel(T5PreTrainedModel):
    """The encoder alone (sentence embeddings, classifiers on top); loads the encoder half of any T5 checkpoint."""

    key_rules = keys.ENCODER_KEY_RULES
    _shared_weights = keys.ENCODER_SHARED_WEIGHTS

    def __init__(self, config: T5Config):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, self.shared, is_decoder=False)
        self.post_init()

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutput:
        out = self.encoder(input_ids, attention_mask, inputs_embeds, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states)
        return BaseModelOutput(last_hidden_state=out.last_hidden_state, hidden_states=out.hidden_states,
                               attentions=out.attentions)


def _encode_decode(
    model: T5Model | T5ForConditionalGeneration, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask,
    encoder_outputs, past_key_values, inputs_embeds, decoder_inputs_embeds, use_cache, output_attentions,
    output_hidden_states,
) -> tuple[BaseModelOutput, BaseModelOutputWithPast]:
    """Run the encoder (unless `encoder_outputs` are given: generation encodes once) and the decoder over it.
    A cache (given, or new with use_cache=True) holds the decoder's keys/values and the cross-attention ones."""
    if encoder_outputs is None:
        out = model.encoder(input_ids, attention_mask, inputs_embeds, output_attentions=output_attentions,
                            output_hidden_states=output_hidden_states)
        encoder_outputs = BaseModelOutput(last_hidden_state=out.last_hidden_state, hidden_states=out.hidden_states,
                                          attentions=out.attentions)
    elif not isinstance(encoder_outputs, BaseModelOutput):  # a tuple (HF's return_dict=False form) or a tensor
        first = encoder_outputs if isinstance(encoder_outputs, Tensor) else encoder_outputs[0]
        encoder_outputs = BaseModelOutput(last_hidden_state=first)
    cache = past_key_values if past_key_values is not None else (
        KVCache(model.config.num_decoder_layers) if use_cache else None)
    decoder_out = model.decoder(
        decoder_input_ids, decoder_attention_mask, decoder_inputs_embeds, encoder_outputs.last_hidden_state,
        attention_mask, cache, output_attentions, output_hidden_states)
    return encoder_outputs, decoder_out
