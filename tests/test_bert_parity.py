"""Parity with `transformers`: same weights -> same outputs (fp32, 1e-5), both load directions."""

from __future__ import annotations

import pytest
import torch

import lmforge
from lmforge.models.bert import model as ours

transformers = pytest.importorskip("transformers")

ATOL = 1e-5

CONFIGS = {
    "gelu-tt2": dict(hidden_act="gelu", hidden_size=32, num_attention_heads=4, type_vocab_size=2),
    "gelu_new-odd-heads": dict(hidden_act="gelu_new", hidden_size=30, num_attention_heads=5, type_vocab_size=2),
    "relu-tt1": dict(hidden_act="relu", hidden_size=24, num_attention_heads=3, type_vocab_size=1),
    "silu-7heads": dict(hidden_act="silu", hidden_size=28, num_attention_heads=7, type_vocab_size=2),
}

HEADS = [
    "BertModel",
    "BertForMaskedLM",
    "BertForPreTraining",
    "BertForNextSentencePrediction",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertForQuestionAnswering",
    "BertForMultipleChoice",
]


def labels_count(head: str) -> int:
    return 2 if head == "BertForQuestionAnswering" else 3  # QA needs exactly start + end


def hf_config(name: str, **extra) -> transformers.BertConfig:
    fields = dict(vocab_size=99, num_hidden_layers=2, intermediate_size=37, max_position_embeddings=64,
                  hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    fields.update(CONFIGS[name])
    fields.update(extra)
    return transformers.BertConfig(**fields)


def padded_pair_batch(config, B: int = 4, T: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """Sentence pairs of different lengths, right-padded: [CLS] a [SEP] b [SEP] [PAD]..."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, config.vocab_size, (B, T), generator=g)
    attention_mask = torch.zeros(B, T, dtype=torch.long)
    token_type_ids = torch.zeros(B, T, dtype=torch.long)
    for b, length in enumerate([T, T - 3, 5, 2][:B]):
        attention_mask[b, :length] = 1
        if config.type_vocab_size > 1:
            token_type_ids[b, length // 2:length] = 1
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


def labels_for(head: str, config, batch, variant: str = "") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    B, T = batch["input_ids"].shape[:2]
    if head == "BertForMaskedLM":
        labels = torch.randint(0, config.vocab_size, (B, T), generator=g)
        return {"labels": labels.masked_fill(torch.rand(B, T, generator=g) > 0.3, -100).masked_fill(
            batch["attention_mask"] == 0, -100)}
    if head == "BertForPreTraining":
        labels = torch.randint(0, config.vocab_size, (B, T), generator=g).masked_fill(batch["attention_mask"] == 0, -100)
        return {"labels": labels, "next_sentence_label": torch.randint(0, 2, (B,), generator=g)}
    if head == "BertForNextSentencePrediction":
        return {"labels": torch.randint(0, 2, (B,), generator=g)}
    if head == "BertForSequenceClassification":
        if variant == "regression":
            return {"labels": torch.randn(B, generator=g)}
        if variant == "multi_label":
            return {"labels": torch.randint(0, 2, (B, config.num_labels), generator=g).float()}
        return {"labels": torch.randint(0, config.num_labels, (B,), generator=g)}
    if head == "BertForTokenClassification":
        return {"labels": torch.randint(0, config.num_labels, (B, T), generator=g).masked_fill(
            batch["attention_mask"] == 0, -100)}
    if head == "BertForQuestionAnswering":
        return {"start_positions": torch.randint(0, T, (B,), generator=g),
                "end_positions": torch.randint(0, T + 3, (B,), generator=g)}
    if head == "BertForMultipleChoice":
        return {"labels": torch.randint(0, batch["input_ids"].shape[1], (B,), generator=g)}
    return {}


def make_batch(head: str, config) -> dict[str, torch.Tensor]:
    batch = padded_pair_batch(config)
    if head == "BertForMultipleChoice":
        # (B, K, T): two questions with their choices, each choice an encoded pair.
        batch = {k: v.view(2, 2, -1) for k, v in batch.items()}
    return batch


def assert_outputs_close(ours_out, theirs_out, names) -> None:
    for name in names:
        a, b = getattr(ours_out, name), getattr(theirs_out, name)
        if isinstance(b, tuple):
            assert len(a) == len(b), name
            for i, (x, y) in enumerate(zip(a, b)):
                torch.testing.assert_close(x, y, atol=ATOL, rtol=0, msg=f"{name}[{i}]")
        else:
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0, msg=name)


def output_names(head: str) -> list[str]:
    if head == "BertModel":
        return ["last_hidden_state", "pooler_output", "hidden_states", "attentions"]
    if head == "BertForPreTraining":
        return ["loss", "prediction_logits", "seq_relationship_logits", "hidden_states", "attentions"]
    if head == "BertForQuestionAnswering":
        return ["loss", "start_logits", "end_logits", "hidden_states", "attentions"]
    return ["loss", "logits", "hidden_states", "attentions"]


# Outputs with one row per token: on lmforge's default ("unpadded") path they equal transformers' at real
# tokens only (padding positions hold zeros there).
PER_TOKEN = {"last_hidden_state", "hidden_states", "prediction_logits", "start_logits", "end_logits"}


def at_real_tokens(output, name: str, head: str, attention_mask: torch.Tensor):
    real = attention_mask.reshape(-1, attention_mask.size(-1)).bool()  # (B, T); (B*K, T) for multiple choice
    per_token = name in PER_TOKEN or (name == "logits" and head in ("BertForMaskedLM", "BertForTokenClassification"))
    if not per_token:
        return output
    return tuple(x[real] for x in output) if isinstance(output, tuple) else output[real]


def run_both(head, hf_model, our_model, config, variant="", output_attentions=True, real_tokens_only=False):
    batch = make_batch(head, config)
    labels = labels_for(head, config, batch, variant)
    kwargs = dict(output_hidden_states=True, output_attentions=output_attentions)
    with torch.no_grad():
        theirs = hf_model(**batch, **labels, **kwargs)
        mine = our_model(**batch, **labels, **kwargs)
    names = output_names(head)
    if not output_attentions:
        names = [n for n in names if n != "attentions"]
    if not labels:
        names = [n for n in names if n != "loss"]
    if real_tokens_only:
        mask = batch["attention_mask"]
        for name in names:
            a = at_real_tokens(getattr(mine, name), name, head, mask)
            b = at_real_tokens(getattr(theirs, name), name, head, mask)
            for i, (x, y) in enumerate(zip(a, b) if isinstance(b, tuple) else [(a, b)]):
                torch.testing.assert_close(x, y, atol=ATOL, rtol=0, msg=f"{name}[{i}]")
        return mine
    assert_outputs_close(mine, theirs, names)
    return mine


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("head", HEADS)
def test_transformers_checkpoint_loads_with_equal_outputs(tmp_path, head, config_name):
    """Default model; output_attentions=True runs it padded, so every position matches."""
    torch.manual_seed(0)
    config = hf_config(config_name, num_labels=labels_count(head), attn_implementation="eager")
    hf_model = getattr(transformers, head)(config).eval()
    hf_model.save_pretrained(tmp_path)
    our_model = getattr(ours, head).from_pretrained(tmp_path)
    run_both(head, hf_model, our_model, config)


@pytest.mark.parametrize("head", HEADS)
def test_sdpa_path_matches_transformers_sdpa(tmp_path, head):
    torch.manual_seed(0)
    config = hf_config("gelu-tt2", num_labels=labels_count(head), attn_implementation="sdpa")
    hf_model = getattr(transformers, head)(config).eval()
    hf_model.save_pretrained(tmp_path)
    our_model = getattr(ours, head).from_pretrained(tmp_path, attn_implementation="sdpa")
    run_both(head, hf_model, our_model, config, output_attentions=False)


@pytest.mark.parametrize("config_name", ["gelu-tt2", "relu-tt1"])
@pytest.mark.parametrize("head", HEADS)
def test_default_path_matches_transformers_at_real_tokens(tmp_path, head, config_name):
    """from_pretrained's default ("unpadded", except QA): losses, pooled/sequence logits and every per-token
    output at real tokens equal transformers'; padding positions hold zeros."""
    torch.manual_seed(0)
    config = hf_config(config_name, num_labels=labels_count(head), attn_implementation="sdpa")
    hf_model = getattr(transformers, head)(config).eval()
    hf_model.save_pretrained(tmp_path)
    our_model = getattr(ours, head).from_pretrained(tmp_path)
    mine = run_both(head, hf_model, our_model, config, output_attentions=False, real_tokens_only=True)
    if head != "BertForQuestionAnswering":  # QA runs padded (its loss is a softmax over padding too)
        pad = make_batch(head, config)["attention_mask"].reshape(-1, 12) == 0
        assert mine.hidden_states[-1][pad].abs().max() == 0


@pytest.mark.parametrize("config_name", ["gelu-tt2", "relu-tt1"])
@pytest.mark.parametrize("head", HEADS)
def test_lmforge_save_loads_in_transformers(tmp_path, head, config_name):
    torch.manual_seed(0)
    hf_reference_config = hf_config(config_name, num_labels=labels_count(head))
    fields = {k: getattr(hf_reference_config, k) for k in lmforge.BertConfig.field_names()
              if hasattr(hf_reference_config, k) and k not in ("id2label", "label2id", "num_labels", "architectures", "torch_dtype", "problem_type")}
    our_model = getattr(ours, head)(lmforge.BertConfig(**fields, num_labels=labels_count(head))).eval()
    our_model.save_pretrained(tmp_path)
    hf_model, info = getattr(transformers, head).from_pretrained(
        tmp_path, attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    hf_model.eval()
    run_both(head, hf_model, our_model, hf_model.config)


@pytest.mark.parametrize("variant,num_labels", [("single", 3), ("multi_label", 3), ("regression", 1)])
def test_sequence_classification_losses_match(tmp_path, variant, num_labels):
    torch.manual_seed(0)
    config = hf_config("gelu-tt2", num_labels=num_labels, attn_implementation="eager")
    hf_model = transformers.BertForSequenceClassification(config).eval()
    hf_model.save_pretrained(tmp_path)
    our_model = ours.BertForSequenceClassification.from_pretrained(tmp_path)
    run_both("BertForSequenceClassification", hf_model, our_model, config, variant=variant)
