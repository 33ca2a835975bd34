"""BART (Lewis et al. 2019): a post-LN Transformer encoder-decoder with learned positions; the layers Marian reuses.

    encoder:  x = LN_emb(embed_tokens(ids) * scale + pos(0..S-1));  per layer (post-LN):
              x = LN(x + SelfAttn(x));  x = LN(x + FFN(x))
    decoder:  y = LN_emb(embed_tokens(dec_ids) * scale + pos(past..past+T-1));  per layer:
              y = LN(y + CausalSelfAttn(y));  y = LN(y + CrossAttn(y, x));  y = LN(y + FFN(y))
    logits = y @ shared^T + final_logits_bias

Blocks shared with the decoders: `nn.attention.SelfAttention` (bidirectional in the encoder: padding mask only;
causal with the `KVCache` in the decoder) and `nn.attention.CrossAttention` (its keys/values of the encoder output
are computed once and kept in `KVCache.cross`), so the CPU fast paths (one Q|K|V / K|V matmul) apply unchanged.
Module names are HF's (`out_proj`, `fc1`, `self_attn_layer_norm`, ...), so state dicts move between lmforge and
transformers untouched; see keys.py. Decoder positions are past + 0, 1, 2, ... as in transformers (decoder inputs
start with the decoder start token, so they are never left-padded). Shapes use `lmforge.nn.attention`'s legend;
S is the encoder length.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...generation.config import GenerationConfig
from ...generation.mixin import Seq2SeqGenerationMixin
from ...nn.attention import (
    CrossAttention,
    KVCache,
    SelfAttention,
    causal_mask,
    check_attention_mask,
    mask_dtype,
    padding_mask,
)
from ...nn.heads import seq2seq_lm_loss, sequence_classification_loss, shift_tokens_right
from ...nn.mlp import ACTIVATIONS
from ...nn.outputs import LayerOutputs
from ...outputs import (
    BaseModelOutput,
    BaseModelOutputWithPast,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
    Seq2SeqSequenceClassifierOutput,
)
from ..base import PreTrainedModel, normal_init
from . import keys
from .config import BartConfig

# HF BART / Marian name the output projection out_proj (Llama's o_proj): `Attention.projection_names`.
PROJECTION_NAMES = ("q_proj", "k_proj", "v_proj", "out_proj")


class BartLearnedPositionalEmbedding(nn.Embedding):
    """Learned positions, stored 2 rows further down (fairseq reserved rows 0 and 1; HF keeps the offset)."""

    offset = 2

    def __init__(self, num_positions: int, dim: int):
        super().__init__(num_positions + self.offset, dim)

    def forward(self, past: int, T: int) -> Tensor:
        """Embeddings of positions past .. past + T - 1: (T, C)."""
        return super().forward(torch.arange(past, past + T, device=self.weight.device) + self.offset)


class BartEncoderLayer(nn.Module):
    """Post-LN: x = LN(x + Attn(x)); x = LN(x + fc2(act(fc1(x))))."""

    def __init__(self, config: BartConfig, layer_idx: int):
        super().__init__()
        C, H = config.d_model, config.encoder_attention_heads
        self.self_attn = SelfAttention(C, H, H, C // H, qkv_bias=True, out_bias=True, dropout=config.attention_dropout,
                                       layer_idx=layer_idx, projection_names=PROJECTION_NAMES)
        self.self_attn_layer_norm = nn.LayerNorm(C)
        self.fc1 = nn.Linear(C, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, C)
        self.final_layer_norm = nn.LayerNorm(C)
        self.act = ACTIVATIONS[config.activation_function]
        self.dropout = nn.Dropout(config.dropout)
        self.activation_dropout = nn.Dropout(config.activation_dropout)

    def forward(self, x: Tensor, mask: Tensor | None, need_probs: bool) -> tuple[Tensor, Tensor | None]:
        attended, probs = self.self_attn(x, mask, False, need_probs=need_probs)  # (B, S, C)
        x = self.self_attn_layer_norm(x + self.dropout(attended))
        h = self.fc2(self.activation_dropout(self.act(self.fc1(x))))  # (B, S, C)
        return self.final_layer_norm(x + self.dropout(h)), probs


class BartDecoderLayer(nn.Module):
    """Post-LN: y = LN(y + CausalAttn(y)); y = LN(y + CrossAttn(y, encoder)); y = LN(y + FFN(y))."""

    def __init__(self, config: BartConfig, layer_idx: int):
        super().__init__()
        C, H = config.d_model, config.decoder_attention_heads
        common = dict(qkv_bias=True, out_bias=True, dropout=config.attention_dropout, layer_idx=layer_idx,
                      projection_names=PROJECTION_NAMES)
        self.self_attn = SelfAttention(C, H, H, C // H, **common)
        self.self_attn_layer_norm = nn.LayerNorm(C)
        self.encoder_attn = CrossAttention(C, H, H, C // H, **common)
        self.encoder_attn_layer_norm = nn.LayerNorm(C)
        self.fc1 = nn.Linear(C, config.decoder_ffn_dim)
        self.fc2 = nn.Linear(config.decoder_ffn_dim, C)
        self.final_layer_norm = nn.LayerNorm(C)
        self.act = ACTIVATIONS[config.activation_function]
        self.dropout = nn.Dropout(config.dropout)
        self.activation_dropout = nn.Dropout(config.activation_dropout)

    def forward(
        self, y: Tensor, mask: Tensor | None, is_causal: bool, encoder_states: Tensor | None,
        encoder_mask: Tensor | None, cache: KVCache | None, need_probs: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        attended, probs = self.self_attn(y, mask, is_causal, cache=cache, need_probs=need_probs)  # (B, T, C)
        y = self.self_attn_layer_norm(y + self.dropout(attended))
        attended, cross_probs = self.encoder_attn(y, encoder_states, encoder_mask, cache, need_probs)  # (B, T, C)
        y = self.encoder_attn_layer_norm(y + self.dropout(attended))
        h = self.fc2(self.activation_dropout(self.act(self.fc1(y))))  # (B, T, C)
        return self.final_layer_norm(y + self.dropout(h)), probs, cross_probs


class BartEncoder(nn.Module):
    """Token embeddings (* sqrt(C) with scale_embedding) + positions, the embedding LayerNorm when given
    (BART's `layernorm_embedding`; Marian has none), dropout, the layers."""

    def __init__(self, config: BartConfig, embed_tokens: nn.Embedding, embed_positions: nn.Module,
                 layernorm_embedding: nn.LayerNorm | None):
        super().__init__()
        self.config = config
        self.embed_tokens = embed_tokens
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.embed_positions = embed_positions
        if layernorm_embedding is not None:
            self.layernorm_embedding = layernorm_embedding
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(BartEncoderLayer(config, i) for i in range(config.encoder_layers))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutput:
        """input_ids (B, S) or inputs_embeds (B, S, C) (used as given, unscaled, as in transformers);
        attention_mask (B, S): 1 = token, 0 = padding."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed_tokens(input_ids) * self.embed_scale if inputs_embeds is None else inputs_embeds  # (B, S, C)
        B, S, _ = x.shape
        check_attention_mask(attention_mask, B, S)
        x = x + _positions(self.embed_positions, 0, S, self.config.max_position_embeddings, "input")
        if hasattr(self, "layernorm_embedding"):
            x = self.layernorm_embedding(x)
        x = self.dropout(x)
        mask = padding_mask(attention_mask, mask_dtype(x))  # (B, 1, 1, S) or None
        layer_outputs = LayerOutputs(x, output_hidden_states, output_attentions)
        for layer in self.layers:
            x, probs = layer(x, mask, output_attentions)
            layer_outputs.add(x, probs)
        hidden_states, attentions = layer_outputs.tuples(x)
        return BaseModelOutput(last_hidden_state=x, hidden_states=hidden_states, attentions=attentions)


class BartDecoder(nn.Module):
    """The encoder's embedding recipe, then causal layers with cross-attention over the encoder output; a KV
    cache (given, or new with use_cache=True) holds self-attention keys/values and, from the first call, the
    cross-attention ones (so the encoder output is projected once per generation)."""

    def __init__(self, config: BartConfig, embed_tokens: nn.Embedding, embed_positions: nn.Module,
                 layernorm_embedding: nn.LayerNorm | None):
        super().__init__()
        self.config = config
        self.embed_tokens = embed_tokens
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.embed_positions = embed_positions
        if layernorm_embedding is not None:
            self.layernorm_embedding = layernorm_embedding
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(BartDecoderLayer(config, i) for i in range(config.decoder_layers))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        past_key_values: KVCache | None = None,
        inputs_embeds: Tensor | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPast:
        """input_ids (B, T): the new decoder tokens; attention_mask (B, past + T) (1 = token, 0 = padding);
        encoder_hidden_states (B, S, C) with encoder_attention_mask (B, S)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of decoder_input_ids and decoder_inputs_embeds")
        y = self.embed_tokens(input_ids) * self.embed_scale if inputs_embeds is None else inputs_embeds  # (B, T, C)
        B, T, _ = y.shape
        cache = past_key_values
        if cache is None and use_cache:
            cache = KVCache(self.config.decoder_layers)
        past = cache.get_seq_length() if cache is not None else 0
        check_attention_mask(attention_mask, B, past + T)
        if encoder_hidden_states is None and (cache is None or cache.cross[0] is None):
            raise ValueError("the decoder needs encoder_hidden_states (or a cache that already holds their keys/values)")
        y = y + _positions(self.embed_positions, past, T, self.config.max_position_embeddings, "decoder input")
        if hasattr(self, "layernorm_embedding"):
            y = self.layernorm_embedding(y)
        y = self.dropout(y)

        mask, is_causal = causal_mask(attention_mask, T, past + T, mask_dtype(y), y.device)
        encoder_mask = padding_mask(encoder_attention_mask, mask_dtype(y))  # (B, 1, 1, S) or None
        layer_outputs = LayerOutputs(y, output_hidden_states, output_attentions)
        cross_attentions = [] if output_attentions else None
        for layer in self.layers:
            y, probs, cross_probs = layer(y, mask, is_causal, encoder_hidden_states, encoder_mask, cache,
                                          output_attentions)
            layer_outputs.add(y, probs)
            if cross_attentions is not None:
                cross_attentions.append(cross_probs)
        hidden_states, attentions = layer_outputs.tuples(y)
        return BaseModelOutputWithPast(
            last_hidden_state=y, past_key_values=cache, hidden_states=hidden_states, attentions=attentions,
            cross_attentions=tuple(cross_attentions) if cross_attentions is not None else None,
        )


def _positions(embed_positions: nn.Module, past: int, T: int, limit: int, what: str) -> Tensor:
    if past + T > limit:
        raise ValueError(f"{what} of {past + T} positions exceeds max_position_embeddings={limit}; truncate it")
    return embed_positions(past, T)  # (T, C)


# ---------------------------------------------------------------------------------------------- models
class BartPreTrainedModel(PreTrainedModel):
    config_class = BartConfig
    base_model_prefix = keys.BASE_MODEL_PREFIX
    key_rules = keys.KEY_RULES
    attn_implementations = ("sdpa", "eager")
    supports_unpadding = False

    def _init_weights(self, module: nn.Module) -> None:
        # HF's: N(0, init_std) for linears and embeddings (padding row zero), LayerNorms at identity. Marian's
        # sinusoidal positions are a buffer and never re-initialised; final_logits_bias starts at zero.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            normal_init(module, self.config.init_std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        if isinstance(getattr(module, "final_logits_bias", None), Tensor):
            module.final_logits_bias.zero_()

    def tie_weights(self) -> None:
        """The LM head reads the decoder's token embeddings (`tie_word_embeddings`, required)."""
        head = getattr(self, "lm_head", None)
        if head is not None:
            head.weight = self.model.decoder.embed_tokens.weight


class EncoderDecoderModel(BartPreTrainedModel):
    """What BartModel and MarianModel share: the forward (encode unless `encoder_outputs` is given, then decode).
    Subclasses build `encoder`, `decoder` and their embeddings."""

    encoder: BartEncoder
    decoder: BartDecoder

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def get_encoder(self) -> BartEncoder:
        return self.encoder

    def get_decoder(self) -> BartDecoder:
        return self.decoder

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
        """input_ids / attention_mask (B, S): the source; decoder_input_ids (B, T), decoder_attention_mask
        (B, past + T). Without decoder inputs, the source shifted right is decoded (transformers' BART rule)."""
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass decoder_input_ids (or input_ids, whose right shift is then decoded)")
            decoder_input_ids = shift_tokens_right(input_ids, self.config.pad_token_id,
                                                   self.config.decoder_start_token_id)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids, attention_mask, inputs_embeds, output_attentions,
                                           output_hidden_states)
        elif not isinstance(encoder_outputs, BaseModelOutput):  # a tuple, as transformers accepts
            encoder_outputs = BaseModelOutput(last_hidden_state=encoder_outputs[0])
        out = self.decoder(
            decoder_input_ids, decoder_attention_mask, encoder_outputs.last_hidden_state, attention_mask,
            past_key_values, decoder_inputs_embeds, use_cache, output_attentions, output_hidden_states,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=out.last_hidden_state, past_key_values=out.past_key_values,
            decoder_hidden_states=out.hidden_states, decoder_attentions=out.attentions,
            cross_attentions=out.cross_attentions, encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states, encoder_attentions=encoder_outputs.attentions,
        )


class BartModel(EncoderDecoderModel):
    """One token embedding table (`shared`) for encoder and decoder; learned positions and an embedding
    LayerNorm on each side."""

    _tied_weights = keys.TIED_WEIGHTS_BASE

    def __init__(self, config: BartConfig):
        super().__init__(config)
        C, P = config.d_model, config.max_position_embeddings
        self.shared = nn.Embedding(config.vocab_size, C, config.pad_token_id)
        self.encoder = BartEncoder(config, self.shared, BartLearnedPositionalEmbedding(P, C), nn.LayerNorm(C))
        self.decoder = BartDecoder(config, self.shared, BartLearnedPositionalEmbedding(P, C), nn.LayerNorm(C))
        self.post_init()


class ConditionalGenerationModel(Seq2SeqGenerationMixin, BartPreTrainedModel):
    """What BartForConditionalGeneration and MarianMTModel share: logits = lm_head(decoder output) +
    final_logits_bias (a buffer: fine-tuned checkpoints carry non-zero values), loss against `labels`
    (the targets; decoder inputs are their right shift unless given), and `generate(source_ids, mask, ...)`,
    which returns decoder ids starting with the decoder start token (as transformers'). `base_model_class`
    builds `model`."""

    base_model_class: type[EncoderDecoderModel]

    def __init__(self, config: BartConfig):
        super().__init__(config)
        self.model = self.base_model_class(config)
        self.register_buffer("final_logits_bias", torch.zeros(1, config.target_vocab_size))
        self.lm_head = nn.Linear(config.d_model, config.target_vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def get_encoder(self) -> BartEncoder:
        return self.model.encoder

    def get_decoder(self) -> BartDecoder:
        return self.model.decoder

    def default_generation_config(self) -> GenerationConfig:
        """EOS, padding and forced EOS from the model's config, as transformers derives them."""
        return GenerationConfig(eos_token_id=self.config.eos_token_id, pad_token_id=self.config.pad_token_id,
                                forced_eos_token_id=self.config.forced_eos_token_id)

    def prepare_decoder_input_ids_from_labels(self, labels: Tensor) -> Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def head_states(self, input_ids: Tensor, attention_mask: Tensor | None, decoder_input_ids: Tensor,
                    decoder_attention_mask: Tensor | None) -> Tensor:
        """What `lm_head` projects: the decoder output (B, T, C). Training with a loss fused into the projection
        (`training.seq2seq_lm`) reads it instead of the (B, T, V) logits; logits = lm_head(it) + final_logits_bias."""
        return self.model(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask).last_hidden_state

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
        """labels (B, T): target ids, -100 where no loss is wanted (padding); not shifted here (they are what
        each decoder position predicts)."""
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        out = self.model(
            input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, encoder_outputs, past_key_values,
            inputs_embeds, decoder_inputs_embeds, use_cache, output_attentions, output_hidden_states,
        )
        logits = self.lm_head(out.last_hidden_state) + self.final_logits_bias  # (B, T, V)
        loss = None
        if labels is not None:
            loss = seq2seq_lm_loss(logits, labels)
        return Seq2SeqLMOutput(
            loss=loss, logits=logits, past_key_values=out.past_key_values,
            decoder_hidden_states=out.decoder_hidden_states, decoder_attentions=out.decoder_attentions,
            cross_attentions=out.cross_attentions, encoder_last_hidden_state=out.encoder_last_hidden_state,
            encoder_hidden_states=out.encoder_hidden_states, encoder_attentions=out.encoder_attentions,
        )


class BartForConditionalGeneration(ConditionalGenerationModel):
    base_model_class = BartModel
    _tied_weights = keys.TIED_WEIGHTS_LM


class BartClassificationHead(nn.Module):
    """dropout -> dense -> tanh -> dropout -> out_proj: (B, C) -> (B, num_labels)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_proj(self.dropout(torch.tanh(self.dense(self.dropout(x)))))


class BartForSequenceClassification(BartPreTrainedModel):
    """The decoder's state at each row's last EOS token (the source is fed to both sides, the decoder's copy
    shifted right), through `BartClassificationHead`; as in transformers, every row must hold the same
    number of EOS tokens."""

    _tied_weights = keys.TIED_WEIGHTS_HEAD

    def __init__(self, config: BartConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = BartModel(config)
        self.classification_head = BartClassificationHead(config.d_model, config.num_labels, config.classifier_dropout)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        labels: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> Seq2SeqSequenceClassifierOutput:
        if input_ids is None:
            raise ValueError("BartForSequenceClassification needs input_ids: it pools at the EOS tokens")
        out = self.model(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, encoder_outputs,
                         output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        h = out.last_hidden_state  # (B, T, C)
        eos = input_ids.eq(self.config.eos_token_id)  # (B, T)
        counts = eos.sum(1)
        if int(counts.min()) == 0 or bool((counts != counts[0]).any()):
            raise ValueError(f"every row must hold the same number (>= 1) of eos tokens (id "
                             f"{self.config.eos_token_id}); found {counts.tolist()}")
        pooled = h[eos].view(h.size(0), -1, h.size(-1))[:, -1]  # (B, C): the last EOS of each row
        logits = self.classification_head(pooled)  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(logits, labels, self.num_labels, self.config.problem_type)
        return Seq2SeqSequenceClassifierOutput(
            loss=loss, logits=logits, decoder_hidden_states=out.decoder_hidden_states,
            decoder_attentions=out.decoder_attentions, cross_attentions=out.cross_attentions,
            encoder_last_hidden_state=out.encoder_last_hidden_state,
            encoder_hidden_states=out.encoder_hidden_states, encoder_attentions=out.encoder_attentions,
        )
