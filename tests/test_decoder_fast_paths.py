"""The decoders' CPU fast paths (`lmforge.cpu.fast_paths`): swapped in at construction, classes only; fused
Q|K|V / K|V / gate|up matmuls and oneDNN bf16 linears give the readable blocks' outputs and gradients."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from decoder_helpers import lm_labels, padded_batch, perturb_

from lmforge.cpu import attention as cpu_attention
from lmforge.cpu import fast_paths, onednn
from lmforge.cpu.attention import FusedKVCrossAttention, FusedQKVSelfAttention, decode_attention
from lmforge.cpu.dropout import Dropout
from lmforge.cpu.mlp import OneDNNGatedMLP, OneDNNLinear
from lmforge.generation import GenerationConfig
from lmforge.models.gpt2 import GPT2Config, GPT2LMHeadModel
from lmforge.models.llama import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from lmforge.nn.attention import CrossAttention, KVCache, SelfAttention, attention_reference
from lmforge.nn.mlp import GatedMLP

SIZES = dict(vocab_size=99, hidden_size=48, intermediate_size=37, num_hidden_layers=2, num_attention_heads=6,
             num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
MODELS = {
    "llama-gqa": lambda: LlamaForCausalLM(LlamaConfig(**SIZES)),
    "qwen2-bias": lambda: Qwen2ForCausalLM(Qwen2Config(**SIZES)),
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=99, n_embd=48, n_layer=2, n_head=4, n_positions=64,
                                               pad_token_id=0)),
}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return perturb_(MODELS[name]())


def classes(model: torch.nn.Module) -> set[type]:
    return {type(m) for m in model.modules()}


def count_onednn_calls(monkeypatch) -> list:
    calls = []
    real_linear = onednn.linear
    monkeypatch.setattr(onednn, "linear", lambda *a, **k: calls.append(1) or real_linear(*a, **k))
    return calls


def test_applied_at_construction_and_restored():
    model = build("llama-gqa")
    layer = model.model.layers[0]
    assert type(layer.self_attn) is FusedQKVSelfAttention and type(layer.mlp) is OneDNNGatedMLP
    assert type(model.lm_head) is OneDNNLinear and type(layer.self_attn.attn_dropout) is Dropout
    readable = fast_paths.restore(copy.deepcopy(model))
    assert type(readable.model.layers[0].self_attn) is SelfAttention and type(readable.lm_head) is torch.nn.Linear
    assert not classes(readable) & set(fast_paths.READABLE)
    assert list(readable.state_dict()) == list(model.state_dict())
    assert classes(fast_paths.apply(readable)) == classes(model)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", list(MODELS))
def test_fp32_inference_equals_readable_blocks(cpu_path, name, side):
    fast = build(name).eval()
    readable = fast_paths.restore(copy.deepcopy(fast))
    ids, mask = padded_batch(99, side)
    with torch.no_grad():
        got = fast(ids, attention_mask=mask, labels=lm_labels(ids, mask))
        want = readable(ids, attention_mask=mask, labels=lm_labels(ids, mask))
    torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.loss, want.loss, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["llama-gqa", "qwen2-bias"])
def test_bf16_inference_takes_onednn_and_stays_close(monkeypatch, cpu_path, name):
    fast = build(name).eval()
    readable = fast_paths.restore(copy.deepcopy(fast))
    ids, mask = padded_batch(99, "left")
    with torch.no_grad():
        fp32 = readable(ids, attention_mask=mask).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want = readable(ids, attention_mask=mask).logits
            calls = count_onednn_calls(monkeypatch)
            with onednn.frozen_weights():
                got = fast(ids, attention_mask=mask).logits
    # Per layer: Q|K|V, o_proj, SiLU(gate) (the up * gate product is the binary op), down_proj; then lm_head.
    native = cpu_path.uses("onednn_bf16")
    assert len(calls) == (4 * fast.config.num_hidden_layers + 1 if native else 0)
    real = mask.bool()
    ours_error = (got.float() - fp32)[real].abs().max()
    readable_error = (want.float() - fp32)[real].abs().max()
    assert ours_error < 0.05 and ours_error < 2 * readable_error + 1e-3, (ours_error, readable_error)


@pytest.mark.parametrize("name", list(MODELS))
def test_training_loss_and_gradients_equal_readable_blocks(name):
    fast = build(name).train()  # dropout probabilities are 0 in these configs except GPT-2's defaults
    for m in fast.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    readable = fast_paths.restore(copy.deepcopy(fast))
    ids, mask = padded_batch(99, "right")
    losses = []
    for model in (fast, readable):
        loss = model(ids, attention_mask=mask, labels=lm_labels(ids, mask)).loss
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], atol=1e-6, rtol=0)
    for (name_, p), q in zip(fast.named_parameters(), readable.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=0, msg=name_)


def test_gated_mlp_without_a_fusable_activation_falls_back(monkeypatch):
    torch.manual_seed(0)
    readable = perturb_(GatedMLP(16, 24, "tanh", bias=True))
    fast = copy.deepcopy(readable)
    fast.__class__ = OneDNNGatedMLP
    x = torch.randn(2, 5, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(fast(x), readable(x), atol=0, rtol=0)


@pytest.mark.parametrize("bias", [False, True])
def test_fused_cross_attention_equals_readable_and_caches_encoder_keys(cpu_path, bias):
    torch.manual_seed(0)
    readable = perturb_(CrossAttention(24, 4, 2, 6, qkv_bias=bias, out_bias=bias, dropout=0.0, layer_idx=0,
                                       kv_input_size=20)).eval()
    fast = copy.deepcopy(readable)
    fast.__class__ = FusedKVCrossAttention
    x, encoder = torch.randn(2, 3, 24), torch.randn(2, 7, 20)
    with torch.no_grad():
        want, _ = readable(x, encoder, None)
        cache = KVCache(1)
        got, _ = fast(x, encoder, None, cache)
        again, _ = fast(x, None, None, cache)  # keys/values of the encoder output from the cache
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(again, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["llama-gqa", "qwen2-bias"])
def test_fp32_inference_never_copies_weights(monkeypatch, name):
    """A decode step streams the weights from memory: concatenating Q|K|V or gate|up weights on each call (fp32,
    where nothing is prepared once) would copy most of them again. The fast blocks run one matmul per weight."""
    model = build(name).eval()
    params = {p.data_ptr() for p in model.parameters()}
    copied = []
    real_cat = torch.cat
    monkeypatch.setattr(torch, "cat", lambda ts, *a, **k: copied.extend(
        t.shape for t in ts if t.data_ptr() in params) or real_cat(ts, *a, **k))
    ids, mask = padded_batch(99, "left")
    with torch.no_grad():
        model.generate(ids, mask, max_new_tokens=2, eos_token_id=[])
    assert copied == []


@pytest.mark.parametrize("heads", [(6, 2), (4, 4)])
@pytest.mark.parametrize("mask_kind", ["none", "padding", "per-head"])
def test_decode_attention_equals_the_written_out_formula(heads, mask_kind):
    torch.manual_seed(0)
    (H, Hk), B, S, D = heads, 3, 9, 8
    q, k, v = torch.randn(B, H, 1, D), torch.randn(B, Hk, S, D), torch.randn(B, Hk, S, D)
    mask = None
    if mask_kind == "padding":
        mask = torch.zeros(B, 1, 1, S).masked_fill_(torch.arange(S) < torch.tensor([0, 3, 5])[:, None, None, None],
                                                     torch.finfo(torch.float32).min)
    elif mask_kind == "per-head":  # T5's relative position bias: one row per query head
        mask = torch.randn(1, H, 1, S)
    want, _ = attention_reference(q, k, v, mask, scale=0.3)  # (B, H, 1, D)
    got = decode_attention(q, k, v, mask, scale=0.3)  # (B, 1, H*D)
    torch.testing.assert_close(got, want.transpose(1, 2).reshape(B, 1, H * D), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["llama-gqa", "qwen2-bias"])
def test_bf16_decode_steps_take_decode_attention(monkeypatch, name):
    """bf16 CPU inference, one new token per row: `decode_attention` (SDPA's bf16 CPU kernel is ~5x slower at
    these shapes); the prompt (several queries) still runs SDPA. Logits stay close to the readable blocks'."""
    fast = build(name).eval().to(torch.bfloat16)
    readable = fast_paths.restore(copy.deepcopy(fast))
    calls = []
    real = cpu_attention.decode_attention
    monkeypatch.setattr(cpu_attention, "decode_attention", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    ids, mask = padded_batch(99, "left")
    with torch.no_grad():
        logits = {}
        for label, model in (("fast", fast), ("readable", readable)):
            cache = KVCache(model.config.num_hidden_layers)
            model(ids, attention_mask=mask, past_key_values=cache)
            step_mask = torch.cat([mask, torch.ones(4, 1, dtype=mask.dtype)], dim=1)
            logits[label] = model(ids[:, -1:], attention_mask=step_mask, past_key_values=cache).logits.float()
    assert len(calls) == fast.config.num_hidden_layers and all(shape[2] == 1 for shape in calls)
    torch.testing.assert_close(logits["fast"], logits["readable"], atol=0.05, rtol=0)


def test_generate_prepares_bf16_weights_once_per_call(monkeypatch, cpu_path):
    """bf16 weights are cast / concatenated / reordered once per generate (and generate_stream) call, not at
    every step; tokens equal those of a generate that prepares them at every step."""
    model = build("llama-gqa").eval().to(torch.bfloat16)
    ids, mask = padded_batch(99, "left")
    prepared = []
    real = onednn.weights_in
    monkeypatch.setattr(onednn, "weights_in", lambda *a: prepared.append(1) or real(*a))
    counts, outputs = [], []
    for n in (2, 6):
        prepared.clear()
        outputs.append(model.generate(ids, mask, max_new_tokens=n, eos_token_id=[]))
        counts.append(len(prepared))
    native = cpu_path.uses("onednn_bf16")
    # per layer: Q|K|V, o_proj, gate, up, down; then lm_head
    assert counts == ([5 * model.config.num_hidden_layers + 1] * 2 if native else [0, 0])
    prepared.clear()
    list(model.generate_stream(ids[:1, -4:], _IdsTokenizer(), GenerationConfig(max_new_tokens=6, eos_token_id=[])))
    assert len(prepared) == (5 * model.config.num_hidden_layers + 1 if native else 0)
    monkeypatch.setattr(onednn, "frozen_weights", lambda prepared=None: contextlib.nullcontext())
    torch.testing.assert_close(model.generate(ids, mask, max_new_tokens=6, eos_token_id=[]), outputs[1])


class _IdsTokenizer:
    """Text = the ids written out (what `generate_stream` needs of a tokenizer)."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))
