"""Pipelines on tiny models built here: fill-mask, text-classification, token-classification."""

from __future__ import annotations

import logging

import pytest
import torch

from lmforge import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification
from lmforge.pipelines import length_sorted_batches, pipeline
from lmforge.tokenization import train_tokenizer

TEXTS = [f"the movie number {i} was {'good' if i % 2 else 'bad'} and the actors were fine ." for i in range(200)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(TEXTS, tmp_path_factory.mktemp("tok"), vocab_size=120, min_frequency=1)


def tiny(cls, tokenizer, **extra):
    torch.manual_seed(0)
    return cls(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=32, **extra)).eval()


def test_length_sorted_batches_cover_every_index_once():
    batches = length_sorted_batches([3, 9, 1, 7, 5], batch_size=2)
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    assert batches[0] == [1, 3]  # longest first


def test_fill_mask_returns_top_k_candidates_with_filled_sequence(tokenizer, tmp_path):
    model = tiny(BertForMaskedLM, tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    fill = pipeline("fill-mask", model=str(tmp_path))
    out = fill("the movie was [MASK] .", top_k=3)
    assert len(out) == 3 and out[0]["score"] >= out[1]["score"] >= out[2]["score"]
    assert out[0]["sequence"].startswith("the movie was") and out[0]["token_str"] in out[0]["sequence"]
    assert abs(sum(c["score"] for c in fill("the movie was [MASK] .", top_k=tokenizer.vocab_size)) - 1) < 1e-4


def test_fill_mask_with_several_masks_gives_one_list_per_mask(tokenizer):
    fill = pipeline("fill-mask", model=tiny(BertForMaskedLM, tokenizer), tokenizer=tokenizer)
    out = fill("the [MASK] was [MASK] .", top_k=2)
    assert len(out) == 2 and all(len(c) == 2 for c in out)


def test_fill_mask_without_mask_token_is_an_error(tokenizer):
    fill = pipeline("fill-mask", model=tiny(BertForMaskedLM, tokenizer), tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        fill("no mask here")


def test_text_classification_batches_restore_input_order(tokenizer):
    model = tiny(BertForSequenceClassification, tokenizer, id2label={0: "neg", 1: "pos"})
    clf = pipeline("text-classification", model=model, tokenizer=tokenizer, batch_size=3)
    texts = TEXTS[:7] + ["short"]
    batched = clf(texts, top_k=None)
    for text, result in zip(texts, batched):
        single = clf(text, top_k=None)
        assert [r["label"] for r in result] == [r["label"] for r in single]
        assert result[0]["score"] == pytest.approx(single[0]["score"], abs=1e-5)
        assert sum(r["score"] for r in result) == pytest.approx(1.0, abs=1e-5)


def test_text_classification_pairs_and_top_1(tokenizer):
    model = tiny(BertForSequenceClassification, tokenizer, id2label={0: "neg", 1: "pos"})
    clf = pipeline("text-classification", model=model, tokenizer=tokenizer)
    out = clf({"text": "the movie", "text_pair": "was good"})
    assert set(out) == {"label", "score"} and out["label"] in ("neg", "pos")


def test_token_classification_groups_entities_with_offsets(tokenizer):
    model = tiny(BertForTokenClassification, tokenizer, id2label={0: "O", 1: "B-X", 2: "I-X"})
    with torch.no_grad():  # force every token to B-X then I-X: words group into one entity
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
    tag = pipeline("token-classification", model=model, tokenizer=tokenizer)
    text = "the movie was good"
    entities = tag(text)
    assert all(text[e["start"]:e["end"]] == e["word"] for e in entities)
    assert entities and entities[0]["entity_group"] == "X"


@pytest.mark.parametrize("task, cls", [("fill-mask", BertForMaskedLM), ("text-classification", BertForSequenceClassification),
                                       ("token-classification", BertForTokenClassification)])
def test_pipelines_unpad_by_default_with_the_same_results(tokenizer, task, cls):
    model = tiny(cls, tokenizer, id2label={0: "O", 1: "B-X", 2: "I-X"})
    texts = [t.replace("movie", "[MASK]") for t in TEXTS[:5]] + ["the [MASK] ."]
    results = {}
    for unpad in (True, False):
        run = pipeline(task, model=model, tokenizer=tokenizer, batch_size=4, unpad=unpad)
        assert model.bert.attn_implementation == ("unpadded" if unpad else "sdpa")
        results[unpad] = list(_flatten(run(texts)))
    floats = [isinstance(v, float) for v in results[False]]
    assert [isinstance(v, float) for v in results[True]] == floats
    assert [v for v, f in zip(results[True], floats) if not f] == [v for v, f in zip(results[False], floats) if not f]
    assert [v for v, f in zip(results[True], floats) if f] == pytest.approx(
        [v for v, f in zip(results[False], floats) if f], abs=1e-5)


def _flatten(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _flatten(v)
    elif isinstance(value, list):
        for v in value:
            yield from _flatten(v)
    else:
        yield value


def test_bf16_on_a_cpu_without_native_bf16_warns_once_and_stays_close_to_fp32(tokenizer, monkeypatch, caplog):
    from lmforge.modeling import cpu_caps

    monkeypatch.setattr(cpu_caps, "_bf16_warned", False)
    model = tiny(BertForSequenceClassification, tokenizer, id2label={0: "neg", 1: "pos"})
    fp32 = pipeline("text-classification", model=model, tokenizer=tokenizer)(TEXTS[:6], top_k=None)
    with cpu_caps.forced(capability="avx2"), caplog.at_level(logging.WARNING, logger="lmforge"):
        for _ in range(2):
            bf16 = pipeline("text-classification", model=model, tokenizer=tokenizer, bf16=True)(TEXTS[:6], top_k=None)
    assert len([r for r in caplog.records if "slower than fp32" in r.getMessage()]) == 1
    for want, got in zip(fp32, bf16):
        assert got[0]["score"] == pytest.approx(want[0]["score"], abs=0.02)
