"""The bf16 CPU inference path: oneDNN linear (+ fused GELU/ReLU), weights cast once and re-cast on change."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.modeling import cpu_bf16

pytestmark = pytest.mark.skipif(not cpu_bf16._AVAILABLE, reason="torch built without oneDNN linear_pointwise")


def bf16_inference():
    return torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("activation, reference", [(None, lambda y: y), ("gelu", F.gelu), ("relu", F.relu)])
def test_fused_linear_close_to_fp32(activation, reference):
    torch.manual_seed(0)
    layer = nn.Linear(64, 96)
    x = torch.randn(37, 64)
    want = reference(layer(x)).detach()
    inference, autocast = bf16_inference()
    with inference, autocast:
        assert cpu_bf16.active(x)
        got = cpu_bf16.linear_module(x, layer, activation)
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() < 0.05 * want.abs().max()


def test_inactive_with_autograd_or_without_bf16_autocast():
    x = torch.randn(3, 4)
    assert not cpu_bf16.active(x)  # autograd on, no autocast
    with torch.no_grad():
        assert not cpu_bf16.active(x)  # no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not cpu_bf16.active(x)  # autograd on


def test_cast_weights_follow_in_place_updates():
    torch.manual_seed(0)
    layer = nn.Linear(8, 8)
    x = torch.randn(4, 8)
    inference, autocast = bf16_inference()
    with inference, autocast:
        before = cpu_bf16.linear_module(x, layer)
    with torch.no_grad():
        layer.weight.mul_(2.0)  # an optimizer step, load_state_dict, ... change the weight in place
    inference, autocast = bf16_inference()
    with inference, autocast:
        after = cpu_bf16.linear_module(x, layer)
    want = layer(x).detach()
    assert (after.float() - want).abs().max() < 0.05 * want.abs().max()
    assert not torch.equal(before, after)


@pytest.mark.parametrize("attn", ["unpadded", "sdpa"])  # packed (N, C) and padded (B, T, C) activations
def test_bert_layers_take_the_path_under_bf16_inference(monkeypatch, attn):
    from lmforge import BertConfig
    from lmforge.modeling.bert import BertModel

    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=16)
    torch.manual_seed(0)
    model = BertModel(config).eval()
    model.set_attn_implementation(attn)
    ids = torch.randint(5, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    want = model(ids, mask).last_hidden_state.detach()
    calls = []
    real_linear = cpu_bf16.linear
    monkeypatch.setattr(cpu_bf16, "linear", lambda *a, **k: calls.append(k) or real_linear(*a, **k))
    inference, autocast = bf16_inference()
    with inference, autocast:
        got = model(ids, mask).last_hidden_state
    assert len(calls) == 2 * 4  # per layer: Q|K|V, attention output, feed-forward in (GELU fused), out
    real = mask.bool()
    assert (got[real].float() - want[real]).abs().max() < 0.1


@pytest.mark.parametrize("bf16", [False, True])
def test_inference_sees_weights_updated_by_a_fused_optimizer_step(bf16):
    """Fused AdamW updates parameters in place without bumping version counters: nothing may cache them."""
    from lmforge import BertConfig
    from lmforge.modeling.bert import BertModel

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


def test_frozen_weights_casts_once_per_block_and_forgets_at_exit():
    torch.manual_seed(0)
    layer = nn.Linear(8, 8)
    x = torch.randn(4, 8)
    built = []

    def build():
        built.append(1)
        return (layer.weight.to(torch.bfloat16),)

    with cpu_bf16.frozen_weights():
        first = cpu_bf16.cast_once(layer, build)
        assert cpu_bf16.cast_once(layer, build) is first
    assert len(built) == 1
    cpu_bf16.cast_once(layer, build)  # outside a block: no cache
    with cpu_bf16.frozen_weights():
        cpu_bf16.cast_once(layer, build)  # a new block casts again
    assert len(built) == 3
    inference, autocast = bf16_inference()
    with inference, autocast, cpu_bf16.frozen_weights():
        before = cpu_bf16.linear_module(x, layer)
    with torch.no_grad():
        layer.weight.mul_(2.0)
    inference, autocast = bf16_inference()
    with inference, autocast, cpu_bf16.frozen_weights():
        after = cpu_bf16.linear_module(x, layer)
    assert not torch.equal(before, after)
