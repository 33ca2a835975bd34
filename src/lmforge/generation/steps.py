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
    """An encoder-decoder (`BartForConditionalGeneration`, `MarianMTModel`, `T5ForConditionalGeneration`):
    `start` encodes the source once and runs the decoder start tokens into a new `KVCache` (the model's), whose
    cross-attention slots then hold the encoder output's keys/values for every later step; each step feeds one
    decoder token per row. No decoder padding mask: decoder rows all begin with the start token (transformers
    passes none either). `reorder` moves the self-attention cache with the rows. The source side (encoder output,
    source mask, cross-attention keys/values: (sources, S, ...) each) stays one row per source while the rows
    are each source's beams in order (the expansion to beams and every beam-search reorder after it keep that):
    cross-attention then reads a source's keys/values once for all its beams (`CrossAttention`), and nothing of
    the source side is copied per step (transformers copies it to every beam, and reorders it every step). A
    reorder that breaks the order gives every row its own copy."""

    def __init__(self, model: torch.nn.Module, source_ids: Tensor, source_mask: Tensor):
        self.model = model
        self.source_ids, self.source_mask = source_ids, source_mask  # (n, S): one row per source
        self.source_rows = torch.arange(source_ids.size(0), device=source_ids.device)  # (R,): each row's source
        self.cache: KVCache | None = None
        self.encoder_states: Tensor | None = None  # (n, S, C), or (R, S, C) once a reorder broke the order
        self.source_side: tuple[Tensor, Tensor, list] | None = None  # one row per source: states, mask, cross K/V

    def start(self, decoder_ids: Tensor) -> tuple[Tensor, Tensor]:
        encoder = self.model.get_encoder()
        self.encoder_states = encoder(input_ids=self.source_ids, attention_mask=self.source_mask).last_hidden_state
        logits = self._logits(decoder_ids)  # (R, V)
        self.source_side = (self.encoder_states, self.source_mask, list(self.cache.cross))
        return decoder_ids, logits  # (R, 1), (R, V)

    def step(self, tokens: Tensor) -> Tensor:
        return self._logits(tokens[:, None])  # (R, V)

    def _logits(self, decoder_ids: Tensor) -> Tensor:
        out = self.model(attention_mask=self.source_mask, decoder_input_ids=decoder_ids,
                         encoder_outputs=(self.encoder_states,), past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values  # new at the first call, the same object later
        return out.logits[:, -1].float()

    def reorder(self, index: Tensor) -> None:
        self.cache.reorder_self_attention(index)
        source_rows = self.source_rows.index_select(0, index)  # (R',)
        if torch.equal(source_rows, self.source_rows):  # every row keeps its source: the source side stays
            return
        self.source_rows = source_rows
        states, mask, cross = self.source_side
        n, R = states.size(0), source_rows.numel()
        in_order = R % n == 0 and torch.equal(
            source_rows, torch.arange(n, device=source_rows.device).repeat_interleave(R // n))
        if not in_order:  # each row its own copy of its source's rows
            states, mask = states.index_select(0, source_rows), mask.index_select(0, source_rows)
            cross = [tuple(t.index_select(0, source_rows) for t in kv) if kv is not None else None for kv in cross]
        self.encoder_states, self.source_mask = states, mask
        self.cache.cross[:] = cross
