"""T5 generation equals transformers' token for token (v1.0 and v1.1, perturbed weights): greedy and beam search
over a batch of prompts padded on the right (the encoder reads padding on either side).

transformers' generate sizes its cache by the encoder's layer count, so these models have as many decoder
layers as encoder layers (its generate fails otherwise; lmforge's does not)."""

from __future__ import annotations

import pytest
import torch
from decoder_helpers import padded_batch
from test_t5_parity import CONFIGS, hf_model, ours_from

transformers = pytest.importorskip("transformers")
SAME_DEPTH = dict(num_decoder_layers=2)


@pytest.mark.parametrize("version", CONFIGS)
@pytest.mark.parametrize("settings", [dict(num_beams=1), dict(num_beams=3, num_return_sequences=2),
                                      dict(num_beams=4, length_penalty=0.5, no_repeat_ngram_size=2)],
                         ids=["greedy", "beam3-return2", "beam4-ngram"])
def test_generate_matches_transformers(version, settings):
    hf = hf_model(version, **SAME_DEPTH)
    ours = ours_from(hf, version, **SAME_DEPTH)
    ids, mask = padded_batch(99, "right", T=9)
    with torch.no_grad():
        expected = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, **settings)
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=10, **settings)
    assert got[:, 0].eq(0).all()  # the decoder start token
    assert torch.equal(got, expected)


def test_generation_stops_at_eos_and_pads():
    """Rows end (EOS, id 1) at different steps and are filled with the pad id after it, as in transformers."""
    hf = hf_model("v1.1", **SAME_DEPTH)
    with torch.no_grad():
        hf.lm_head.weight[1] *= 1.5  # EOS a little likelier: three rows stop, at steps 4, 5 and 10
    ours = ours_from(hf, "v1.1", **SAME_DEPTH)
    ids, mask = padded_batch(99, "right", T=9)
    with torch.no_grad():
        expected = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=12)
    assert torch.equal(got, expected)
    assert (got == 1).any(1).tolist() == [True, False, True, True]


def test_sampling_matches_transformers_draws():
    """Same seed, same draws: top-k / top-p sampling picks the tokens transformers picks."""
    hf = hf_model("v1.1", **SAME_DEPTH)
    ours = ours_from(hf, "v1.1", **SAME_DEPTH)
    ids, mask = padded_batch(99, "right", T=9)
    settings = dict(max_new_tokens=8, do_sample=True, top_k=20, top_p=0.9, temperature=0.8)
    torch.manual_seed(7)
    with torch.no_grad():
        expected = hf.generate(input_ids=ids, attention_mask=mask, **settings)
    torch.manual_seed(7)
    got = ours.generate(ids, attention_mask=mask, **settings)
    assert torch.equal(got, expected)
