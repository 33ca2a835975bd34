"""Shared pieces of the encoder-decoder (BART, Marian) parity tests: perturbed transformers models, padded
source/target batches, and the incremental-decoding check."""

from __future__ import annotations

import torch
from decoder_helpers import close, perturb_

import lmforge


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter moved off its init, and final_logits_bias (a buffer, zero at init) made non-zero.
    Marian's sinusoidal positions (a frozen parameter in transformers) stay sinusoids, as in every checkpoint."""
    perturb_(model, seed)
    for module in model.modules():
        if hasattr(module, "create_weight"):
            with torch.no_grad():
                module.weight.copy_(module.create_weight())
    if hasattr(model, "final_logits_bias"):
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            model.final_logits_bias.copy_(torch.randn(model.final_logits_bias.shape, generator=g))
    return model.eval()


def source_batch(vocab_size: int, pad_id: int, eos_id: int, B: int = 3, S: int = 9, seed: int = 0):
    """Right-padded source ids (rows of lengths S, S-3, 4), each real row ending in EOS, and its mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab_size, (B, S), generator=g)
    ids[ids == pad_id] = 5
    ids[ids == eos_id] = 5
    mask = torch.zeros(B, S, dtype=torch.long)
    for b, n in enumerate([S, S - 3, 4][:B]):
        mask[b, :n] = 1
        ids[b, n - 1] = eos_id
    return ids.masked_fill(mask == 0, pad_id), mask


def target_batch(vocab_size: int, pad_id: int, B: int = 3, T: int = 7, seed: int = 1):
    """Labels (-100 after each row's length: T, 3, T-2) and the decoder mask of their right shift."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(4, vocab_size, (B, T), generator=g)
    labels[labels == pad_id] = 5
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate([T, 3, T - 2][:B]):
        mask[b, :n] = 1
        labels[b, n:] = -100
    return labels, mask


def outputs(model, **inputs):
    with torch.no_grad():
        return model(**inputs)


def check_incremental_decoding(ours, reference_logits, src, src_mask, decoder_ids):
    """Encoding once, then one decoder token per step with the cache: every step's logits equal the full
    forward's at that position (1e-5), and the cross-attention keys/values are projected once per layer."""
    calls = []
    for layer in ours.model.decoder.layers:
        original = layer.encoder_attn.project_kv
        layer.encoder_attn.project_kv = lambda states, original=original: calls.append(1) or original(states)
    cache = lmforge.KVCache(ours.config.decoder_layers)
    with torch.no_grad():
        encoder_out = ours.get_encoder()(src, src_mask)
        for t in range(decoder_ids.size(1)):
            out = ours(attention_mask=src_mask, decoder_input_ids=decoder_ids[:, t:t + 1], encoder_outputs=encoder_out,
                       past_key_values=cache, use_cache=True)
            close(out.logits[:, 0], reference_logits[:, t], msg=f"step {t}")
    assert cache.get_seq_length() == decoder_ids.size(1)
    assert len(calls) == ours.config.decoder_layers  # once per layer, at the first step


def check_generation(hf, ours, src, src_mask, eos_id: int, eos_boost: float = 3.0, **settings):
    """Greedy / beam generation of a padded batch: token-identical to transformers'. EOS is made likelier
    (its final_logits_bias raised by `eos_boost` in both models) so rows stop at different steps and get filled."""
    with torch.no_grad():
        for model in (hf, ours):
            model.final_logits_bias[0, eos_id] += eos_boost
        expected = hf.generate(input_ids=src, attention_mask=src_mask, do_sample=False, **settings)
        got = ours.generate(src, src_mask, **settings)
    assert torch.equal(got, expected), f"\n{got}\n{expected}"
    return got
