"""BART / Marian training forward on packed tokens: the encoder and decoder stacks run on the real tokens only.

A batch of sources and targets of mixed lengths is mostly padding at its short rows (lengths 12..48 padded to 48:
~40% of the positions), and in the readable forward (`models/bart/model.py`) every projection, feed-forward,
LayerNorm and dropout computes those padding rows too: ~40% of a training step's FLOPs go to positions whose
outputs no loss reads. Here, as in BERT's "unpadded" encoder (`nn.packing`), the stacks run on (N, C) real
tokens; only attention goes back to the padded (B, T) view (`Packing.pad`) for one SDPA call over the batch and
returns to the packed tokens before the output projection:

    x = embed(source tokens) * scale + positions          (N_s, C)   the real source tokens
    per encoder layer:  x = LN(x + out(attend(pad(qkv(x)), source mask)));  x = LN(x + FFN(x))
    y = embed(decoder tokens) * scale + positions         (N_t, C)   the decoder positions read by the loss
    per decoder layer:  y = LN(y + out(attend(pad(qkv(y)), causal & target mask)))
                        y = LN(y + out(attend(pad(q(y)), pad(kv(x)), source mask)));  y = LN(y + FFN(y))

The layers' own modules (and their CPU fast paths: one Q|K|V matmul, the cheap dropout draw) do the work, so the
weights, masks and numbers are the readable forward's at every real position (fp32, within 1e-6: only the
matmuls' row counts differ). It serves `training.seq2seq_lm.Seq2SeqLMTraining`, whose loss reads only the
decoder's states; nothing here returns the padding positions. Shape legend: `lmforge.nn.attention`'s; N_s and
N_t are the real source and decoder tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..nn.attention import Attention, attend, to_additive
from ..nn.packing import Packing


def applies(model: nn.Module) -> bool:
    """Whether `packed_decoder_states` can run `model`: a BART-family encoder-decoder (BART, Marian) whose
    attention takes the default scale (T5's relative position bias is not handled here), with no layer sharded
    by FSDP2: the packed path calls a layer's modules, not its forward, so FSDP's hooks that gather the layer's
    parameters would not run (the readable forward does the same on padded rows)."""
    from ..models.bart.model import EncoderDecoderModel  # models import cpu.fast_paths, not this module

    base = getattr(model, "model", None)
    if not isinstance(base, EncoderDecoderModel):
        return False
    if torch.distributed.is_available():
        from torch.distributed.fsdp import FSDPModule

        layers = [*base.encoder.layers, *base.decoder.layers]
        return not any(isinstance(layer, FSDPModule) for layer in layers)
    return True


def packed_decoder_states(lm: nn.Module, input_ids: Tensor, attention_mask: Tensor | None,
                          decoder_input_ids: Tensor, decoder_attention_mask: Tensor | None, rows: Tensor) -> Tensor:
    """The decoder output (what `lm.lm_head` projects) at the decoder positions `rows` (B, T) bool, as (M, C) in
    row-major order, with the encoder and decoder run on real tokens only. attention_mask (B, S) and
    decoder_attention_mask (B, T): 1 = token, 0 = padding (None: no padding). `rows` must hold every decoder
    token (mask 1) before each row's last chosen position: those are the keys its queries attend to."""
    base = lm.model
    source_mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    source = Packing(source_mask, _scores_dtype(base))
    target = Packing(rows.long(), _scores_dtype(base))
    x = _embed(base.encoder, source.unpad(input_ids), source)  # (N_s, C)
    for layer in base.encoder.layers:
        attended = _self_attention(layer.self_attn, x, source, source.additive_mask)  # (N_s, C)
        x = layer.self_attn_layer_norm(x + layer.dropout(attended))
        x = layer.final_layer_norm(x + layer.dropout(_feed_forward(layer, x)))

    B, T = rows.shape
    causal = torch.ones(T, T, dtype=torch.bool, device=rows.device).tril()  # (T, T)
    keys = rows if decoder_attention_mask is None else decoder_attention_mask.bool()  # (B, T)
    self_mask = to_additive(causal[None, None] & keys[:, None, None, :], target.additive_mask.dtype)  # (B, 1, T, T)
    y = _embed(base.decoder, target.unpad(decoder_input_ids), target)  # (N_t, C)
    for layer in base.decoder.layers:
        attended = _self_attention(layer.self_attn, y, target, self_mask)  # (N_t, C)
        y = layer.self_attn_layer_norm(y + layer.dropout(attended))
        attended = _cross_attention(layer.encoder_attn, y, target, x, source)  # (N_t, C)
        y = layer.encoder_attn_layer_norm(y + layer.dropout(attended))
        y = layer.final_layer_norm(y + layer.dropout(_feed_forward(layer, y)))
    return y  # (N_t, C)


def _scores_dtype(base: nn.Module) -> torch.dtype:
    dtype = base.encoder.embed_tokens.weight.dtype
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") and dtype.is_floating_point else dtype


def _embed(stack: nn.Module, ids: Tensor, packing: Packing) -> Tensor:
    """Token embeddings (scaled) + positions 0..T-1 of each row, at the packed tokens; BART's embedding
    LayerNorm; dropout. ids: (N,) -> (N, C)."""
    positions = packing.unpad(stack.embed_positions(0, packing.T)[None])  # (N, C): each token's own position
    x = stack.embed_tokens(ids) * stack.embed_scale + positions
    if hasattr(stack, "layernorm_embedding"):
        x = stack.layernorm_embedding(x)
    return stack.dropout(x)


def _feed_forward(layer: nn.Module, x: Tensor) -> Tensor:
    return layer.fc2(layer.activation_dropout(layer.act(layer.fc1(x))))  # (N, C)


def _heads(attn: Attention, t: Tensor, packing: Packing, heads: int) -> Tensor:
    """Packed (N, heads * D) -> padded (B, heads, T, D)."""
    return packing.pad(t).view(packing.B, packing.T, heads, attn.head_dim).transpose(1, 2)


def _attend(attn: Attention, q: Tensor, k: Tensor, v: Tensor, mask: Tensor, queries: Packing) -> Tensor:
    """`Attention._attend` with the output projection on the packed queries: -> (N_q, C)."""
    context, _ = attend(q, k, v, mask, scale=attn.scale, dropout=attn.attn_dropout,
                        eager=attn.attn_implementation == "eager")  # (B, T, H*D)
    return attn.o_proj(queries.unpad(context))  # (N_q, C)


def _self_attention(attn: Attention, x: Tensor, packing: Packing, mask: Tensor) -> Tensor:
    q, k, v = attn.project_qkv(x)  # (N, H*D), (N, Hk*D), (N, Hk*D)
    H, Hk = attn.num_heads, attn.num_kv_heads
    return _attend(attn, _heads(attn, q, packing, H), _heads(attn, k, packing, Hk), _heads(attn, v, packing, Hk),
                   mask, packing)


def _cross_attention(attn: Attention, y: Tensor, queries: Packing, x: Tensor, keys: Packing) -> Tensor:
    k, v = attn.project_kv(x)  # (N_s, Hk*D) each
    Hk = attn.num_kv_heads
    q = _heads(attn, attn.q_proj(y), queries, attn.num_heads)  # (B, H, T, D)
    return _attend(attn, q, _heads(attn, k, keys, Hk), _heads(attn, v, keys, Hk), keys.additive_mask, queries)
