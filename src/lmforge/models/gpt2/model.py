"""GPT-2 (Radford et al. 2019): token + learned position embeddings, pre-LN causal decoder blocks, a final
LayerNorm, and heads: language modelling (tied to the token embeddings), sequence classification (read at
each row's last non-padding token) and token classification.

    x = wte(ids) + wpe(positions) [+ wte(token_type_ids)]
    for each block:  x = x + Attn(LN(x));  [x = x + CrossAttn(LN(x), encoder)];  x = x + MLP(LN(x))
    h = LN_f(x)

Module names are HF's, and Conv1D weights are stored (in, out) as in HF (see keys.py), so state dicts move
between lmforge and transformers untouched. Shapes use the legend of `lmforge.nn.attention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...generation.mixin import GenerationMixin
from ...nn.attention import (
    KVCache,
    attend,
    causal_mask,
    check_attention_mask,
    mask_dtype,
    padding_mask,
    position_ids_from_mask,
)
from ...nn.heads import causal_lm_loss, keep_last_positions, last_token_index, sequence_classification_loss
from ...nn.linear import Conv1D
from ...nn.mlp import ACTIVATIONS
from ...nn.outputs import LayerOutputs
from ...outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)
from ..base import PreTrainedModel, normal_init
from . import keys
from .config import GPT2Config


class GPT2Attention(nn.Module):
    """Multi-head attention with HF's Conv1D projections: `c_attn` makes Q|K|V (self-attention) or K|V from the
    encoder output (`is_cross`, with `q_attn` for Q); `c_proj` mixes the heads back."""

    def __init__(self, config: GPT2Config, layer_idx: int, is_cross: bool = False):
        super().__init__()
        C = config.n_embd
        self.num_heads, self.head_dim = config.n_head, config.head_dim
        self.layer_idx, self.is_cross = layer_idx, is_cross
        if is_cross:
            self.c_attn = Conv1D(C, 2 * C)  # (B, S, C) -> (B, S, 2C): K|V
            self.q_attn = Conv1D(C, C)
        else:
            self.c_attn = Conv1D(C, 3 * C)  # (B, T, C) -> (B, T, 3C): Q|K|V
        self.c_proj = Conv1D(C, C)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)  # on the attention probabilities
        self.resid_dropout = nn.Dropout(config.resid_pdrop)
        scale = self.head_dim ** -0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            scale /= float(layer_idx + 1)
        self.scale = scale
        self.reorder_and_upcast = config.reorder_and_upcast_attn
        self.attn_implementation = "sdpa"

    def forward(
        self, x: Tensor, mask: Tensor | None, is_causal: bool, cache: KVCache | None = None,
        encoder_states: Tensor | None = None, need_probs: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        B, T, C = x.shape
        H, D = self.num_heads, self.head_dim
        if not self.is_cross:
            q, k, v = self.c_attn(x).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, D)
            if cache is not None:
                k, v = cache.update(self.layer_idx, k, v)  # (B, H, S, D)
        else:
            q = self.q_attn(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
            cached = cache.cross[self.layer_idx] if cache is not None else None
            if cached is not None:
                k, v = cached
            else:
                S = encoder_states.size(1)
                k, v = self.c_attn(encoder_states).view(B, S, 2, H, D).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, S, D)
                if cache is not None:
                    cache.cross[self.layer_idx] = (k, v)
        context, probs = attend(
            q, k, v, mask, is_causal=is_causal, scale=self.scale,
            dropout=self.attn_dropout, need_probs=need_probs,
            eager=self.attn_implementation == "eager",
            upcast=self.reorder_and_upcast and q.dtype != torch.float32,  # a no-op in fp32: keep SDPA there
        )  # (B, T, C)
        return self.resid_dropout(self.c_proj(context)), probs


class GPT2MLP(nn.Module):
    """(B, T, C) -> act(c_fc) (B, T, I) -> c_proj (B, T, C) -> dropout."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.c_fc = Conv1D(config.n_embd, config.intermediate_size)
        self.c_proj = Conv1D(config.intermediate_size, config.n_embd)
        self.act = ACTIVATIONS[config.activation_function]
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class GPT2Block(nn.Module):
    """Pre-LN: x + Attn(LN(x)), [x + CrossAttn(LN(x), encoder)], x + MLP(LN(x))."""

    def __init__(self, config: GPT2Config, layer_idx: int):
        super().__init__()
        C = config.n_embd
        self.ln_1 = nn.LayerNorm(C, eps=config.layer_norm_epsilon)
        self.attn = GPT2Attention(config, layer_idx)
        if config.add_cross_attention:
            self.crossattention = GPT2Attention(config, layer_idx, is_cross=True)
            self.ln_cross_attn = nn.LayerNorm(C, eps=config.layer_norm_epsilon)
        self.ln_2 = nn.LayerNorm(C, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(config)

    def forward(
        self, x: Tensor, mask: Tensor | None, is_causal: bool, cache: KVCache | None, encoder_states: Tensor | None,
        encoder_mask: Tensor | None, need_probs: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        attended, probs = self.attn(self.ln_1(x), mask, is_causal, cache, need_probs=need_probs)
        x = x + attended
        cross_probs = None
        if encoder_states is not None:  # as in HF, cross-attention runs when an encoder output is given
            if not hasattr(self, "crossattention"):
                raise ValueError("encoder_hidden_states were given but the config has add_cross_attention=False")
            attended, cross_probs = self.crossattention(self.ln_cross_attn(x), encoder_mask, False, cache,
                                                        encoder_states, need_probs)
            x = x + attended
        return x + self.mlp(self.ln_2(x)), probs, cross_probs


class GPT2PreTrainedModel(PreTrainedModel):
    config_class = GPT2Config
    base_model_prefix = keys.BASE_MODEL_PREFIX
    key_rules = keys.KEY_RULES
    attn_implementations = ("sdpa", "eager")
    supports_unpadding = False

    def _init_weights(self, module: nn.Module) -> None:
        # GPT-2's initialisation: N(0, initializer_range); the projections into the residual stream (c_proj)
        # scaled by 1/sqrt(2 * n_layer), as the paper describes (two residual additions per block).
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, Conv1D, nn.Embedding)):
            normal_init(module, std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        if isinstance(module, (GPT2Attention, GPT2MLP)):
            nn.init.normal_(module.c_proj.weight, mean=0.0, std=std / math.sqrt(2 * self.config.n_layer))


class GPT2Model(GPT2PreTrainedModel):
    def __init__(self, config: GPT2Config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(GPT2Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def forward(
        self,
        input_ids: Tensor | None = None,
        past_key_values: KVCache | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPast:
        """input_ids (B, T) or inputs_embeds (B, T, C). attention_mask (B, past + T): 1 = token, 0 = padding
        (left or right). Positions default to counting from each row's first real token. With a cache (given,
        or new with use_cache=True) only the new tokens are passed; the cache is extended and returned."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        B, T, _ = x.shape
        cache = past_key_values if past_key_values is not None else (KVCache(self.config.n_layer) if use_cache else None)
        past = cache.get_seq_length() if cache is not None else 0
        check_attention_mask(attention_mask, B, past + T)
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask, T, past, x.device)  # (B or 1, T)
        # (Not while exporting: a graph's lengths are symbolic and the maximum is data; ONNX has no error to raise.)
        if not torch.compiler.is_exporting() and (past + T > self.config.n_positions
                                                  or int(position_ids.max()) >= self.config.n_positions):
            raise ValueError(f"sequence of {past + T} positions exceeds n_positions={self.config.n_positions}; "
                             "truncate the input")
        x = x + self.wpe(position_ids)
        if token_type_ids is not None:
            x = x + self.wte(token_type_ids)  # GPT-2 has no segment table: HF reuses the token embeddings
        x = self.drop(x)

        mask, is_causal = causal_mask(attention_mask, T, past + T, mask_dtype(x), x.device)
        encoder_mask = padding_mask(encoder_attention_mask, mask_dtype(x)) if encoder_hidden_states is not None else None
        layer_outputs = LayerOutputs(x, output_hidden_states, output_attentions)
        cross_attentions = [] if output_attentions and self.config.add_cross_attention else None
        for block in self.h:
            x, probs, cross_probs = block(x, mask, is_causal, cache, encoder_hidden_states, encoder_mask,
                                          output_attentions)
            layer_outputs.add(x, probs)
            if cross_attentions is not None:
                cross_attentions.append(cross_probs)
        x = self.ln_f(x)
        hidden_states, attentions = layer_outputs.tuples(x)
        return BaseModelOutputWithPast(
            last_hidden_state=x, past_key_values=cache, hidden_states=hidden_states, attentions=attentions,
            cross_attentions=tuple(cross_attentions) if cross_attentions is not None else None,
        )


class GPT2LMHeadModel(GenerationMixin, GPT2PreTrainedModel):
    """Next-token logits: lm_head (weights tied to wte unless tie_word_embeddings=False)."""

    _tied_weights = keys.TIED_WEIGHTS

    def __init__(self, config: GPT2Config):
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(
        self,
        input_ids: Tensor | None = None,
        past_key_values: KVCache | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        logits_to_keep: int = 0,
    ) -> CausalLMOutputWithPast:
        """labels (B, T): the input ids, -100 where no loss is wanted; shifted inside (as in HF).
        logits_to_keep > 0 computes logits for the last that many positions only (generation)."""
        out = self.transformer(
            input_ids, past_key_values, attention_mask, token_type_ids, position_ids, inputs_embeds,
            encoder_hidden_states, encoder_attention_mask, use_cache, output_attentions, output_hidden_states,
        )
        h = keep_last_positions(out.last_hidden_state, logits_to_keep, labels)  # (B, T or logits_to_keep, C)
        logits = self.lm_head(h)  # (B, T, V)
        loss = causal_lm_loss(logits, labels, attention_mask) if labels is not None else None
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=out.past_key_values, hidden_states=out.hidden_states,
            attentions=out.attentions, cross_attentions=out.cross_attentions,
        )


class GPT2ForSequenceClassification(GPT2PreTrainedModel):
    """score (no bias) at each row's last non-padding token (the rightmost id != pad_token_id, as in HF)."""

    def __init__(self, config: GPT2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = GPT2Model(config)
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: Tensor | None = None,
        past_key_values: KVCache | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> SequenceClassifierOutputWithPast:
        out = self.transformer(
            input_ids, past_key_values, attention_mask, token_type_ids, position_ids, inputs_embeds,
            use_cache=use_cache, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
        )
        h = out.last_hidden_state  # (B, T, C)
        B = h.size(0)
        last = last_token_index(input_ids, self.config.pad_token_id, B)
        logits = self.score(h[torch.arange(B, device=h.device), last])  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(logits, labels, self.num_labels, self.config.problem_type)
        return SequenceClassifierOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                                hidden_states=out.hidden_states, attentions=out.attentions)


class GPT2ForTokenClassification(GPT2PreTrainedModel):
    def __init__(self, config: GPT2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = GPT2Model(config)
        self.dropout = nn.Dropout(config.classifier_dropout if config.classifier_dropout is not None else 0.1)
        self.classifier = nn.Linear(config.n_embd, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: Tensor | None = None,
        past_key_values: KVCache | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> TokenClassifierOutput:
        out = self.transformer(
            input_ids, past_key_values, attention_mask, token_type_ids, position_ids, inputs_embeds,
            use_cache=use_cache, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
        )
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().view(-1, self.num_labels), labels.view(-1).to(logits.device))
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                     attentions=out.attentions)
