"""Self-attention: the fused SDPA path equals softmax(QK^T/sqrt(d))V written out."""

from __future__ import annotations

import torch

from lmforge.cpu.attention import varlen_attention
from lmforge.nn.attention import EncoderSelfAttention, attention_reference, padding_mask, to_additive
from lmforge.nn.packing import Packing, Padded


def test_sdpa_matches_reference_with_padding_mask():
    torch.manual_seed(0)
    layer = EncoderSelfAttention(hidden_size=24, num_heads=3, dropout=0.0).eval()
    x = torch.randn(3, 7, 24)
    attention_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] + [0] * 6])
    mask = padding_mask(attention_mask, x.dtype)
    fused, _ = layer(x, Padded(mask), output_attentions=False)
    reference, probs = layer(x, Padded(mask), output_attentions=True)
    torch.testing.assert_close(fused, reference, atol=1e-6, rtol=0)
    # padded keys get no weight; rows sum to one
    assert probs[1, :, :, 4:].abs().max() == 0
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 3, 7))


def test_reference_is_the_formula():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
    context, probs = attention_reference(q, k, v)
    expected = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1) @ v  # sqrt(D=4) = 2
    torch.testing.assert_close(context, expected)


def test_causal_mask_hides_future_positions():
    mask = to_additive(torch.ones(4, 4, dtype=torch.bool).tril(), torch.float32)  # the causal rule
    assert (mask.triu(1) < -1e30).sum() == 6 and (mask.tril() == 0).all()


def test_varlen_attention_on_packed_tokens_equals_padded_attention():
    torch.manual_seed(0)
    H, D = 3, 8
    attention_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [0] * 7, [1] + [0] * 6])  # an empty row too
    packing = Packing(attention_mask, torch.float32)
    assert packing.lengths == [7, 4, 1]
    qkv = torch.randn(3, 7, 3 * H * D)  # (B, T, 3C)
    q, k, v = qkv.view(3, 7, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, D)
    mask = padding_mask(attention_mask[[0, 1, 3]], torch.float32)
    padded, _ = attention_reference(q, k, v, mask)  # (B, H, T, D)
    padded = padded.transpose(1, 2).reshape(3, 7, H * D)  # (B, T, C)
    real = attention_mask[[0, 1, 3]].bool()
    packed = varlen_attention(qkv[real], packing.lengths, num_heads=H)  # (N, C)
    torch.testing.assert_close(packed, padded[real], atol=1e-6, rtol=0)


def test_varlen_attention_dropout_drops_probabilities_in_training_only():
    torch.manual_seed(0)
    qkv = torch.randn(10, 3 * 16)
    plain = varlen_attention(qkv, [6, 4], num_heads=2)
    assert torch.equal(varlen_attention(qkv, [6, 4], num_heads=2, dropout_p=0.5, training=False), plain)
    assert not torch.allclose(varlen_attention(qkv, [6, 4], num_heads=2, dropout_p=0.5, training=True), plain)


def test_varlen_attention_keeps_the_input_dtype_and_is_close_in_bf16():
    torch.manual_seed(0)
    qkv = torch.randn(10, 3 * 16)
    ref = varlen_attention(qkv, [6, 4], num_heads=2)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            low = varlen_attention(qkv.bfloat16(), [6, 4], num_heads=2)
        assert low.dtype == torch.bfloat16
        assert (low.float() - ref).abs().max() < 0.05
