"""Checkpoint folders: formats, HF key rules, dtype, and one clear error per kind of bad input."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmforge import (
    AutoModel,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    BertForPreTraining,
    BertForSequenceClassification,
    BertModel,
    CheckpointError,
)


def tiny_config(**changes) -> BertConfig:
    fields = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=20, max_position_embeddings=32)
    fields.update(changes)
    return BertConfig(**fields)


def inputs() -> dict[str, torch.Tensor]:
    return {"input_ids": torch.tensor([[2, 7, 9, 3, 0], [2, 5, 3, 0, 0]]),
            "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])}


def encode(model, **kw):
    with torch.no_grad():
        return model.eval()(**inputs(), output_hidden_states=True, **kw).hidden_states[-1]


def test_base_checkpoint_loads_into_head_and_reports_new_weights(tmp_path, caplog):
    torch.manual_seed(0)
    base = BertModel(tiny_config()).eval()
    base.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="lmforge"):
        head, info = BertForSequenceClassification.from_pretrained(tmp_path, num_labels=4, output_loading_info=True)
    assert info.missing_keys == ["classifier.weight", "classifier.bias"]
    assert "newly initialized" in caplog.text and "classifier.weight" in caplog.text
    torch.testing.assert_close(encode(head), encode(base))
    assert head.classifier.out_features == 4


def test_head_checkpoint_loads_into_base_model(tmp_path):
    torch.manual_seed(0)
    head = BertForPreTraining(tiny_config()).eval()
    head.save_pretrained(tmp_path)
    base, info = BertModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info.missing_keys == [] and all(k.startswith("cls.") for k in info.unexpected_keys)
    torch.testing.assert_close(encode(base), encode(head))


def test_tied_decoder_is_not_saved_and_is_tied_after_load(tmp_path):
    model = BertForMaskedLM(tiny_config())
    model.save_pretrained(tmp_path)
    keys = load_file(str(tmp_path / "model.safetensors"))
    assert "cls.predictions.decoder.weight" not in keys
    loaded = BertForMaskedLM.from_pretrained(tmp_path)
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight


def test_legacy_gamma_beta_names_are_mapped(tmp_path):
    torch.manual_seed(0)
    model = BertModel(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in state.items()}
    save_file(renamed, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    loaded, info = BertModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info.missing_keys and not info.unexpected_keys
    torch.testing.assert_close(encode(loaded), encode(model))


def test_sharded_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    model = BertModel(tiny_config()).eval()
    model.save_pretrained(tmp_path, max_shard_size=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (tmp_path / "model.safetensors").exists()
    torch.testing.assert_close(encode(BertModel.from_pretrained(tmp_path)), encode(model))


def test_pytorch_bin_round_trip(tmp_path):
    torch.manual_seed(0)
    model = BertModel(tiny_config()).eval()
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "pytorch_model.bin").exists()
    torch.testing.assert_close(encode(BertModel.from_pretrained(tmp_path)), encode(model))


def test_torch_dtype_is_honoured_and_recorded(tmp_path):
    BertModel(tiny_config()).to(torch.bfloat16).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert BertModel.from_pretrained(tmp_path, torch_dtype="auto").dtype == torch.bfloat16
    assert BertModel.from_pretrained(tmp_path).dtype == torch.float32
    assert BertModel.from_pretrained(tmp_path, torch_dtype=torch.float16).dtype == torch.float16


def test_label_maps_survive_save_and_load(tmp_path):
    model = BertForSequenceClassification(tiny_config(id2label={0: "negative", 1: "positive"}))
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert loaded.config.id2label == {0: "negative", 1: "positive"}
    assert loaded.config.label2id == {"negative": 0, "positive": 1}


def test_from_pretrained_never_mutates_on_forward(tmp_path):
    model = BertForSequenceClassification(tiny_config(num_labels=3))
    before = model.config.to_dict()
    model(**inputs(), labels=torch.tensor([0, 2]))
    assert model.config.to_dict() == before


# ------------------------------------------------------------------------------ bad input
def test_missing_config_names_the_file(tmp_path):
    BertModel(tiny_config()).save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config.json"):
        AutoModel.from_pretrained(tmp_path)


def test_invalid_config_value_names_file_and_field(tmp_path):
    BertModel(tiny_config()).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["num_attention_heads"] = 3
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"config.json.*num_attention_heads"):
        AutoModel.from_pretrained(tmp_path)


def test_truncated_safetensors_names_the_file(tmp_path):
    BertModel(tiny_config()).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors.*truncated"):
        BertModel.from_pretrained(tmp_path)


def test_config_weight_shape_mismatch_names_file_and_key(tmp_path):
    BertModel(tiny_config()).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["vocab_size"] = 60
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"model.safetensors.*word_embeddings.weight.*\(50, 16\).*\(60, 16\)"):
        BertModel.from_pretrained(tmp_path)


class NotATensor:
    pass


def test_bin_with_non_tensor_pickle_is_refused(tmp_path):
    BertModel(tiny_config()).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({"embeddings.word_embeddings.weight": NotATensor()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: refusing to load"):
        BertModel.from_pretrained(tmp_path)


def test_missing_weights_lists_what_was_looked_for(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"model.safetensors.*pytorch_model.bin"):
        BertModel.from_pretrained(tmp_path)
