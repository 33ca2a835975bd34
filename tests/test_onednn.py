"""The CPU inference path: oneDNN linear (+ fused GELU/ReLU) in fp32 and bf16, bf16 weights cast once per block;
and its ATen fallback (`cpu_path` "fallback", where cpu_caps says oneDNN or its bf16 is absent) with the same results."""

import pytest
import torch
import torch.nn.functional as F
from conftest import require_cpu
from torch import nn

from lmforge.cpu import capabilities as cpu_caps
from lmforge.cpu import onednn
from lmforge.nn.mlp import ACTIVATIONS


def bf16_inference():
    return torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("activation, reference", [(None, lambda y: y), ("gelu", F.gelu), ("relu", F.relu)])
def test_bf16_linear_close_to_fp32(cpu_path, activation, reference):
    torch.manual_seed(0)
    layer = nn.Linear(64, 96)
    x = torch.randn(37, 64)
    want = reference(layer(x)).detach()
    inference, autocast = bf16_inference()
    with inference, autocast:
        assert onednn.active(x, layer.weight, fp32=False) == cpu_path.uses("onednn_bf16")
        got = onednn.linear_module(x, layer, fp32=False, activation=activation)
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() < 0.05 * want.abs().max()


@pytest.mark.parametrize("activation, reference", [(None, lambda y: y), ("gelu", F.gelu), ("relu", F.relu)])
def test_fp32_linear_equals_aten_on_request(cpu_path, activation, reference):
    torch.manual_seed(0)
    layer = nn.Linear(384, 1536)
    x = torch.randn(300, 384)
    with torch.inference_mode():
        want = reference(layer(x))
        assert onednn.active(x, layer.weight, fp32=True) == cpu_path.uses("onednn_linear")
        got = onednn.linear_module(x, layer, fp32=True, activation=activation)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # fp32 sums, in another order


@pytest.mark.parametrize("forced", [{}, {"capability": "avx2"}, {"disable_onednn": True}])
def test_where_the_path_applies(forced):
    """Never skipped: the expectations follow what cpu_caps says (this CPU, then an AVX2 one, then no oneDNN)."""
    x = torch.randn(3, 4)
    w = torch.randn(5, 4)
    with cpu_caps.forced(**forced) as caps:
        fp32 = torch.float32 if caps.onednn_linear else None
        bf16 = torch.bfloat16 if caps.onednn_bf16 else None  # AVX2: oneDNN has no bf16 there
        assert onednn.compute_dtype(x, w, fp32=True) is None  # autograd on
        with torch.no_grad():
            assert onednn.compute_dtype(x, w, fp32=True) == fp32
            assert onednn.compute_dtype(x, w, fp32=False) is None  # fp32 kept on ATen unless asked
            assert onednn.compute_dtype(x.bfloat16(), w.bfloat16(), fp32=False) == bf16  # a bf16 model
            assert onednn.compute_dtype(x.double(), w.double(), fp32=True) is None
            assert onednn.compute_dtype(x, w.bfloat16(), fp32=True) is None  # mixed dtypes: ATen's error
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert onednn.compute_dtype(x, w, fp32=False) == bf16
            with torch.autocast("cpu", dtype=torch.float16):
                assert onednn.compute_dtype(x, w, fp32=True) is None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert onednn.compute_dtype(x, w, fp32=True) is None  # autograd on


def test_falls_back_to_aten_with_the_same_activation():
    torch.manual_seed(0)
    layer = nn.Linear(8, 6)
    x = torch.randn(4, 8)
    for activation, reference in [(None, lambda y: y), ("gelu", F.gelu), ("relu", F.relu)]:
        got = onednn.linear_module(x, layer, fp32=True, activation=activation)  # autograd on: ATen
        assert got.requires_grad
        torch.testing.assert_close(got, reference(layer(x)), atol=0, rtol=0)


def test_cast_weights_follow_in_place_updates(cpu_path):
    torch.manual_seed(0)
    layer = nn.Linear(8, 8)
    x = torch.randn(4, 8)
    inference, autocast = bf16_inference()
    with inference, autocast:
        assert onednn.active(x, layer.weight, fp32=False) == cpu_path.uses("onednn_bf16")
        before = onednn.linear_module(x, layer, fp32=False)
    with torch.no_grad():
        layer.weight.mul_(2.0)  # an optimizer step, load_state_dict, ... change the weight in place
    inference, autocast = bf16_inference()
    with inference, autocast:
        after = onednn.linear_module(x, layer, fp32=False)
    want = layer(x).detach()
    assert (after.float() - want).abs().max() < 0.05 * want.abs().max()
    assert not torch.equal(before, after)


# Packed (N, C) activations in "unpadded" mode, padded (B, T, C) ones in "sdpa" mode.
@pytest.mark.parametrize("attn, bf16, expected_calls", [
    ("unpadded", True, 2 * 4), ("sdpa", True, 2 * 4),  # per layer: Q|K|V, attention out, FFN in (GELU fused), out
    ("unpadded", False, 2 * 4), ("sdpa", False, 0),  # fp32 "sdpa" keeps ATen: identical to transformers
])
def test_bert_layers_take_the_path_in_cpu_inference(monkeypatch, cpu_path, attn, bf16, expected_calls):
    if not cpu_path.uses("onednn_bf16" if bf16 else "onednn_linear"):
        expected_calls = 0  # the fallback: every linear on ATen
    check_bert_layers(monkeypatch, attn, bf16, expected_calls)


@pytest.mark.parametrize("attn, bf16, expected_calls", [("unpadded", True, 0), ("unpadded", False, 2 * 4)])
def test_avx2_keeps_fp32_linears_on_onednn_and_bf16_ones_on_aten(monkeypatch, attn, bf16, expected_calls):
    require_cpu("onednn_linear")
    with cpu_caps.forced(capability="avx2"):
        check_bert_layers(monkeypatch, attn, bf16, expected_calls)


def check_bert_layers(monkeypatch, attn: str, bf16: bool, expected_calls: int):
    """The model's oneDNN linear calls number `expected_calls`, and its outputs are those of ATen's path."""
    from lmforge import BertConfig
    from lmforge.models.bert import BertModel

    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=16)
    torch.manual_seed(0)
    model = BertModel(config).eval()
    ids = torch.randint(5, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    with torch.no_grad():
        want = model.set_attn_implementation("sdpa")(ids, mask).last_hidden_state  # fp32 "sdpa": ATen
    model.set_attn_implementation(attn)
    calls = []
    real_linear = onednn.linear
    monkeypatch.setattr(onednn, "linear", lambda *a, **k: calls.append(k) or real_linear(*a, **k))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        got = model(ids, mask).last_hidden_state
    assert len(calls) == expected_calls
    real = mask.bool()
    tolerance = 0.1 if bf16 else 1e-5
    assert (got[real].float() - want[real]).abs().max() < tolerance


@pytest.mark.parametrize("bf16", [False, True])
def test_inference_sees_weights_updated_by_a_fused_optimizer_step(bf16):
    """Fused AdamW updates parameters in place without bumping version counters: nothing may cache them."""
    from lmforge import BertConfig
    from lmforge.models.bert import BertModel

    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=16)
    torch.manual_seed(0)
    model = BertModel(config)
    model.set_attn_implementation("unpadded")
    ids = torch.randint(5, 50, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])

    def infer(m):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return m.eval()(ids, mask).last_hidden_state.float()

    infer(model)  # the first inference
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    model.train()(ids, mask).last_hidden_state.sum().backward()
    optimizer.step()
    fresh = BertModel(config)
    fresh.set_attn_implementation("unpadded")
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(infer(model), infer(fresh), atol=1e-6, rtol=0)


def test_frozen_weights_prepares_once_per_block_and_forgets_at_exit():
    require_cpu("onednn_bf16")
    torch.manual_seed(0)
    layer = nn.Linear(8, 8)
    x = torch.randn(4, 8)
    built = []

    def params():
        built.append(1)
        return layer.weight, layer.bias

    with onednn.frozen_weights():
        first = onednn.prepared(layer, torch.bfloat16, params)
        assert onednn.prepared(layer, torch.bfloat16, params) is first
        assert first[0].is_mkldnn and first[0].dtype == torch.bfloat16  # cast and blocked
        onednn.prepared(layer, torch.float32, params)  # another dtype: its own entry
    assert len(built) == 2
    plain = onednn.prepared(layer, torch.bfloat16, params)  # outside a block: no cache, plain layout
    assert not plain[0].is_mkldnn
    with onednn.frozen_weights():
        onednn.prepared(layer, torch.bfloat16, params)  # a new block prepares again
    assert len(built) == 4
    for bf16 in (True, False):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            with onednn.frozen_weights():
                before = onednn.linear_module(x, layer, fp32=True)
            with torch.no_grad():
                layer.weight.mul_(2.0)
            with onednn.frozen_weights():
                after = onednn.linear_module(x, layer, fp32=True)
        assert not torch.equal(before, after)
        torch.testing.assert_close(after.float(), layer(x).float(), atol=0.05 if bf16 else 1e-5, rtol=0)


def test_frozen_weights_nested_and_given_stores_reuse_preparations():
    """A block inside another shares the outer one's preparations; a given store carries them from one block to
    the next (generate_stream: one block per step)."""
    require_cpu("onednn_bf16")
    layer = nn.Linear(8, 8)
    built = []

    def params():
        built.append(1)
        return layer.weight, layer.bias

    with onednn.frozen_weights():
        onednn.prepared(layer, torch.bfloat16, params)
        with onednn.frozen_weights():
            onednn.prepared(layer, torch.bfloat16, params)
    assert len(built) == 1
    store = {}
    for _ in range(3):
        with onednn.frozen_weights(store):
            onednn.prepared(layer, torch.bfloat16, params)
    assert len(built) == 2


@pytest.mark.parametrize("bf16", [False, True])
def test_blocked_weights_give_the_same_results(bf16):
    require_cpu("onednn_bf16" if bf16 else "onednn_linear")
    torch.manual_seed(0)
    layer = nn.Linear(384, 1536)
    x = torch.randn(100, 384)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        plain = onednn.linear_module(x, layer, fp32=True, activation="gelu")
        with onednn.frozen_weights():
            blocked = onednn.linear_module(x, layer, fp32=True, activation="gelu")
    torch.testing.assert_close(blocked, plain, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("attn", ["unpadded", "sdpa"])
def test_model_outputs_on_the_fallback_equal_the_native_path(attn):
    """A model run both ways: fp32 equal within 1e-5, bf16 autocast close (the two sum bf16 products
    in different orders and precisions)."""
    from lmforge import BertConfig
    from lmforge.models.bert import BertModel

    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=16)
    torch.manual_seed(0)
    model = BertModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # no zero biases
    model.set_attn_implementation(attn)
    ids = torch.randint(5, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    real = mask.bool()

    def run(bf16):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(ids, mask).last_hidden_state[real].float()

    native = {bf16: run(bf16) for bf16 in (False, True)}
    with cpu_caps.forced(capability="avx2", disable_onednn=True):
        fallback = {bf16: run(bf16) for bf16 in (False, True)}
    torch.testing.assert_close(fallback[False], native[False], atol=1e-5, rtol=1e-5)
    assert (fallback[True] - native[False]).abs().max() < 0.1


@pytest.mark.parametrize("activation", [None, "gelu", "relu"])
def test_linear_with_grad_matches_aten_forward_and_backward(activation):
    torch.manual_seed(0)
    layer = nn.Linear(24, 40)
    with torch.no_grad():
        layer.bias.normal_()  # away from init
    x = torch.randn(13, 24, requires_grad=True)
    upstream = torch.randn(13, 40)
    act = ACTIVATIONS[activation] if activation else (lambda y: y)
    want = act(layer(x))
    want_grads = torch.autograd.grad(want, (x, layer.weight, layer.bias), upstream)
    got = onednn.linear_with_grad(x, layer.weight, layer.bias, activation)
    got_grads = torch.autograd.grad(got, (x, layer.weight, layer.bias), upstream)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for name, a, b in zip(("x", "weight", "bias"), got_grads, want_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)


def test_eval_model_with_autograd_on_takes_onednn_with_aten_gradients(monkeypatch):
    """`model(**batch)` without no_grad on an eval-mode (default, unpadded) model: oneDNN forward, and the
    gradients of the padded ATen ("sdpa") model. In train mode everything stays ATen."""
    require_cpu("onednn_linear")
    from lmforge import BertConfig
    from lmforge.models.bert import BertModel

    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=16)
    torch.manual_seed(0)
    model = BertModel(config).eval()
    reference = BertModel(config).eval().set_attn_implementation("sdpa")
    reference.load_state_dict(model.state_dict())
    ids = torch.randint(5, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    real = mask.bool()
    calls = []
    real_linear = onednn.linear
    monkeypatch.setattr(onednn, "linear", lambda *a, **k: calls.append(1) or real_linear(*a, **k))
    results = []
    for m in (model, reference):
        out = m(ids, mask)
        (out.last_hidden_state[real].pow(2).sum() + out.pooler_output.sum()).backward()
        results.append(out.last_hidden_state[real].detach())
    assert len(calls) == 2 * 4  # per layer: Q|K|V, attention out, FFN in (GELU fused), FFN out
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=0)
    grads = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        # Embedding rows sum many tokens' gradients (size ~10 here): the tolerance scales with the size, as
        # oneDNN and ATen sum in other orders (AVX2 kernels: 1.1e-5 on 9.5).
        scale = max(1.0, grads[name].grad.abs().max().item())
        torch.testing.assert_close(p.grad, grads[name].grad, atol=1e-5 * scale, rtol=1e-4, msg=name)
    calls.clear()
    model.train()(ids, mask)  # dropout 0.1 here: only the path matters
    assert calls == []
