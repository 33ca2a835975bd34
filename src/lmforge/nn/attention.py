"""Multi-head attention: causal and padding masks, the attention core (`attend`: SDPA or the formula written
out), decoder self-attention with grouped-query heads, cross-attention, the key/value cache that generation
reuses, and encoder (BERT) self-attention.

Dimension legend (used in every shape comment of `lmforge.nn` and `lmforge.models`):
    B   batch size
    T   positions computed in this call (the queries): the whole prompt, or one new token per step
    S   key/value positions: cached past + T for self-attention; the encoder length for cross-attention
    C   hidden size                         I   feed-forward (intermediate) size
    H   query heads                         Hk  key/value heads (H % Hk == 0; Hk < H is grouped-query)
    D   head size                           V   vocabulary size
    N   real tokens of a batch with padding dropped (N <= B * T; encoders' unpadded layout)

    Attention(Q, K, V) = softmax(Q K^T * scale + mask) V          (query head h reads key/value head h // (H / Hk))

Masks are additive (0 or the dtype's most negative value), so a row with nothing to attend (a left-padding
query) gets a uniform average instead of NaN; its output is never read by a real position. With no padding,
SDPA runs with `is_causal=True` and no mask at all (its fastest path). A mask may also carry a per-head additive
position bias, (B or 1, H, T, S): T5's relative positions are that bias plus the padding / causal mask, with
`scale=1` (T5 does not divide the scores by sqrt(D)).

`attention_reference` is the formula written out: it runs when attention probabilities are requested, for
`attn_implementation="eager"`, for `upcast` (scores and softmax in fp32 under half precision) and for dropout
on CPU; the tests check SDPA against it. Dropout of the probabilities is the attention module's own
`nn.Dropout`, so `lmforge.cpu.fast_paths` can swap in its cheaper CPU draw there as everywhere else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .rotary import apply_rotary

# "sdpa": torch's fused kernels where they apply; "eager": the written-out formula everywhere (HF's name).
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
# Encoders (BERT): "unpadded" (the default) drops padding before the layers; outputs equal transformers' at
# real tokens (fp32, within 1e-5) and are zero at padding positions. "sdpa": padded batches,
# transformers-identical outputs everywhere (padding positions included).
ENCODER_ATTN_IMPLEMENTATIONS = ("unpadded", "sdpa")
DEFAULT_ATTN_IMPLEMENTATION = "unpadded"

_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


# ---------------------------------------------------------------------------------------------- positions and masks
def position_ids_from_mask(attention_mask: Tensor | None, T: int, past: int, device: torch.device) -> Tensor:
    """Positions of the T new tokens: (1, T) without a mask, else (B, T) counted from each row's first real token.

    `attention_mask` (B, past + T) covers the cached tokens and the new ones. Left padding therefore does not
    shift learned or rotary positions (the first real token is position 0). Right padding gives the plain
    0, 1, 2, ... everywhere, padding included, as transformers does.
    """
    if attention_mask is None:
        return torch.arange(past, past + T, device=device)[None, :]  # (1, T)
    first_real = attention_mask.to(torch.int32).argmax(dim=1, keepdim=True)  # (B, 1); 0 for an all-padding row
    positions = torch.arange(attention_mask.size(1), device=device)[None, :] - first_real  # (B, S)
    return positions[:, -T:].clamp(min=0)  # (B, T)


def check_attention_mask(attention_mask: Tensor | None, B: int, S: int) -> None:
    if attention_mask is not None and tuple(attention_mask.shape) != (B, S):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, expected ({B}, {S}): one column per cached "
            "token plus one per new token"
        )


def has_padding(attention_mask: Tensor | None) -> bool:
    """Whether a mask must be applied: `attention_mask` has a 0. While `torch.export` traces (ONNX export), any
    given mask counts as padded: the graph serves every input, so the mask computation must be in it (reading
    the mask's values to skip it would be a data-dependent branch that export cannot trace)."""
    if attention_mask is None:
        return False
    return torch.compiler.is_exporting() or not bool(attention_mask.all())


def causal_mask(attention_mask: Tensor | None, T: int, S: int, dtype: torch.dtype,
                device: torch.device) -> tuple[Tensor | None, bool]:
    """The mask for decoder self-attention of T new queries over S = past + T keys.

    Returns (additive mask (B or 1, 1, T, S) or None, is_causal). Query t (absolute position S - T + t) sees keys
    0 .. S - T + t that are not padding. No padding and T == S: no mask, `is_causal=True` (SDPA's causal kernel);
    no padding and T == 1: no mask (one new token sees everything cached). While exporting, the mask is always
    spelled out: a graph's T and S are symbolic, and branching on them would fix them to the example's.
    """
    padded = has_padding(attention_mask)
    if not padded and not torch.compiler.is_exporting():
        if T == S:
            return None, True
        if T == 1:
            return None, False
    allowed = torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)[None, None]  # (1, 1, T, S)
    if padded:
        allowed = allowed & attention_mask.bool()[:, None, None, :]  # (B, 1, T, S)
    return to_additive(allowed, dtype), False


def padding_mask(attention_mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """(B, S) of 1 = attend / 0 = padding -> additive (B, 1, 1, S), or None when nothing is padding."""
    if not has_padding(attention_mask):
        return None
    return to_additive(attention_mask.bool()[:, None, None, :], dtype)  # (B, 1, 1, S)


def to_additive(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, torch.finfo(dtype).min)


def mask_dtype(x: Tensor) -> torch.dtype:
    """The dtype the attention scores will have: the autocast dtype inside autocast, else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


# ---------------------------------------------------------------------------------------------- the attention core
def attention_reference(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, is_causal: bool = False, scale: float | None = None,
    dropout: nn.Module | None = None, upcast: bool = False,
) -> tuple[Tensor, Tensor]:
    """softmax(Q K^T * scale + mask) V written out. q: (B, H, T, D); k, v: (B, Hk, S, D).

    Returns the context (B, H, T, D) and the probabilities (B, H, T, S). The softmax runs in fp32; with
    `upcast` the scores do too (GPT-2's `reorder_and_upcast_attn`, which matters in half precision only).
    `dropout` (a module: active in training mode only) drops probabilities before they weight V.
    """
    H, Hk, T, S = q.size(1), k.size(1), q.size(2), k.size(2)
    if Hk != H:  # grouped-query: each key/value head serves H / Hk query heads
        k = k.repeat_interleave(H // Hk, dim=1)  # (B, H, S, D)
        v = v.repeat_interleave(H // Hk, dim=1)  # (B, H, S, D)
    scale = q.size(-1) ** -0.5 if scale is None else scale
    if upcast:
        with torch.autocast(q.device.type, enabled=False):
            scores = (q.float() @ k.float().transpose(-1, -2)) * scale  # (B, H, T, S)
    else:
        scores = (q @ k.transpose(-1, -2)) * scale  # (B, H, T, S)
    if is_causal:
        mask = to_additive(torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T), scores.dtype)
    if mask is not None:
        scores = scores + mask
    probs = scores.softmax(dim=-1, dtype=torch.float32).to(v.dtype)  # (B, H, T, S)
    context = (dropout(probs) if dropout is not None else probs) @ v  # (B, H, T, D)
    return context, probs


def attend(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, *, is_causal: bool = False, scale: float | None = None,
    dropout: nn.Module | None = None, need_probs: bool = False, eager: bool = False, upcast: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """q: (B, H, T, D), k/v: (B, Hk, S, D), mask additive or None -> context (B, T, H*D), probs (B, H, T, S) or None.

    `dropout`: the module's `nn.Dropout` for the probabilities (applied in training mode only). SDPA by default;
    the written-out formula when probabilities are needed, for `eager`, `upcast`, or dropout on CPU (SDPA's CPU
    dropout is that same math; written out, the draw is the module's, which `cpu.fast_paths` makes cheaper).
    """
    B, H, T, D = q.shape
    dropout_p = dropout.p if dropout is not None and dropout.training else 0.0
    if need_probs or eager or upcast or (dropout_p > 0.0 and q.device.type == "cpu"):
        context, probs = attention_reference(q, k, v, mask, is_causal, scale, dropout, upcast)
        probs = probs if need_probs else None
    else:
        if mask is not None and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)
        if k.size(1) != H and not _SDPA_HAS_GQA:
            k, v = (t.repeat_interleave(H // k.size(1), dim=1) for t in (k, v))  # (B, H, S, D)
        gqa = {"enable_gqa": True} if k.size(1) != H else {}
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                                 is_causal=is_causal, scale=scale, **gqa)
        probs = None
    return context.transpose(1, 2).reshape(B, T, H * D), probs  # (B, T, H*D)


# ---------------------------------------------------------------------------------------------- the cache
class KVCache:
    """Keys and values of every position seen so far, per layer: generation runs the prompt once (prefill),
    then one token per step, each step attending to the cached keys/values instead of recomputing them.

    Storage is preallocated rather than concatenated: each layer's keys and values live in a (B, Hk, capacity,
    D) buffer that a step writes into in place, and the capacity doubles when full. Concatenating copies the
    whole past at every step (quadratic in the length; for a 30-layer model at 1,000 tokens that is ~10% of a
    step's memory traffic), while doubling copies each position a constant number of times on average.
    Attention reads a view of the filled part. When autograd is recording, `update` concatenates instead: an
    in-place write would change tensors saved for the backward pass.

    Cross-attention keys/values (from the encoder output, fixed for the whole generation) are kept apart in
    `cross`, computed at the first step and reused after.

    A forward pass given a cache extends it (a cache is an accumulator handed in to be filled, like an
    optimizer state) and returns the same object as `past_key_values`.
    """

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self._keys: list[Tensor | None] = [None] * num_layers
        self._values: list[Tensor | None] = [None] * num_layers
        self._lengths = [0] * num_layers
        self._spare: list[tuple[Tensor, Tensor] | None] = [None] * num_layers  # `reorder`'s target buffers
        self.cross: list[tuple[Tensor, Tensor] | None] = [None] * num_layers

    def get_seq_length(self, layer: int = 0) -> int:
        """Number of cached positions (of `layer`; every layer holds the same number between forward passes)."""
        return self._lengths[layer]

    def __len__(self) -> int:
        return self.num_layers

    def layer(self, layer: int) -> tuple[Tensor, Tensor]:
        """The cached keys and values of `layer`, (B, Hk, S, D) views each."""
        n = self._lengths[layer]
        return self._keys[layer][:, :, :n], self._values[layer][:, :, :n]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append k, v (B, Hk, T, D) to `layer`; returns all of its keys and values, (B, Hk, S, D) each."""
        n, T = self._lengths[layer], k.size(2)
        keys, values = self._keys[layer], self._values[layer]
        if keys is not None and (keys.shape[0] != k.shape[0] or keys.shape[1] != k.shape[1] or keys.dtype != k.dtype):
            raise ValueError(f"KVCache layer {layer}: holds {tuple(keys.shape[:2])} {keys.dtype} keys, got "
                             f"{tuple(k.shape[:2])} {k.dtype}; use one cache per batch")
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
            keys = k if keys is None else torch.cat([keys[:, :, :n], k], dim=2)  # (B, Hk, S, D)
            values = v if values is None else torch.cat([values[:, :, :n], v], dim=2)
        else:
            if keys is None or n + T > keys.size(2):
                keys, values = self._grow(keys, n, n + T, k), self._grow(values, n, n + T, v)
            keys[:, :, n:n + T] = k
            values[:, :, n:n + T] = v
        self._keys[layer], self._values[layer] = keys, values
        self._lengths[layer] = n + T
        return keys[:, :, :n + T], values[:, :, :n + T]  # (B, Hk, S, D) views

    def reorder(self, index: Tensor) -> None:
        """Keep rows `index` (B',) of every layer, in that order: beam search continues each surviving beam
        from its parent's keys and values (rows may repeat); generation expands a prompt's cache to its beams."""
        self.reorder_self_attention(index)
        for layer in range(self.num_layers):
            if self.cross[layer] is not None:
                self.cross[layer] = tuple(t.index_select(0, index) for t in self.cross[layer])

    def reorder_self_attention(self, index: Tensor) -> None:
        """`reorder` without the cross-attention keys/values: for a reorder that keeps every row on its own
        source (beam search after the expansion), whose cross-attention rows are therefore already equal.

        Beam search reorders at every step: the filled positions are gathered into a second buffer of the same
        capacity, kept from the previous reorder, and the two swap roles. A fresh (B, Hk, capacity, D) tensor per
        layer and step (what `index_select` returns) costs ~10x more on a CPU than the copy itself (new pages),
        and the unfilled tail need not be copied. Views of the cache taken before a reorder are therefore
        overwritten by the next one (the decoding loops hold none)."""
        for layer in range(self.num_layers):
            keys, values = self._keys[layer], self._values[layer]
            if keys is None:
                continue
            if keys.requires_grad and torch.is_grad_enabled():  # autograd's concatenated tensors (see `update`)
                self._keys[layer], self._values[layer] = keys.index_select(0, index), values.index_select(0, index)
                continue
            n, shape = self._lengths[layer], (index.numel(), *keys.shape[1:])
            spare = self._spare[layer]
            if spare is None or spare[0].shape != shape or spare[0].dtype != keys.dtype:
                spare = keys.new_empty(shape), values.new_empty(shape)
            torch.index_select(keys[:, :, :n], 0, index, out=spare[0][:, :, :n])
            torch.index_select(values[:, :, :n], 0, index, out=spare[1][:, :, :n])
            self._keys[layer], self._values[layer] = spare
            self._spare[layer] = (keys, values) if keys.shape == shape else None

    @staticmethod
    def _grow(buffer: Tensor | None, filled: int, needed: int, like: Tensor) -> Tensor:
        B, Hk, _, D = like.shape
        capacity = max(needed, 2 * (buffer.size(2) if buffer is not None else 0), 16)
        grown = like.new_empty(B, Hk, capacity, D)
        if buffer is not None:
            grown[:, :, :filled] = buffer[:, :, :filled]
        return grown


# ---------------------------------------------------------------------------------------------- modules
class Attention(nn.Module):
    """Q, K, V and output projections, read as `q_proj`, `k_proj`, `v_proj`, `o_proj` (HF/Llama's names) and
    stored under `projection_names` (the checkpoint keys).

    Subclasses: `SelfAttention` (causal decoders; rotary positions optional) and `CrossAttention` (queries
    from the decoder, keys/values from an encoder's output). `scale` multiplies the scores (None: 1/sqrt(D)).
    """

    # The projections' module names, i.e. their checkpoint keys. A family whose checkpoints spell them otherwise
    # passes its own (BART / Marian: out_proj; T5: q, k, v, o); the code reads the properties below. An argument,
    # not a subclass, so the CPU fast paths (swapped by exact class) still apply.
    projection_names: tuple[str, str, str, str] = ("q_proj", "k_proj", "v_proj", "o_proj")
    q_proj = property(lambda self: self._modules[self.projection_names[0]])
    k_proj = property(lambda self: self._modules[self.projection_names[1]])
    v_proj = property(lambda self: self._modules[self.projection_names[2]])
    o_proj = property(lambda self: self._modules[self.projection_names[3]])

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, *, qkv_bias: bool,
                 out_bias: bool, dropout: float, layer_idx: int, kv_input_size: int | None = None,
                 scale: float | None = None, projection_names: tuple[str, str, str, str] | None = None):
        super().__init__()
        if projection_names is not None:
            self.projection_names = projection_names
        if num_heads % num_kv_heads != 0:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.attn_dropout = nn.Dropout(dropout)  # on the attention probabilities
        self.layer_idx = layer_idx
        self.scale = scale
        kv_in = kv_input_size or hidden_size
        q, k, v, o = self.projection_names
        setattr(self, q, nn.Linear(hidden_size, num_heads * head_dim, bias=qkv_bias))
        setattr(self, k, nn.Linear(kv_in, num_kv_heads * head_dim, bias=qkv_bias))
        setattr(self, v, nn.Linear(kv_in, num_kv_heads * head_dim, bias=qkv_bias))
        setattr(self, o, nn.Linear(num_heads * head_dim, hidden_size, bias=out_bias))
        self.attn_implementation = "sdpa"

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool,
                need_probs: bool) -> tuple[Tensor, Tensor | None]:
        context, probs = attend(
            q, k, v, mask, is_causal=is_causal, scale=self.scale, dropout=self.attn_dropout, need_probs=need_probs,
            eager=self.attn_implementation == "eager",
        )  # (B, T, H*D)
        return self.o_proj(context), probs  # (B, T, C)


class SelfAttention(Attention):
    def forward(
        self, x: Tensor, mask: Tensor | None, is_causal: bool, rotary: tuple[Tensor, Tensor] | None = None,
        cache: KVCache | None = None, need_probs: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """x: (B, T, C); mask/is_causal from `causal_mask`; rotary: (cos, sin) from `RotaryEmbedding`."""
        B, T, _ = x.shape
        H, Hk, D = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = self.project_qkv(x)  # (B, T, H*D), (B, T, Hk*D), (B, T, Hk*D)
        q = q.view(B, T, H, D)  # (B, T, H, D)
        k = k.view(B, T, Hk, D)  # (B, T, Hk, D)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, D), (B, Hk, T, D)
        v = v.view(B, T, Hk, D).transpose(1, 2)  # (B, Hk, T, D)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, Hk, S, D)
        return self._attend(q, k, v, mask, is_causal, need_probs)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q_proj(x), k_proj(x), v_proj(x). (`cpu.attention` runs the three as one matmul.)"""
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)


class CrossAttention(Attention):
    def forward(
        self, x: Tensor, encoder_states: Tensor | None, mask: Tensor | None, cache: KVCache | None = None,
        need_probs: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """x: (B, T, C) decoder states; encoder_states: (B, S, C_enc), or None when `cache` holds its keys/values;
        mask: from `padding_mask` over the encoder positions."""
        B, T, _ = x.shape
        H, D = self.num_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        cached = cache.cross[self.layer_idx] if cache is not None else None
        if cached is not None:
            k, v = cached
        else:
            if encoder_states is None:
                raise ValueError("cross-attention needs encoder_states (or a cache that already holds them)")
            k, v = self.keys_values(encoder_states)  # (B, Hk, S, D) each
            if cache is not None:
                cache.cross[self.layer_idx] = (k, v)
        if k.size(0) == B:
            return self._attend(q, k, v, mask, False, need_probs)
        # Beam search: keys/values (and mask) are one row per source, whose g = B / sources beams are consecutive
        # rows of x. Each source's g x T queries attend in one call: its keys/values are read once, not g times.
        n, g = k.size(0), B // k.size(0)
        q = q.view(n, g, H, T, D).transpose(1, 2).reshape(n, H, g * T, D)  # (n, H, g*T, D)
        out, probs = self._attend(q, k, v, mask, False, need_probs)  # (n, g*T, C), (n, H, g*T, S)
        if probs is not None:
            probs = probs.view(n, H, g, T, -1).transpose(1, 2).reshape(B, H, T, -1)  # (B, H, T, S)
        return out.reshape(B, T, -1), probs  # (B, T, C)

    def keys_values(self, encoder_states: Tensor) -> tuple[Tensor, Tensor]:
        """encoder_states (B, S, C_enc) -> keys and values (B, Hk, S, D): what the cache holds in `cross`."""
        B, S, _ = encoder_states.shape
        k, v = self.project_kv(encoder_states)  # (B, S, Hk*D) each
        k = k.view(B, S, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hk, S, D)
        v = v.view(B, S, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hk, S, D)
        return k, v

    def project_kv(self, encoder_states: Tensor) -> tuple[Tensor, Tensor]:
        """k_proj and v_proj of the encoder output. (`cpu.attention` runs the two as one matmul.)"""
        return self.k_proj(encoder_states), self.v_proj(encoder_states)


class EncoderSelfAttention(nn.Module):
    """Bidirectional multi-head self-attention with BERT's parameter names (`query`, `key`, `value`); the
    output projection is the sub-layer's `PostNormOutput` (`nn.mlp`), as in HF's BERT.

    `layout` (`nn.packing`): `Padded` (x: (B, T, C)) or `Packing` (x: (N, C), the real tokens only); the
    projections run on x as given, attention on the padded (B, H, T, D) view.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.dropout = nn.Dropout(dropout)  # on the attention probabilities (HF's name)
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor, layout, output_attentions: bool = False) -> tuple[Tensor, Tensor | None]:
        q, k, v = (layout.pad(proj(x)) for proj in (self.query, self.key, self.value))  # (B, T, C) each
        B, T, C = q.shape
        q, k, v = (t.view(B, T, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        context, probs = attend(q, k, v, layout.additive_mask, dropout=self.dropout, need_probs=output_attentions)
        return layout.unpad(context), probs  # (B, T, C) or (N, C); probs (B, H, T, T) or None
