"""Marian parity with transformers: shared and separate vocabularies, scaled embeddings, a non-zero
final_logits_bias, sinusoidal positions (computed, never loaded or saved), the cache, checkpoints both ways."""

from __future__ import annotations

import pytest
import torch
from decoder_helpers import close
from safetensors.torch import load_file, save_file
from seq2seq_helpers import check_generation, check_incremental_decoding, outputs, perturbed, source_batch, target_batch

import lmforge
from lmforge.models.bart import shift_tokens_right
from lmforge.models.marian import MarianConfig
from lmforge.models.marian.model import sinusoids

transformers = pytest.importorskip("transformers")

PAD, EOS = 98, 0
VOCABS = {"shared": dict(), "separate": dict(share_encoder_decoder_embeddings=False, decoder_vocab_size=77)}


def hf_config(vocab: str = "shared", **extra) -> transformers.MarianConfig:
    fields = dict(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=37,
                  decoder_ffn_dim=41, encoder_attention_heads=4, decoder_attention_heads=2,
                  max_position_embeddings=40, pad_token_id=PAD if vocab == "shared" else 70, eos_token_id=EOS,
                  decoder_start_token_id=PAD if vocab == "shared" else 70, scale_embedding=True, dropout=0.0,
                  attn_implementation="eager")
    return transformers.MarianConfig(**{**fields, **VOCABS[vocab], **extra})


def hf_model(head: str, config=None, seed: int = 0):
    torch.manual_seed(seed)
    return perturbed(getattr(transformers, head)(config or hf_config()), seed)


def batch_for(config, head: str):
    src, src_mask = source_batch(config.vocab_size, config.pad_token_id, EOS)
    labels, dec_mask = target_batch(config.decoder_vocab_size, config.pad_token_id)
    batch = dict(input_ids=src, attention_mask=src_mask, decoder_attention_mask=dec_mask,
                 output_hidden_states=True, output_attentions=True)
    if head == "MarianMTModel":
        batch["labels"] = labels
    else:
        batch["decoder_input_ids"] = shift_tokens_right(labels, config.pad_token_id, config.decoder_start_token_id)
    return batch


@pytest.mark.parametrize("vocab", sorted(VOCABS))
@pytest.mark.parametrize("head", ["MarianModel", "MarianMTModel"])
def test_padded_outputs_and_loss_match(tmp_path, head, vocab):
    hf = hf_model(head, hf_config(vocab))
    hf.save_pretrained(tmp_path)
    ours = getattr(lmforge, head).from_pretrained(tmp_path)
    batch = batch_for(hf.config, head)
    a, b = outputs(hf, **batch), outputs(ours, **batch)
    main = "last_hidden_state" if head == "MarianModel" else "logits"
    close(getattr(b, main), getattr(a, main), msg=main)
    for name in ("encoder_hidden_states", "encoder_attentions", "decoder_hidden_states", "decoder_attentions",
                 "cross_attentions"):
        for i, (x, y) in enumerate(zip(getattr(b, name), getattr(a, name), strict=True)):
            close(x, y, msg=f"{name}[{i}]")
    if head == "MarianMTModel":
        close(b.loss, a.loss, msg="loss")
        assert ours.final_logits_bias.abs().sum() > 0


def test_sinusoids_equal_transformers_sin_first_half_cos_second():
    hf = transformers.MarianMTModel(hf_config())
    expected = hf.model.encoder.embed_positions.create_weight()
    ours = sinusoids(40, 32)
    torch.testing.assert_close(ours, expected, atol=0, rtol=0)
    torch.testing.assert_close(ours[5, :16], torch.sin(5 / 10000 ** (torch.arange(0, 32, 2) / 32)))
    torch.testing.assert_close(ours[5, 16:], torch.cos(5 / 10000 ** (torch.arange(0, 32, 2) / 32)))


def test_positions_are_never_saved_reinitialised_or_overwritten(tmp_path):
    hf = hf_model("MarianMTModel")
    hf.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["model.encoder.embed_positions.weight"] = torch.randn(40, 32)  # an old conversion's copy, wrong
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ours, info = lmforge.MarianMTModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info.missing_keys == [] and info.unexpected_keys == []
    torch.testing.assert_close(ours.model.encoder.embed_positions.weight, sinusoids(40, 32), atol=0, rtol=0)
    torch.testing.assert_close(ours.model.decoder.embed_positions.weight, sinusoids(40, 32), atol=0, rtol=0)
    ours.save_pretrained(tmp_path / "ours")
    assert not any("embed_positions" in k for k in load_file(tmp_path / "ours" / "model.safetensors"))


@pytest.mark.parametrize("vocab", sorted(VOCABS))
def test_incremental_decoding_with_the_cache_equals_the_full_forward(tmp_path, vocab):
    hf = hf_model("MarianMTModel", hf_config(vocab))
    hf.save_pretrained(tmp_path)
    ours = lmforge.MarianMTModel.from_pretrained(tmp_path)
    config = hf.config
    src, src_mask = source_batch(config.vocab_size, config.pad_token_id, EOS)
    labels, _ = target_batch(config.decoder_vocab_size, config.pad_token_id)
    decoder_ids = shift_tokens_right(labels, config.pad_token_id, config.decoder_start_token_id)
    full = outputs(hf, input_ids=src, attention_mask=src_mask, decoder_input_ids=decoder_ids).logits
    check_incremental_decoding(ours, full, src, src_mask, decoder_ids)


@pytest.mark.parametrize("vocab", sorted(VOCABS))
@pytest.mark.parametrize("safe", [True, False])
def test_lmforge_checkpoints_load_in_transformers(tmp_path, vocab, safe):
    hf = hf_model("MarianMTModel", hf_config(vocab))
    hf.save_pretrained(tmp_path / "hf")
    ours = lmforge.MarianMTModel.from_pretrained(tmp_path / "hf")
    ours.save_pretrained(tmp_path / "ours", safe_serialization=safe)
    again = transformers.MarianMTModel.from_pretrained(tmp_path / "ours").eval()
    torch.testing.assert_close(again.final_logits_bias, hf.final_logits_bias, atol=0, rtol=0)
    batch = batch_for(hf.config, "MarianMTModel")
    close(outputs(again, **batch).logits, outputs(hf, **batch).logits)


def test_separate_vocabularies_tie_the_head_to_the_target_table(tmp_path):
    hf_model("MarianMTModel", hf_config("separate")).save_pretrained(tmp_path)
    ours = lmforge.AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert type(ours).__name__ == "MarianMTModel" and not hasattr(ours.model, "shared")
    assert ours.lm_head.weight is ours.model.decoder.embed_tokens.weight
    assert ours.model.encoder.embed_tokens.weight.shape == (99, 32)
    assert ours.lm_head.weight.shape == (77, 32) and ours.final_logits_bias.shape == (1, 77)


def test_shared_vocabulary_with_another_decoder_size_is_refused():
    with pytest.raises(lmforge.ConfigError, match="decoder_vocab_size"):
        MarianConfig(vocab_size=99, decoder_vocab_size=77, pad_token_id=5, decoder_start_token_id=5)


@pytest.mark.parametrize("vocab", sorted(VOCABS))
@pytest.mark.parametrize("num_beams", [1, 4])
def test_generate_is_token_identical_to_transformers(tmp_path, vocab, num_beams):
    hf = hf_model("MarianMTModel", hf_config(vocab))  # forced_eos_token_id: Marian's default (EOS)
    hf.save_pretrained(tmp_path)
    ours = lmforge.MarianMTModel.from_pretrained(tmp_path)
    src, src_mask = source_batch(hf.config.vocab_size, hf.config.pad_token_id, EOS)
    # These random Marian models either never emit EOS or emit it first whatever the boost: rows stopping at
    # different steps are covered by BART's test (the same generation code).
    got = check_generation(hf, ours, src, src_mask, EOS, eos_boost=0.0, max_new_tokens=12, num_beams=num_beams)
    assert (got[:, 0] == hf.config.decoder_start_token_id).all() and (got[:, -1] == EOS).all()  # forced at the limit
