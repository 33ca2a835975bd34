"""Step functions: what the decoding loops (`decoding.py`) ask of a model. The loops never call a model
directly; they call an object with three methods:

    start(input_ids)  -> (ids (R, L0), logits (R, V))   run the prompt, return the sequence so far and the
                                                         fp32 logits of the first new token
    step(tokens (R,)) -> logits (R, V)                   append one token per row, return the next logits
    reorder(index (R',)) -> None                         keep rows `index` (beam search: each beam continues
                                                         from its parent; also expands a prompt to its beams)

`CausalLMSteps` is the decoder-only one: the prompt runs once into a new `KVCache` (prefill), then one
token per step reads it. An encoder-decoder plugs in its own (encode once into the cache's cross-attention
slots, start from the decoder start token) and reuses every loop, processor and stopping rule unchanged.
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
