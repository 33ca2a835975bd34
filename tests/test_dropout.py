"""The cheap CPU dropout: drop rate, scale, gradient, determinism, and the eval/no-op cases."""

import pytest
import torch

from lmforge.cpu.dropout import Dropout, dropout


def test_drop_rate_and_expectation():
    torch.manual_seed(0)
    x = torch.ones(400, 1000)
    y = dropout(x, 0.1, training=True)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.003  # 400k draws: std of the rate ~0.0005
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - 6554 / 65536)))  # p drawn = 6554/2^16
    assert abs(y.mean().item() - 1.0) < 0.005


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9])
def test_other_probabilities(p):
    torch.manual_seed(1)
    y = dropout(torch.ones(200_000), p, training=True)
    assert abs((y == 0).float().mean().item() - p) < 0.005


def test_gradient_is_mask_times_scale():
    torch.manual_seed(0)
    x = torch.randn(64, 33, requires_grad=True)  # numel not a multiple of 4
    y = dropout(x, 0.3, training=True)
    upstream = torch.randn_like(y)
    y.backward(upstream)
    keep = y.detach() != 0
    scale = (y.detach()[keep] / x.detach()[keep]).mean()
    torch.testing.assert_close(x.grad, upstream * keep * scale)


def test_seeded_runs_repeat_and_seeds_differ():
    x = torch.ones(1000)
    torch.manual_seed(5)
    a = dropout(x, 0.2, training=True)
    torch.manual_seed(5)
    b = dropout(x, 0.2, training=True)
    c = dropout(x, 0.2, training=True)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_identity_in_eval_and_at_zero_and_all_zero_at_one():
    x = torch.randn(10, 10)
    module = Dropout(0.5).eval()
    assert torch.equal(module(x), x)
    assert torch.equal(dropout(x, 0.0, training=True), x)
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros_like(x))


def test_invalid_probability_is_refused():
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.5)
