"""linear_cross_entropy: the fused, chunked MLM projection + loss equals F.cross_entropy(F.linear(...))."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.cpu import losses, onednn
from lmforge.cpu.losses import linear_cross_entropy


def inputs(N=37, C=16, V=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, C, generator=g, requires_grad=True)
    weight = (torch.randn(V, C, generator=g) * 0.3).requires_grad_()
    bias = (torch.randn(V, generator=g) * 0.1).requires_grad_()
    targets = torch.randint(0, V, (N,), generator=g)
    return hidden, weight, bias, targets


def loss_and_grads(fn, hidden, weight, bias, targets, scale=1.0):
    loss = fn(hidden, weight, bias, targets)
    (loss * scale).backward()
    grads = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    return loss.detach(), grads


def reference(hidden, weight, bias, targets):
    return F.cross_entropy(F.linear(hidden, weight, bias), targets)


def count_onednn_calls(monkeypatch) -> list:
    calls = []
    real_linear = onednn.linear
    monkeypatch.setattr(onednn, "linear", lambda *a, **k: calls.append(1) or real_linear(*a, **k))
    return calls


@pytest.mark.parametrize("chunk_rows", [1, 8, 10_000])  # many chunks (last one short), one chunk
@pytest.mark.parametrize("scale", [1.0, 0.25])  # 0.25: a gradient-accumulation step
def test_loss_and_gradients_equal_cross_entropy(monkeypatch, cpu_path, chunk_rows, scale):
    monkeypatch.setattr(losses, "CHUNK_BYTES", chunk_rows * 4 * 50)
    args = inputs()
    ref_loss, ref_grads = loss_and_grads(reference, *args, scale=scale)
    calls = count_onednn_calls(monkeypatch)
    loss, grads = loss_and_grads(linear_cross_entropy, *args, scale=scale)
    assert len(calls) == cpu_path.uses("onednn_linear")  # the logits through oneDNN, or ATen's addmm
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=0)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_without_bias_and_frozen_weight():
    hidden, weight, _, targets = inputs()
    weight.requires_grad_(False)
    loss = linear_cross_entropy(hidden, weight, None, targets)
    loss.backward()
    ref_hidden = hidden.detach().clone().requires_grad_()
    F.cross_entropy(F.linear(ref_hidden, weight), targets).backward()
    torch.testing.assert_close(hidden.grad, ref_hidden.grad, atol=1e-6, rtol=1e-5)
    assert weight.grad is None


def test_bf16_autocast_close_to_fp32(monkeypatch, cpu_path):
    args = inputs(N=64, C=32, V=100)
    ref_loss, ref_grads = loss_and_grads(reference, *args)
    calls = count_onednn_calls(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads = loss_and_grads(linear_cross_entropy, *args)
    assert len(calls) == cpu_path.uses("onednn_bf16")  # AVX2: no oneDNN bf16, ATen's matmul instead
    assert loss.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads)
    assert abs(loss - ref_loss) < 0.05
    for got, want in zip(grads, ref_grads):
        assert (got - want).abs().max() < 0.02 * want.abs().max()


def test_no_rows_gives_nan_like_cross_entropy():
    hidden, weight, bias, targets = inputs(N=0)
    assert torch.isnan(linear_cross_entropy(hidden, weight, bias, targets))
    assert torch.isnan(reference(hidden, weight, bias, targets))
