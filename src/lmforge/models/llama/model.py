"""Llama (Touvron et al. 2023) and its configuration variant Qwen2: token embeddings, pre-norm decoder layers
with RMSNorm, rotary positions, grouped-query attention and a SwiGLU feed-forward, a final RMSNorm, and heads:
causal language modelling (lm_head, tied to the embeddings or not) and sequence classification (read at
each row's last non-padding token).

    x = embed_tokens(ids)
    for each layer:  x = x + SelfAttn(RMSNorm(x), rotary(positions));  x = x + SwiGLU(RMSNorm(x))
    h = RMSNorm(x)

Module names are HF's (keys.py). Qwen2 differs only in config: a bias on q/k/v (`config.qkv_bias`).
Shapes use the legend of `lmforge.nn.attention`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...generation.mixin import GenerationMixin
from ...nn.attention import (
    KVCache,
    SelfAttention,
    causal_mask,
    check_attention_mask,
    mask_dtype,
    position_ids_from_mask,
)
from ...nn.heads import causal_lm_loss, keep_last_positions, last_token_index, sequence_classification_loss
from ...nn.mlp import GatedMLP
from ...nn.norms import RMSNorm
from ...nn.outputs import LayerOutputs
from ...nn.rotary import RotaryEmbedding
from ...outputs import BaseModelOutputWithPast, CausalLMOutputWithPast, SequenceClassifierOutputWithPast
from ..base import PreTrainedModel, normal_init
from . import keys
from .config import LlamaConfig, Qwen2Config


class LlamaDecoderLayer(nn.Module):
    """x + SelfAttn(RMSNorm(x)), then x + MLP(RMSNorm(x))."""

    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__()
        C = config.hidden_size
        self.self_attn = SelfAttention(
            C, config.num_attention_heads, config.num_key_value_heads, config.head_dim, qkv_bias=config.qkv_bias,
            out_bias=config.o_bias, dropout=config.attention_dropout, layer_idx=layer_idx,
        )
        self.mlp = GatedMLP(C, config.intermediate_size, config.hidden_act, bias=config.mlp_bias)
        self.input_layernorm = RMSNorm(C, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(C, eps=config.rms_norm_eps)

    def forward(self, x: Tensor, mask: Tensor | None, is_causal: bool, rotary: tuple[Tensor, Tensor],
                cache: KVCache | None, need_probs: bool) -> tuple[Tensor, Tensor | None]:
        attended, probs = self.self_attn(self.input_layernorm(x), mask, is_causal, rotary, cache, need_probs)
        x = residual_add(x, attended)
        return residual_add(x, self.mlp(self.post_attention_layernorm(x))), probs


def residual_add(x: Tensor, update: Tensor) -> Tensor:
    """x + update, written into `update` (a fresh projection output) when that keeps x's dtype: no new (B, T, C)
    tensor. Under bf16 autocast the update is bf16 and the sum is promoted to x's fp32, as in transformers."""
    return update.add_(x) if update.dtype == x.dtype else x + update


class LlamaPreTrainedModel(PreTrainedModel):
    config_class = LlamaConfig
    base_model_prefix = keys.BASE_MODEL_PREFIX
    key_rules = keys.KEY_RULES
    attn_implementations = ("sdpa", "eager")
    supports_unpadding = False

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            normal_init(module, std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


class LlamaModel(LlamaPreTrainedModel):
    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: KVCache | None = None,
        inputs_embeds: Tensor | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPast:
        """input_ids (B, T) or inputs_embeds (B, T, C). attention_mask (B, past + T): 1 = token, 0 = padding
        (left or right). Positions default to counting from each row's first real token, so left padding does
        not shift the rotary angles. With a cache (given, or new with use_cache=True) only the new tokens are
        passed; the cache is extended and returned."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        B, T, _ = x.shape
        cache = past_key_values if past_key_values is not None else (
            KVCache(self.config.num_hidden_layers) if use_cache else None)
        past = cache.get_seq_length() if cache is not None else 0
        check_attention_mask(attention_mask, B, past + T)
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask, T, past, x.device)  # (B or 1, T)
        rotary = self.rotary_emb(position_ids)  # (cos, sin), each (B or 1, T, 1, D/2)
        mask, is_causal = causal_mask(attention_mask, T, past + T, mask_dtype(x), x.device)

        layer_outputs = LayerOutputs(x, output_hidden_states, output_attentions)
        for layer in self.layers:
            x, probs = layer(x, mask, is_causal, rotary, cache, output_attentions)
            layer_outputs.add(x, probs)
        x = self.norm(x)
        hidden_states, attentions = layer_outputs.tuples(x)
        return BaseModelOutputWithPast(last_hidden_state=x, past_key_values=cache, hidden_states=hidden_states,
                                       attentions=attentions)


class LlamaForCausalLM(GenerationMixin, LlamaPreTrainedModel):
    """Next-token logits: lm_head, tied to embed_tokens when config.tie_word_embeddings (SmolLM2, Llama 3.2 1B)."""

    _tied_weights = keys.TIED_WEIGHTS

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: KVCache | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        logits_to_keep: int = 0,
    ) -> CausalLMOutputWithPast:
        """labels (B, T): the input ids, -100 where no loss is wanted; shifted inside (as in HF).
        logits_to_keep > 0 computes logits for the last that many positions only (generation)."""
        out = self.model(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache,
                         output_attentions, output_hidden_states)
        h = keep_last_positions(out.last_hidden_state, logits_to_keep, labels)  # (B, T or logits_to_keep, C)
        logits = self.lm_head(h)  # (B, T, V)
        loss = causal_lm_loss(logits, labels, attention_mask) if labels is not None else None
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                      hidden_states=out.hidden_states, attentions=out.attentions)


class LlamaForSequenceClassification(LlamaPreTrainedModel):
    """score (no bias) at each row's last non-padding token (the rightmost id != pad_token_id, as in HF)."""

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = LlamaModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: KVCache | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> SequenceClassifierOutputWithPast:
        out = self.model(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache,
                         output_attentions, output_hidden_states)
        h = out.last_hidden_state  # (B, T, C)
        B = h.size(0)
        last = last_token_index(input_ids, self.config.pad_token_id, B)
        logits = self.score(h[torch.arange(B, device=h.device), last])  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(logits, labels, self.num_labels, self.config.problem_type)
        return SequenceClassifierOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                                hidden_states=out.hidden_states, attentions=out.attentions)


# Qwen2: the same classes over a Qwen2Config (q/k/v bias), under Qwen2's names.
class Qwen2PreTrainedModel(LlamaPreTrainedModel):
    config_class = Qwen2Config


class Qwen2Model(LlamaModel):
    config_class = Qwen2Config


class Qwen2ForCausalLM(LlamaForCausalLM):
    config_class = Qwen2Config


class Qwen2ForSequenceClassification(LlamaForSequenceClassification):
    config_class = Qwen2Config
