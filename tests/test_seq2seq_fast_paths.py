"""The encoder-decoder fast paths equal the readable computation: the label-smoothed fused loss, the packed
training forward of `Seq2SeqLMTraining` (BART, Marian; readable blocks and fast blocks, oneDNN and ATen), the
readable branch (T5), and beam search's skipped source-side reorders."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from decoder_helpers import perturb_

import lmforge
from lmforge.cpu import fast_paths
from lmforge.cpu.losses import linear_cross_entropy
from lmforge.generation.steps import Seq2SeqSteps
from lmforge.models.marian import MarianConfig
from lmforge.models.t5 import T5Config
from lmforge.training.seq2seq_lm import Seq2SeqLMTraining

PAD, EOS = 1, 0
SMALL = dict(vocab_size=97, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
             decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=40, max_position_embeddings=40,
             pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD, dropout=0.0)


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "marian":
        model = lmforge.MarianMTModel(MarianConfig(**SMALL, scale_embedding=True))
    elif name == "bart":
        model = lmforge.BartForConditionalGeneration(lmforge.BartConfig(**SMALL))
    else:
        model = lmforge.T5ForConditionalGeneration(T5Config(
            vocab_size=97, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, feed_forward_proj="relu",
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, dropout_rate=0.0))
    perturb_(model)
    if hasattr(model, "final_logits_bias"):
        with torch.no_grad():
            model.final_logits_bias.normal_()
    return model


def batch(decoder_mask: bool = True) -> dict[str, torch.Tensor]:
    """Sources right-padded (9, 6, 3 tokens), labels -100 at padding (7, 2, 5), one row with a -100 inside."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 97, (3, 9), generator=g)
    mask = torch.zeros_like(ids)
    labels = torch.randint(2, 97, (3, 7), generator=g)
    target_mask = torch.zeros_like(labels)
    for b, (n, m) in enumerate([(9, 7), (6, 2), (3, 5)]):
        mask[b, :n] = 1
        target_mask[b, :m] = 1
    labels = labels.masked_fill(target_mask == 0, -100)
    labels[2, 1] = -100  # a position without loss between two with: still a key of the later ones
    out = dict(input_ids=ids.masked_fill(mask == 0, PAD), attention_mask=mask, labels=labels)
    if decoder_mask:
        out["decoder_attention_mask"] = target_mask
    return out


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_linear_cross_entropy_label_smoothing_equals_torch(smoothing):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(11, 8, generator=g, requires_grad=True)
    w = torch.randn(29, 8, generator=g, requires_grad=True)
    b = torch.randn(29, generator=g, requires_grad=True)
    y = torch.randint(0, 29, (11,), generator=g)
    got = linear_cross_entropy(h, w, b, y, smoothing)
    got.backward()
    fused = (h.grad, w.grad, b.grad)
    h.grad = w.grad = b.grad = None
    want = F.cross_entropy(F.linear(h, w, b), y, label_smoothing=smoothing)
    want.backward()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)
    for a, e in zip(fused, (h.grad, w.grad, b.grad)):
        torch.testing.assert_close(a, e, atol=1e-6, rtol=1e-5)


def test_linear_cross_entropy_rejects_bad_smoothing():
    with pytest.raises(ValueError, match="label_smoothing"):
        linear_cross_entropy(torch.zeros(1, 2), torch.zeros(3, 2), None, torch.zeros(1, dtype=torch.long), 1.0)


@pytest.mark.parametrize("blocks", ["fast", "readable"])
@pytest.mark.parametrize("decoder_mask", [True, False])
@pytest.mark.parametrize("name", ["marian", "bart"])
def test_packed_training_equals_readable_loss_and_gradients(cpu_path, name, decoder_mask, blocks):
    """The packed forward (real tokens only) gives the readable model's loss and gradients."""
    readable = fast_paths.restore(build(name).train())
    packed = Seq2SeqLMTraining(copy.deepcopy(readable) if blocks == "readable" else fast_paths.apply(
        copy.deepcopy(readable)))
    inputs = batch(decoder_mask)
    want = readable(**inputs).loss
    want.backward()
    got = packed(**inputs).loss
    got.backward()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    expected, actual = grads(readable), grads(packed.lm)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=2e-5, rtol=1e-4, msg=key)


def test_packed_training_with_label_smoothing_equals_smoothed_cross_entropy():
    model = build("marian").train()
    inputs = batch()
    logits = model(**inputs).logits
    want = F.cross_entropy(logits.reshape(-1, logits.size(-1)), inputs["labels"].reshape(-1), ignore_index=-100,
                           label_smoothing=0.1)
    got = Seq2SeqLMTraining(model, label_smoothing=0.1)(**inputs).loss
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_readable_branch_t5_equals_model_loss():
    """T5 (relative position bias) takes the readable forward: the loss equals `model(labels=...)`'s."""
    model = build("t5").train()
    inputs = batch()
    inputs["input_ids"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, 0)
    want = model(**inputs).loss
    got = Seq2SeqLMTraining(model)(**inputs).loss
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_beam_reorders_keep_one_source_side_row_per_source():
    """The expansion to beams and reorders that keep each beam on its source leave the source side (encoder output,
    cross-attention keys/values) at one row per source, read by all its beams; logits equal per-row copies'. A
    reorder that moves a row to another source gives every row its own copy."""
    model = build("marian").eval()
    inputs = batch()
    steps = Seq2SeqSteps(model, inputs["input_ids"], inputs["attention_mask"])
    reference = Seq2SeqSteps(model, inputs["input_ids"].repeat_interleave(2, 0),
                             inputs["attention_mask"].repeat_interleave(2, 0))  # every row its own source
    with torch.no_grad():
        steps.start(torch.full((3, 1), PAD))
        reference.start(torch.full((6, 1), PAD))
        states, cross = steps.encoder_states, steps.cache.cross[0]
        steps.reorder(torch.arange(3).repeat_interleave(2))  # 3 sources x 2 beams
        tokens = torch.tensor([5, 6, 7, 8, 9, 10])
        torch.testing.assert_close(steps.step(tokens), reference.step(tokens), atol=1e-5, rtol=0)
        steps.reorder(torch.tensor([1, 1, 2, 2, 5, 4]))  # beams stay on their sources
        reference.reorder(torch.tensor([1, 1, 2, 2, 5, 4]))
        assert steps.encoder_states is states and steps.cache.cross[0] is cross and cross[0].size(0) == 3
        assert steps.cache.get_seq_length() == 2
        torch.testing.assert_close(steps.step(tokens), reference.step(tokens), atol=1e-5, rtol=0)
        steps.reorder(torch.tensor([0, 1, 2, 3, 5, 0]))  # the last row continues source 0's first beam
        reference.reorder(torch.tensor([0, 1, 2, 3, 5, 0]))
        assert steps.source_rows.tolist() == [0, 0, 1, 1, 2, 0]
        assert torch.equal(steps.encoder_states[5], states[0]) and torch.equal(steps.cache.cross[0][0][5], cross[0][0])
        torch.testing.assert_close(steps.step(tokens), reference.step(tokens), atol=1e-5, rtol=0)
