"""BART parity with transformers: same weights -> same outputs (fp32, 1e-5) with padded sources and targets,
losses equal, the cache equal to the full forward at every step, checkpoints both ways."""

from __future__ import annotations

import pytest
import torch
from decoder_helpers import close
from seq2seq_helpers import check_generation, check_incremental_decoding, outputs, perturbed, source_batch, target_batch

import lmforge
from lmforge.models.bart import BartConfig, shift_tokens_right

transformers = pytest.importorskip("transformers")

HEADS = ["BartModel", "BartForConditionalGeneration", "BartForSequenceClassification"]
PAD, EOS, START = 1, 2, 2


def hf_config(**extra) -> transformers.BartConfig:
    # ffn 37 and 6 layers-worth of shapes that differ keep a transposed weight from loading by accident.
    fields = dict(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=37,
                  decoder_ffn_dim=41, encoder_attention_heads=4, decoder_attention_heads=2,
                  max_position_embeddings=40, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=0,
                  decoder_start_token_id=START, num_labels=3, dropout=0.0, attn_implementation="eager")
    return transformers.BartConfig(**{**fields, **extra})


def hf_model(head: str, config=None, seed: int = 0):
    torch.manual_seed(seed)
    return perturbed(getattr(transformers, head)(config or hf_config()), seed)


def inputs(head: str):
    src, src_mask = source_batch(99, PAD, EOS)
    labels, dec_mask = target_batch(99, PAD)
    batch = dict(input_ids=src, attention_mask=src_mask, output_hidden_states=True, output_attentions=True)
    if head == "BartForConditionalGeneration":
        batch.update(labels=labels, decoder_attention_mask=dec_mask)
    elif head == "BartForSequenceClassification":
        batch.update(labels=torch.tensor([0, 2, 1]))
    else:
        batch.update(decoder_input_ids=shift_tokens_right(labels, PAD, START), decoder_attention_mask=dec_mask)
    return batch


@pytest.mark.parametrize("scale_embedding", [False, True])
@pytest.mark.parametrize("head", HEADS)
def test_padded_outputs_and_loss_match(tmp_path, head, scale_embedding):
    hf = hf_model(head, hf_config(scale_embedding=scale_embedding))
    hf.save_pretrained(tmp_path)
    ours = getattr(lmforge, head).from_pretrained(tmp_path)
    batch = inputs(head)
    a, b = outputs(hf, **batch), outputs(ours, **batch)
    main = "last_hidden_state" if head == "BartModel" else "logits"
    close(getattr(b, main), getattr(a, main), msg=main)  # every position, padding included
    close(b.encoder_last_hidden_state, a.encoder_last_hidden_state, msg="encoder_last_hidden_state")
    for name in ("encoder_hidden_states", "encoder_attentions", "decoder_hidden_states", "decoder_attentions",
                 "cross_attentions"):
        for i, (x, y) in enumerate(zip(getattr(b, name), getattr(a, name), strict=True)):
            close(x, y, msg=f"{name}[{i}]")
    if head != "BartModel":
        close(b.loss, a.loss, msg="loss")


def test_final_logits_bias_is_loaded_and_added(tmp_path):
    hf = hf_model("BartForConditionalGeneration")
    hf.save_pretrained(tmp_path)
    ours = lmforge.BartForConditionalGeneration.from_pretrained(tmp_path)
    torch.testing.assert_close(ours.final_logits_bias, hf.final_logits_bias, atol=0, rtol=0)
    assert ours.final_logits_bias.abs().sum() > 0
    assert ours.lm_head.weight is ours.model.shared.weight is ours.model.decoder.embed_tokens.weight


def test_shift_tokens_right_matches_transformers():
    from transformers.models.bart.modeling_bart import shift_tokens_right as hf_shift

    labels, _ = target_batch(99, PAD)
    assert (labels == -100).any()
    assert torch.equal(shift_tokens_right(labels, PAD, START), hf_shift(labels, PAD, START))


def test_base_model_without_decoder_inputs_decodes_the_shifted_source(tmp_path):
    hf = hf_model("BartModel")
    hf.save_pretrained(tmp_path)
    ours = lmforge.BartModel.from_pretrained(tmp_path)
    src, src_mask = source_batch(99, PAD, EOS)
    close(outputs(ours, input_ids=src, attention_mask=src_mask).last_hidden_state,
          outputs(hf, input_ids=src, attention_mask=src_mask).last_hidden_state)


def test_incremental_decoding_with_the_cache_equals_the_full_forward(tmp_path):
    hf = hf_model("BartForConditionalGeneration")
    hf.save_pretrained(tmp_path)
    ours = lmforge.BartForConditionalGeneration.from_pretrained(tmp_path)
    src, src_mask = source_batch(99, PAD, EOS)
    labels, _ = target_batch(99, PAD)
    decoder_ids = shift_tokens_right(labels, PAD, START)
    full = outputs(hf, input_ids=src, attention_mask=src_mask, decoder_input_ids=decoder_ids).logits
    close(outputs(ours, input_ids=src, attention_mask=src_mask, decoder_input_ids=decoder_ids).logits, full)
    check_incremental_decoding(ours, full, src, src_mask, decoder_ids)


@pytest.mark.parametrize("head", ["BartForConditionalGeneration", "BartForSequenceClassification"])
@pytest.mark.parametrize("safe", [True, False])
def test_lmforge_checkpoints_load_in_transformers(tmp_path, head, safe):
    hf = hf_model(head)
    hf.save_pretrained(tmp_path / "hf")
    ours = getattr(lmforge, head).from_pretrained(tmp_path / "hf")
    ours.save_pretrained(tmp_path / "ours", safe_serialization=safe)
    assert (tmp_path / "ours" / ("model.safetensors" if safe else "pytorch_model.bin")).is_file()
    again, info = getattr(transformers, head).from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"], info
    batch = inputs(head)
    close(outputs(again.eval(), **batch).logits, outputs(hf, **batch).logits)


def test_base_checkpoint_loads_into_the_lm_head_model(tmp_path):
    hf = hf_model("BartModel")
    hf.save_pretrained(tmp_path)
    ours, info = lmforge.BartForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert info.missing_keys == ["final_logits_bias"] and info.unexpected_keys == []
    src, src_mask = source_batch(99, PAD, EOS)
    with torch.no_grad():
        close(ours.model(src, src_mask).last_hidden_state, hf(src, src_mask).last_hidden_state)


def test_auto_classes_dispatch_on_model_type(tmp_path):
    hf_model("BartForConditionalGeneration").save_pretrained(tmp_path)
    assert type(lmforge.AutoConfig.from_pretrained(tmp_path)) is BartConfig
    assert type(lmforge.AutoModelForSeq2SeqLM.from_pretrained(tmp_path)).__name__ == "BartForConditionalGeneration"
    assert type(lmforge.AutoModel.from_pretrained(tmp_path)).__name__ == "BartModel"
    model = lmforge.AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert type(model).__name__ == "BartForSequenceClassification"


def test_sequence_classification_needs_the_same_number_of_eos_per_row(tmp_path):
    hf_model("BartForSequenceClassification").save_pretrained(tmp_path)
    ours = lmforge.BartForSequenceClassification.from_pretrained(tmp_path)
    src, src_mask = source_batch(99, PAD, EOS)
    src[0, 0] = EOS
    with pytest.raises(ValueError, match="same number"):
        ours(src, src_mask)


def test_positions_past_max_position_embeddings_are_refused():
    config = BartConfig(vocab_size=99, d_model=16, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=8,
                        decoder_ffn_dim=8, encoder_attention_heads=2, decoder_attention_heads=2,
                        max_position_embeddings=8)
    with pytest.raises(ValueError, match="max_position_embeddings=8"):
        lmforge.BartModel(config)(torch.full((1, 9), 5))


def test_cpu_fast_paths_apply_to_the_shared_blocks_and_equal_the_readable_ones(tmp_path):
    import copy

    from lmforge.cpu import fast_paths
    from lmforge.nn.attention import CrossAttention, SelfAttention

    hf_model("BartForConditionalGeneration").save_pretrained(tmp_path)
    ours = lmforge.BartForConditionalGeneration.from_pretrained(tmp_path)
    layer = ours.model.decoder.layers[0]
    assert type(layer.self_attn) is not SelfAttention and type(layer.encoder_attn) is not CrossAttention
    readable = fast_paths.restore(copy.deepcopy(ours))
    assert type(readable.model.decoder.layers[0].self_attn) is SelfAttention
    batch = inputs("BartForConditionalGeneration")
    close(outputs(ours, **batch).logits, outputs(readable, **batch).logits)


@pytest.mark.parametrize("forced_eos", [EOS, None], ids=["forced-eos", "no-forced-eos"])
@pytest.mark.parametrize("settings", [dict(num_beams=1), dict(num_beams=3), dict(num_beams=3, num_return_sequences=2)],
                         ids=["greedy", "beam3", "beam3-return2"])
def test_generate_is_token_identical_to_transformers(tmp_path, settings, forced_eos):
    # forced_eos_token_id (BART's config default): a row cut by the length limit ends with EOS.
    hf = hf_model("BartForConditionalGeneration", hf_config(forced_eos_token_id=forced_eos))
    hf.save_pretrained(tmp_path)
    ours = lmforge.BartForConditionalGeneration.from_pretrained(tmp_path)
    src, src_mask = source_batch(99, PAD, EOS)
    got = check_generation(hf, ours, src, src_mask, EOS, max_new_tokens=12, **settings)
    assert (got[:, 0] == START).all() and (got == EOS).any()
