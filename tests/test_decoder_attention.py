"""The shared decoder attention: masks, positions, SDPA vs the written-out formula, cross-attention, and the
KV cache (prefill, then one token per step: logits equal a full forward pass at every step)."""

from __future__ import annotations

import pytest
import torch
from decoder_helpers import close, padded_batch, perturb_

from lmforge.models.gpt2 import GPT2Config, GPT2LMHeadModel
from lmforge.models.llama import LlamaConfig, LlamaForCausalLM
from lmforge.nn import (
    CrossAttention,
    KVCache,
    attend,
    attention_reference,
    causal_mask,
    padding_mask,
    position_ids_from_mask,
)


def test_causal_mask_without_padding_uses_sdpa_causal_flag():
    assert causal_mask(None, 5, 5, torch.float32, torch.device("cpu")) == (None, True)
    assert causal_mask(torch.ones(2, 9), 1, 9, torch.float32, torch.device("cpu")) == (None, False)


def test_causal_mask_with_past_and_padding():
    attention_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    mask, is_causal = causal_mask(attention_mask, 2, 6, torch.float32, torch.device("cpu"))  # 4 cached + 2 new
    allowed = mask == 0  # (B, 1, T, S)
    assert not is_causal and mask.shape == (2, 1, 2, 6)
    assert allowed[0, 0].tolist() == [[False, False, True, True, True, False], [False, False, True, True, True, True]]
    assert allowed[1, 0].tolist() == [[True, True, True, True, True, False], [True, True, True, True, True, False]]


def test_positions_count_from_the_first_real_token():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert position_ids_from_mask(mask, 5, 0, torch.device("cpu")).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert position_ids_from_mask(mask, 1, 4, torch.device("cpu")).tolist() == [[2], [4]]  # one step after 4 cached
    assert position_ids_from_mask(None, 2, 3, torch.device("cpu")).tolist() == [[3, 4]]


@pytest.mark.parametrize("heads", [(4, 4), (6, 2), (4, 1)])
def test_sdpa_equals_the_written_out_formula_with_grouped_heads(heads):
    H, Hk = heads
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, H, 5, 8, generator=g), torch.randn(2, Hk, 7, 8, generator=g), torch.randn(2, Hk, 7, 8, generator=g)
    mask, _ = causal_mask(torch.tensor([[0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0]]), 5, 7, torch.float32, q.device)
    fast, _ = attend(q, k, v, mask)
    slow, probs = attend(q, k, v, mask, need_probs=True)
    close(fast, slow)
    assert probs.shape == (2, H, 5, 7) and torch.allclose(probs.sum(-1), torch.ones(2, H, 5))
    # Query head h reads key/value head h // (H / Hk).
    context, _ = attention_reference(q[:, -1:], k[:, -1:], v[:, -1:], mask)
    close(slow.view(2, 5, H, 8)[:, :, -1], context[:, 0])


def test_reference_formula_and_upcast():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 3, 4, generator=g) for _ in range(3))
    context, probs = attention_reference(q, k, v, is_causal=True, scale=0.5)
    scores = (q @ k.transpose(-1, -2)) * 0.5 + torch.full((3, 3), float("-inf")).triu(1)
    close(probs, scores.softmax(-1))
    close(context, scores.softmax(-1) @ v)
    up, _ = attention_reference(q.bfloat16(), k.bfloat16(), v.bfloat16(), is_causal=True, scale=0.5, upcast=True)
    assert up.dtype == torch.bfloat16
    close(up.float(), context, atol=2e-2)


def test_cross_attention_over_padded_encoder_states_and_cached_keys():
    torch.manual_seed(0)
    attn = perturb_(CrossAttention(16, 4, 2, 4, qkv_bias=True, out_bias=True, dropout=0.0, layer_idx=0,
                                   kv_input_size=12)).eval()
    x, encoder = torch.randn(2, 3, 16), torch.randn(2, 5, 12)
    encoder_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        out, probs = attn(x, encoder, padding_mask(encoder_mask, torch.float32), need_probs=True)
        q = attn.q_proj(x).view(2, 3, 4, 4).transpose(1, 2)
        k = attn.k_proj(encoder).view(2, 5, 2, 4).transpose(1, 2)
        v = attn.v_proj(encoder).view(2, 5, 2, 4).transpose(1, 2)
        expected, _ = attention_reference(q, k, v, padding_mask(encoder_mask, torch.float32))
        close(out, attn.o_proj(expected.transpose(1, 2).reshape(2, 3, 16)))
        assert probs[0, :, :, 3:].abs().max() == 0  # padded encoder positions get no weight
        cache = KVCache(1)
        first, _ = attn(x, encoder, padding_mask(encoder_mask, torch.float32), cache)
        again, _ = attn(x, None, padding_mask(encoder_mask, torch.float32), cache)  # keys/values from the cache
    close(first, out)
    close(again, out)


def test_kv_cache_grows_by_doubling_and_returns_views():
    cache = KVCache(2)
    k = torch.randn(1, 2, 5, 4)
    keys, values = cache.update(0, k, k + 1)
    capacity = cache._keys[0].size(2)
    for step in range(capacity - 5 + 1):  # one past the first capacity
        new = torch.full((1, 2, 1, 4), float(step))
        keys, values = cache.update(0, new, new)
    assert cache.get_seq_length(0) == capacity + 1 and cache.get_seq_length(1) == 0
    assert cache._keys[0].size(2) == 2 * capacity
    close(keys[:, :, :5], k)
    assert keys[0, 0, -1, 0] == capacity - 5 and keys.shape == (1, 2, capacity + 1, 4)
    with pytest.raises(ValueError, match="one cache per batch"):
        cache.update(0, torch.randn(3, 2, 1, 4), torch.randn(3, 2, 1, 4))


def test_kv_cache_concatenates_under_autograd():
    cache = KVCache(1)
    k = torch.randn(1, 1, 2, 4, requires_grad=True)
    cache.update(0, k.detach(), k.detach())
    keys, _ = cache.update(0, k, k)
    keys.sum().backward()
    assert k.grad is not None and keys.shape == (1, 1, 4, 4)


def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, rope_theta=100.0)
    return perturb_(LlamaForCausalLM(config)).eval()


def tiny_gpt2():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=97, n_positions=40, n_embd=32, n_layer=2, n_head=4, pad_token_id=0)
    return perturb_(GPT2LMHeadModel(config)).eval()


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
@pytest.mark.parametrize("side", ["left", "right"])
def test_cached_steps_equal_full_forward_at_every_step(make, side):
    model = make()
    prompt, prompt_mask = padded_batch(97, side, T=7)
    generated = torch.randint(1, 97, (4, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(prompt, attention_mask=prompt_mask, use_cache=True)  # prefill
        cache, mask = out.past_key_values, prompt_mask
        full = model(prompt, attention_mask=prompt_mask)
        close(out.logits[:, -1], full.logits[:, -1], msg="prefill")
        ids = prompt
        for step in range(generated.size(1)):
            token = generated[:, step:step + 1]
            ids, mask = torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
            stepped = model(token, attention_mask=mask, past_key_values=cache)
            assert stepped.past_key_values is cache and cache.get_seq_length() == ids.size(1)
            full = model(ids, attention_mask=mask)
            close(stepped.logits[:, -1], full.logits[:, -1], msg=f"step {step}")


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_chunked_prefill_without_padding_equals_full_forward(make):
    model = make()
    ids = torch.randint(1, 97, (2, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        cache = model(ids[:, :5], use_cache=True).past_key_values
        chunk = model(ids[:, 5:], past_key_values=cache).logits  # 7 new tokens over 5 cached: an offset causal mask
        full = model(ids).logits
    close(chunk, full[:, 5:])


def test_attention_mask_must_cover_cached_and_new_tokens():
    model = tiny_llama()
    ids = torch.randint(1, 97, (2, 4))
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
        with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 1\), expected \(2, 5\)"):
            model(ids[:, :1], attention_mask=torch.ones(2, 1), past_key_values=cache)
