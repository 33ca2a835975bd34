"""T5 parity with transformers (v1.0 ReLU / tied, v1.1 gated-GELU / untied): same weights -> same outputs (fp32,
1e-5) with padding, losses equal, checkpoints both ways, the KV cache equal to a full forward at every step."""

from __future__ import annotations

import json

import pytest
import torch
from decoder_helpers import close, padded_batch, perturb_

import lmforge
from lmforge import AutoModel, AutoModelForSeq2SeqLM, ConfigError
from lmforge.models.t5 import T5Config
from lmforge.models.t5.model import relative_position_bucket

transformers = pytest.importorskip("transformers")

BASE = dict(vocab_size=99, d_model=32, d_kv=6, d_ff=37, num_layers=2, num_decoder_layers=3, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=12, dropout_rate=0.1,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
CONFIGS = {
    "v1.0": dict(feed_forward_proj="relu"),
    "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


def hf_model(version: str, head: str = "T5ForConditionalGeneration", **extra):
    """transformers' model, weights perturbed. transformers 5 ties lm_head to `shared` even for v1.1
    (tie_word_embeddings=False only turns the rescale off), so v1.1 gets its own lm_head here, as real v1.1
    checkpoints have (transformers keeps such a checkpoint's lm_head untied on load)."""
    torch.manual_seed(0)
    model = getattr(transformers, head)(transformers.T5Config(**{**BASE, **CONFIGS[version], **extra}))
    if version == "v1.1" and hasattr(model, "lm_head"):
        model.lm_head = torch.nn.Linear(BASE["d_model"], BASE["vocab_size"], bias=False)
    return perturb_(model, scale=0.1).eval()


def ours_from(hf, version: str, head: str = "T5ForConditionalGeneration", **extra):
    model = getattr(lmforge, head)(T5Config(**{**BASE, **CONFIGS[version], **extra})).eval()
    model.load_state_dict(hf.state_dict())
    return model


def batch():
    """Encoder ids right-padded (lengths 11, 8, 5, 2), decoder labels with -100 at their padding (7, 4, 6, 1)."""
    ids, mask = padded_batch(99, "right", T=11)
    labels = torch.randint(2, 99, (4, 7), generator=torch.Generator().manual_seed(1))
    decoder_mask = torch.zeros(4, 7, dtype=torch.long)
    for b, n in enumerate([7, 4, 6, 1]):
        decoder_mask[b, :n] = 1
    return ids, mask, labels.masked_fill(decoder_mask == 0, -100), decoder_mask


def test_relative_position_buckets_match():
    distance = torch.arange(-40, 41)[None, :]
    for bidirectional in (True, False):
        for buckets, max_distance in ((32, 128), (8, 12), (6, 20)):
            expected = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
                distance, bidirectional=bidirectional, num_buckets=buckets, max_distance=max_distance)
            assert torch.equal(relative_position_bucket(distance, bidirectional, buckets, max_distance), expected)


@pytest.mark.parametrize("version", CONFIGS)
def test_padded_outputs_and_loss_match(version):
    hf = hf_model(version, attn_implementation="eager")  # eager: HF returns attention probabilities
    ours = ours_from(hf, version)
    ids, mask, labels, decoder_mask = batch()
    kw = dict(input_ids=ids, attention_mask=mask, labels=labels, decoder_attention_mask=decoder_mask,
              output_attentions=True, output_hidden_states=True)
    with torch.no_grad():
        a, b = hf(**kw), ours(**kw)
    close(b.logits, a.logits, msg="logits")
    close(b.loss, a.loss, msg="loss")
    close(b.encoder_last_hidden_state, a.encoder_last_hidden_state, msg="encoder_last_hidden_state")
    for name in ("encoder_hidden_states", "decoder_hidden_states", "encoder_attentions", "decoder_attentions",
                 "cross_attentions"):
        for i, (x, y) in enumerate(zip(getattr(b, name), getattr(a, name), strict=True)):
            close(x, y, msg=f"{name}[{i}]")


@pytest.mark.parametrize("version", CONFIGS)
def test_left_padded_encoder_and_sdpa_match(version):
    hf = hf_model(version)
    ours = ours_from(hf, version)
    ids, mask = padded_batch(99, "left", T=9)
    decoder_ids = torch.randint(2, 99, (4, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids)
        b = ours(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids)
    close(b.logits, a.logits, msg="logits")


def test_training_mode_loss_and_gradients_match():
    """Dropout off (its random draws differ), gradients of every parameter equal."""
    hf = hf_model("v1.1", dropout_rate=0.0).train()
    ours = T5ForConditionalGeneration_v11(dropout_rate=0.0).train()
    ours.load_state_dict(hf.state_dict())
    ids, mask, labels, decoder_mask = batch()
    kw = dict(input_ids=ids, attention_mask=mask, labels=labels, decoder_attention_mask=decoder_mask)
    hf(**kw).loss.backward()
    ours(**kw).loss.backward()
    theirs = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        close(p.grad, theirs[name].grad, msg=name)


def T5ForConditionalGeneration_v11(**changes):
    return lmforge.T5ForConditionalGeneration(T5Config(**{**BASE, **CONFIGS["v1.1"], **changes}))


@pytest.mark.parametrize("version", CONFIGS)
def test_hf_checkpoint_loads_into_every_head(tmp_path, version):
    hf = hf_model(version)
    hf.save_pretrained(tmp_path)
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()  # what the folder holds
    ids, mask, labels, decoder_mask = batch()
    kw = dict(input_ids=ids, attention_mask=mask, decoder_attention_mask=decoder_mask)
    with torch.no_grad():
        expected = hf(**kw, labels=labels)
        lm = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
        assert type(lm).__name__ == "T5ForConditionalGeneration"
        got = lm(**kw, labels=labels)
        close(got.logits, expected.logits, msg="logits")
        close(got.loss, expected.loss, msg="loss")
        base = AutoModel.from_pretrained(tmp_path)
        assert type(base).__name__ == "T5Model"
        decoder_ids = hf.prepare_decoder_input_ids_from_labels(labels)
        hf_base = transformers.T5Model.from_pretrained(tmp_path).eval()
        close(base(**kw, decoder_input_ids=decoder_ids).last_hidden_state,
              hf_base(**kw, decoder_input_ids=decoder_ids).last_hidden_state, msg="T5Model")
        encoder, info = lmforge.T5EncoderModel.from_pretrained(tmp_path, output_loading_info=True)
        assert not info.missing_keys and not info.unexpected_keys
        close(encoder(input_ids=ids, attention_mask=mask).last_hidden_state, expected.encoder_last_hidden_state,
              msg="T5EncoderModel")


@pytest.mark.parametrize("version", CONFIGS)
def test_lmforge_checkpoint_loads_in_transformers(tmp_path, version):
    ours = ours_from(hf_model(version), version)
    ours.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == "t5" and written["feed_forward_proj"] == CONFIGS[version]["feed_forward_proj"]
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert (hf.lm_head.weight is hf.shared.weight) == (version == "v1.0")
    ids, mask, labels, decoder_mask = batch()
    kw = dict(input_ids=ids, attention_mask=mask, labels=labels, decoder_attention_mask=decoder_mask)
    with torch.no_grad():
        close(ours(**kw).logits, hf(**kw).logits, msg="logits")
    again = lmforge.T5ForConditionalGeneration.from_pretrained(tmp_path)
    assert (again.lm_head.weight is again.shared.weight) == (version == "v1.0")
    assert again.encoder.embed_tokens is again.shared and again.decoder.embed_tokens is again.shared


@pytest.mark.parametrize("version", CONFIGS)
def test_cached_decoding_equals_full_forward_at_every_step(version):
    """Encode once, then one decoder token per step over the KV cache; the cross-attention keys/values are
    computed at the first step only."""
    hf = hf_model(version)
    ours = ours_from(hf, version)
    ids, mask = padded_batch(99, "right", T=9)
    decoder_ids = torch.randint(2, 99, (4, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits  # (B, 6, V)
        encoder_outputs = ours.encoder(ids, mask, None)
        cache = lmforge.KVCache(BASE["num_decoder_layers"])
        out = ours(attention_mask=mask, encoder_outputs=encoder_outputs, decoder_input_ids=decoder_ids[:, :2],
                   past_key_values=cache)
        close(out.logits, full[:, :2], msg="prefill")
        cross = [c[0] for c in cache.cross]
        for t in range(2, 6):
            out = ours(attention_mask=mask, encoder_outputs=encoder_outputs, decoder_input_ids=decoder_ids[:, t:t + 1],
                       past_key_values=cache)
            close(out.logits[:, 0], full[:, t], msg=f"step {t}")
            assert all(c[0] is k for c, k in zip(cache.cross, cross, strict=True))
        assert cache.get_seq_length() == 6


def test_hf_config_fields_round_trip(tmp_path):
    """transformers 5 writes tie_word_embeddings=true for every T5 and the v1.1 "no rescale" as
    scale_decoder_outputs=false; both spellings load."""
    transformers.T5Config(**BASE, feed_forward_proj="gated-gelu", tie_word_embeddings=False).save_pretrained(tmp_path)
    config = T5Config.from_pretrained(tmp_path)
    assert config.is_gated_act and config.dense_act_fn == "gelu_new" and not config.rescale_decoder_output
    assert config.num_decoder_layers == 3 and config.hidden_size == 32
    assert "dense_act_fn" not in config.extra
    v11 = T5Config(**BASE, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    assert not v11.rescale_decoder_output and "scale_decoder_outputs" not in v11.to_dict()
    with pytest.raises(ConfigError, match="feed_forward_proj"):
        T5Config(feed_forward_proj="gated-gelu-x")
    with pytest.raises(ConfigError, match="feed_forward_proj"):
        T5Config(feed_forward_proj="swishy")


def test_labels_without_decoder_start_token_are_refused():
    model = lmforge.T5ForConditionalGeneration(T5Config(**{**BASE, "decoder_start_token_id": None}))
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        model(input_ids=torch.ones(1, 3, dtype=torch.long), labels=torch.ones(1, 2, dtype=torch.long))


def test_old_checkpoint_keys_load_without_notices(tmp_path):
    """Older T5 .bin files also store encoder/decoder.embed_tokens (= shared) and an unused relative bias on the
    first cross-attention; both load silently."""
    ours = T5ForConditionalGeneration_v11()
    ours.config.save_pretrained(tmp_path)
    state = {k: v.clone() for k, v in ours.state_dict().items()}
    state["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = torch.zeros(8, 4)
    assert "encoder.embed_tokens.weight" in state and "decoder.embed_tokens.weight" in state
    torch.save(state, tmp_path / "pytorch_model.bin")
    loaded, info = lmforge.T5ForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info.missing_keys and not info.unexpected_keys
    assert torch.equal(loaded.encoder.embed_tokens.weight, ours.shared.weight)
    assert torch.equal(loaded.lm_head.weight, ours.lm_head.weight)
