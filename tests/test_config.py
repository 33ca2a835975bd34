"""BertConfig: HF field names, validation naming the field, unknown keys preserved."""

from __future__ import annotations

import json

import pytest

from lmforge import AutoConfig, BertConfig, ConfigError


def test_unknown_keys_survive_a_round_trip(tmp_path):
    data = {"model_type": "bert", "hidden_size": 64, "num_attention_heads": 4, "_name_or_path": "x",
            "gradient_checkpointing": False, "some_future_field": [1, 2]}
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = BertConfig.from_pretrained(tmp_path)
    config.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["some_future_field"] == [1, 2] and saved["_name_or_path"] == "x"
    assert saved["hidden_size"] == 64


def test_hidden_size_not_divisible_by_heads_names_both_fields():
    with pytest.raises(ConfigError, match=r"hidden_size \(30\).*num_attention_heads \(4\)"):
        BertConfig(hidden_size=30, num_attention_heads=4)


def test_invalid_value_in_file_names_the_file_and_field(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_act": "gelu_magic"}))
    with pytest.raises(ConfigError) as err:
        BertConfig.from_pretrained(tmp_path)
    assert "config.json" in str(err.value) and "hidden_act" in str(err.value)


def test_id2label_sets_num_labels_and_label2id():
    config = BertConfig(id2label={"0": "neg", "1": "neu", "2": "pos"})
    assert config.num_labels == 3
    assert config.label2id == {"neg": 0, "neu": 1, "pos": 2}


def test_dtype_key_of_newer_transformers_is_read_as_torch_dtype():
    config = BertConfig.from_dict({"model_type": "bert", "dtype": "bfloat16"})
    assert config.torch_dtype == "bfloat16"


def test_replace_returns_a_new_validated_config():
    config = BertConfig()
    other = config.replace(num_labels=5)
    assert config.num_labels == 2 and other.num_labels == 5 and len(other.id2label) == 5
    with pytest.raises(ConfigError, match="vocab_size"):
        config.replace(vocab_size=0)


def test_auto_config_rejects_unknown_model_type_listing_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama-9000"}))
    with pytest.raises(ConfigError, match=r"llama-9000.*supported.*bert"):
        AutoConfig.from_pretrained(tmp_path)


def test_auto_config_uses_architectures_without_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"], "hidden_size": 64,
                                                      "num_attention_heads": 2}))
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, BertConfig) and config.model_type == "bert"
    assert (config.hidden_size, config.num_attention_heads) == (64, 2)  # the file's values, not the defaults
    assert config.architectures == ["BertForMaskedLM"]


def test_invalid_json_reports_line(tmp_path):
    (tmp_path / "config.json").write_text('{\n  "hidden_size": 64,\n  oops\n}')
    with pytest.raises(ConfigError, match=r"config.json: invalid JSON at line 3"):
        AutoConfig.from_pretrained(tmp_path)
