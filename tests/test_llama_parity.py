"""Llama and Qwen2 parity with transformers: same weights -> same outputs (fp32, 1e-5), losses equal,
checkpoints both ways; RoPE settings read in both spellings and unsupported ones refused."""

from __future__ import annotations

import json

import pytest
import torch
from decoder_helpers import close, hf_positions, lm_labels, padded_batch, perturb_

import lmforge
from lmforge import ConfigError
from lmforge.models.llama import LlamaConfig, Qwen2Config

transformers = pytest.importorskip("transformers")

BASE = dict(vocab_size=99, hidden_size=48, intermediate_size=37, num_hidden_layers=2, num_attention_heads=6,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            num_labels=3)
CONFIGS = {
    "gqa-untied": ("llama", dict(rope_theta=500.0)),
    "mha-bias-linear-rope-tied": ("llama", dict(num_key_value_heads=6, attention_bias=True, tie_word_embeddings=True,
                                                rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "llama3-rope-head-dim": ("llama", dict(num_attention_heads=4, num_key_value_heads=1, head_dim=16, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8})),
    "qwen2": ("qwen2", dict(rope_theta=1000.0)),
}
HEADS = {"llama": ["LlamaModel", "LlamaForCausalLM", "LlamaForSequenceClassification"],
         "qwen2": ["Qwen2Model", "Qwen2ForCausalLM", "Qwen2ForSequenceClassification"]}
CASES = [(name, head) for name, (family, _) in CONFIGS.items() for head in HEADS[family]]


def hf_model(name: str, head: str, **extra):
    family, fields = CONFIGS[name]
    config_class = transformers.LlamaConfig if family == "llama" else transformers.Qwen2Config
    torch.manual_seed(0)
    return perturb_(getattr(transformers, head)(config_class(**{**BASE, **fields, **extra}))).eval()


def labels_for(head, ids, mask):
    if head.endswith("CausalLM"):
        return lm_labels(ids, mask)
    if head.endswith("SequenceClassification"):
        return torch.randint(0, 3, (ids.size(0),), generator=torch.Generator().manual_seed(3))
    return None


@pytest.mark.parametrize(("name", "head"), CASES)
def test_right_padded_outputs_and_loss_match(tmp_path, name, head):
    hf = hf_model(name, head, attn_implementation="eager")  # eager: HF returns attention probabilities
    hf.save_pretrained(tmp_path)
    ours = getattr(lmforge, head).from_pretrained(tmp_path)
    ids, mask = padded_batch(99, "right")
    labels = labels_for(head, ids, mask)
    kw = dict(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    if labels is not None:
        kw["labels"] = labels
    with torch.no_grad():
        a, b = hf(**kw), ours(**kw)
    main = "last_hidden_state" if head.endswith("Model") else "logits"
    close(getattr(b, main), getattr(a, main), msg=main)
    for i, (x, y) in enumerate(zip(b.hidden_states, a.hidden_states, strict=True)):
        close(x, y, msg=f"hidden_states[{i}]")
    for i, (x, y) in enumerate(zip(b.attentions, a.attentions, strict=True)):
        close(x, y, msg=f"attentions[{i}]")
    if labels is not None:
        close(b.loss, a.loss, msg="loss")


@pytest.mark.parametrize(("name", "head"), [c for c in CASES if not c[1].endswith("Model")])
def test_left_padding_does_not_shift_rotary_positions(tmp_path, name, head):
    hf = hf_model(name, head)
    hf.save_pretrained(tmp_path)
    ours = getattr(lmforge, head).from_pretrained(tmp_path)
    ids, mask = padded_batch(99, "left")
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask))
        b = ours(input_ids=ids, attention_mask=mask)
        if head.endswith("CausalLM"):
            close(b.logits, a.logits, mask.bool())
            # The first real token of a left-padded row equals the same row unpadded.
            alone = ours(input_ids=ids[1:2, 3:]).logits
            close(b.logits[1:2, 3:], alone)
        else:
            close(b.logits, a.logits)


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "sharded-safetensors"])
def test_lmforge_checkpoints_load_in_transformers(tmp_path, fmt):
    hf = hf_model("mha-bias-linear-rope-tied", "LlamaForCausalLM")
    hf.save_pretrained(tmp_path / "hf")
    ours = lmforge.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    options = dict(safe_serialization=fmt != "bin")
    if fmt.startswith("sharded"):
        options["max_shard_size"] = 20_000
    ours.save_pretrained(tmp_path / "ours", **options)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert again.config.rope_parameters["rope_type"] == "linear" and again.config.rope_parameters["factor"] == 2.0
    ids, mask = padded_batch(99, "right")
    with torch.no_grad():
        close(again(ids, attention_mask=mask).logits, hf(ids, attention_mask=mask).logits)


def test_qwen2_saved_config_has_qwen2_fields_only(tmp_path):
    hf = hf_model("qwen2", "Qwen2ForCausalLM")
    hf.save_pretrained(tmp_path / "hf")
    lmforge.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["model_type"] == "qwen2" and "attention_bias" not in saved and saved["rope_theta"] == 1000.0
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    ids, mask = padded_batch(99, "right")
    with torch.no_grad():
        close(again(ids, attention_mask=mask).logits, hf(ids, attention_mask=mask).logits)


def test_rope_parameters_of_transformers_5_are_read():
    config = LlamaConfig.from_dict({"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4,
                                    "rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 5e5}})
    assert config.rope_theta == 5e5 and config.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    legacy = LlamaConfig.from_dict({"model_type": "llama", "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert legacy.rope_scaling == {"rope_type": "linear", "factor": 2.0}


@pytest.mark.parametrize("rope_type", ["dynamic", "yarn", "longrope"])
def test_unsupported_rope_types_are_refused_naming_the_file(tmp_path, rope_type):
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "llama", "rope_scaling": {"rope_type": rope_type, "factor": 2.0}}))
    with pytest.raises(ConfigError, match=rf"config.json: rope_scaling type '{rope_type}' is not supported.*linear"):
        lmforge.AutoConfig.from_pretrained(tmp_path)


def test_config_validation_names_fields():
    with pytest.raises(ConfigError, match=r"num_attention_heads \(6\) must be a multiple of num_key_value_heads \(4\)"):
        LlamaConfig(hidden_size=48, num_attention_heads=6, num_key_value_heads=4)
    with pytest.raises(ConfigError, match="use_sliding_window"):
        Qwen2Config(use_sliding_window=True)
    with pytest.raises(ConfigError, match="rope_scaling of type 'llama3' needs"):
        LlamaConfig(rope_scaling={"rope_type": "llama3", "factor": 8.0})


def test_auto_classes_pick_the_family_from_config_json(tmp_path):
    hf = hf_model("gqa-untied", "LlamaForCausalLM")
    hf.save_pretrained(tmp_path)
    assert type(lmforge.AutoModelForCausalLM.from_pretrained(tmp_path)).__name__ == "LlamaForCausalLM"
    classifier = lmforge.AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=5)
    assert type(classifier).__name__ == "LlamaForSequenceClassification" and classifier.score.out_features == 5
    with pytest.raises(ConfigError, match=r"'llama' has no 'token-classification' model; supported: \[.*gpt2"):
        lmforge.AutoModelForTokenClassification.from_pretrained(tmp_path)


def test_forward_does_not_mutate_the_config(tmp_path):
    hf = hf_model("gqa-untied", "LlamaForCausalLM")
    hf.save_pretrained(tmp_path)
    model = lmforge.LlamaForCausalLM.from_pretrained(tmp_path)
    before = model.config.to_dict()
    ids, mask = padded_batch(99, "left")
    with torch.no_grad():
        model(ids, attention_mask=mask, labels=ids, use_cache=True, output_attentions=True)
    assert model.config.to_dict() == before


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="no native bf16 on this CPU")
def test_bf16_autocast_keeps_an_fp32_residual_stream_and_is_close(tmp_path):
    hf = hf_model("gqa-untied", "LlamaForCausalLM")
    hf.save_pretrained(tmp_path)
    ours = lmforge.LlamaForCausalLM.from_pretrained(tmp_path)
    ids, mask = padded_batch(99, "left")
    with torch.no_grad():
        fp32 = ours(ids, attention_mask=mask).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = ours(ids, attention_mask=mask, output_hidden_states=True)  # oneDNN, SiLU and product fused
            theirs = hf(ids, attention_mask=mask, position_ids=hf_positions(mask)).logits
    assert all(h.dtype == torch.float32 for h in out.hidden_states)
    real = mask.bool()
    ours_error = (out.logits.float() - fp32)[real].abs().max()
    theirs_error = (theirs.float() - fp32)[real].abs().max()
    assert ours_error < 0.05 and ours_error < 2 * theirs_error, (ours_error, theirs_error)
