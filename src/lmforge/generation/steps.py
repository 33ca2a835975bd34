"""Step functions: what the decoding loops (`decoding.py`) ask of a model. The loops never call a model
directly; they call an object with three methods:

    start(input_ids)  -> (ids (R, L0), logits (R, V))   run the prompt, return the sequence so far and the
                                                         fp32 logits of the first new token
    step(tokens (R,)) -> logits (R, V)                   append one token per row, return the next logits
    reorder(index (R',)) -> None                         keep rows `index` (beam search: each beam continues
                                                         from its parent; also expands a prompt to its beams)

`CausalLMSteps` is the decoder-only one: the prompt runs once into a new `KVCache` (prefill), then one
token per step reads it. `Seq2SeqSteps` is the encoder-decoder one: `start` encodes the prompt once, the
decoder begins from its start token and the cache's cross-attention slots keep the encoder's keys/values;
every loop, processor and stopping rule is the same.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..nn.attention import KVCache


class CausalLMSteps:
    """A causal LM (`*ForCausalLM`, `GPT2LMHeadModel`) over a growing KV cache.

    The attention mask grows by a column of ones per step; positions come from it inside the model (each
    row counts from its first real token), so left-padded rows continue at their own positions.
    """

    def __init__(self, model: torch.nn.Module, attention_mask: Tensor):
        self.model = model
        self.mask = attention_mask  # (R, S): prompt + tokens generated so far
        self.cache = KVCache(model.config.num_hidden_layers)

    def start(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(input_ids, attention_mask=self.mask, past_key_values=self.cache, logits_to_keep=1)
        return input_ids, out.logits[:, -1].float()  # (R, L0), (R, V)

    def step(self, tokens: Tensor) -> Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.size(0), 1)], dim=1)  # (R, S + 1)
        out = self.model(tokens[:, None], attention_mask=self.mask, past_key_values=self.cache)
        return out.logits[:, -1].float()  # (R, V)

    def reorder(self, index: Tensor) -> None:
        self.cache.reorder(index)
        self.mask = self.mask.index_select(0, index)


class Seq2SeqSteps:
    """An encoder-decoder (`T5ForConditionalGeneration`, ...): the prompt goes through the encoder once; the
    decoder starts from `model.generation_prompt` (the decoder start token) with a new KV cache, whose
    cross-attention slots are filled at that first call (the encoder's keys/values, never recomputed), then
    reads one token per step. The encoder output and padding mask follow the rows through `reorder`."""

    def __init__(self, model: torch.nn.Module, attention_mask: Tensor):
        self.model = model
        self.mask = attention_mask  # (R, S_enc): the encoder's padding, fixed for the whole generation
        self.encoder_states: Tensor | None = None  # (R, S_enc, C)
        self.cache: KVCache | None = None

    def start(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        self.encoder_states = self.model.get_encoder()(input_ids=input_ids, attention_mask=self.mask).last_hidden_state
        decoder_ids = self.model.generation_prompt(input_ids)  # (R, 1)
        out = self.model(attention_mask=self.mask, encoder_outputs=(self.encoder_states,),
                         decoder_input_ids=decoder_ids, use_cache=True)
        self.cache = out.past_key_values
        return decoder_ids, out.logits[:, -1].float()  # (R, 1), (R, V)

    def step(self, tokens: Tensor) -> Tensor:
        out = self.model(attention_mask=self.mask, encoder_outputs=(self.encoder_states,),
                         decoder_input_ids=tokens[:, None], past_key_values=self.cache)
        return out.logits[:, -1].float()  # (R, V)

    def reorder(self, index: Tensor) -> None:
        self.cache.reorder(index)
        self.mask = self.mask.index_select(0, index)
        self.encoder_states = self.encoder_states.index_select(0, index)
