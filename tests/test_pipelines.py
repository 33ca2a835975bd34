"""Pipelines on tiny models built here: fill-mask, text-classification, token-classification."""

from __future__ import annotations

import logging

import pytest
import torch

from lmforge import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification
from lmforge.data.batches import length_sorted_batches
from lmforge.pipelines import pipeline
from lmforge.tokenizers import train_tokenizer

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


def constant_tagger(tokenizer, bias: list[float]):
    """A tagger whose logits are `bias` at every token (zero classifier weight): known tags and scores."""
    model = tiny(BertForTokenClassification, tokenizer, id2label={0: "O", 1: "B-X", 2: "I-X"})
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor(bias))
    return model


def test_token_classification_groups_entities_with_offsets(tokenizer):
    text = "the movie was good"
    score = torch.tensor([0.0, 1.0, 2.0]).softmax(-1)[2].item()  # 0.665
    # Every token I-X: the first word opens an X entity, the others continue it.
    tag = pipeline("token-classification", model=constant_tagger(tokenizer, [0.0, 1.0, 2.0]), tokenizer=tokenizer)
    [entity] = tag(text)
    assert entity == {"entity_group": "X", "score": pytest.approx(score, abs=1e-6), "word": text,
                      "start": 0, "end": len(text)}
    # Every token B-X: each word is an entity of its own, with its character offsets.
    tag = pipeline("token-classification", model=constant_tagger(tokenizer, [0.0, 2.0, 1.0]), tokenizer=tokenizer)
    entities = tag(text)
    assert [(e["word"], e["start"], e["end"]) for e in entities] == [
        ("the", 0, 3), ("movie", 4, 9), ("was", 10, 13), ("good", 14, 18)]
    assert all(e["entity_group"] == "X" and e["score"] == pytest.approx(score, abs=1e-6) for e in entities)
    # Every token O: no entity.
    tag = pipeline("token-classification", model=constant_tagger(tokenizer, [2.0, 1.0, 0.0]), tokenizer=tokenizer)
    assert tag(text) == []


def test_token_classification_equals_a_direct_model_computation(tokenizer):
    """Per-token tags, scores and offsets of a batched, padded pipeline call equal the model run on each
    text alone; the "simple" entities follow from those per-word tags."""
    model = tiny(BertForTokenClassification, tokenizer, id2label={0: "O", 1: "B-X", 2: "I-X"})
    texts = ["the movie was good and the actors were fine .", "bad", "the movie number 7 was bad"]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    real = enc["attention_mask"].bool() & (enc["input_ids"] != tokenizer.cls_token_id) & (
        enc["input_ids"] != tokenizer.sep_token_id)
    for seed in range(50):  # a classifier away from init whose tags include all three (the trained vocabulary,
        torch.manual_seed(seed)  # and with it the tags, may differ between runs)
        with torch.no_grad():
            model.classifier.weight.normal_(0, 1.0)
            tags = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.argmax(-1)
        if set(tags[real].tolist()) == {0, 1, 2}:
            break
    tag = pipeline("token-classification", model=model, tokenizer=tokenizer, batch_size=3)
    per_token = tag(texts, aggregation_strategy="none")
    grouped = tag(texts)
    id2label = model.config.id2label
    seen_tags = set()
    for text, tokens, entities in zip(texts, per_token, grouped):
        enc = tokenizer(text, return_offsets_mapping=True, return_tensors="pt")
        with torch.no_grad():
            probs = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[0].softmax(-1)
        expected = []
        for t, word in enumerate(enc.word_ids(0)):
            if word is None:
                continue
            start, end = enc["offset_mapping"][0][t].tolist()
            expected.append((t, id2label[int(probs[t].argmax())], start, end, word))
        assert [(x["index"], x["entity"], x["start"], x["end"]) for x in tokens] == [e[:4] for e in expected]
        for x in tokens:
            assert x["score"] == pytest.approx(float(probs[x["index"]].max()), abs=1e-5)
            assert x["word"] == text[x["start"]:x["end"]]
        seen_tags |= {x["entity"] for x in tokens}
        # Words take their first sub-token's tag; B-X opens an entity, I-X continues one (or opens one).
        words, last_word = [], None
        for t, label, start, end, word in expected:
            if word != last_word:
                words.append([label, start, end, [float(probs[t].max())]])
            else:
                words[-1][2] = end
                words[-1][3].append(float(probs[t].max()))
            last_word = word
        want, open_entity = [], False
        for label, start, end, scores in words:
            if label == "O":
                open_entity = False
            elif label == "I-X" and open_entity:
                want[-1][1] = end
                want[-1][2] += scores
            else:
                want.append([start, end, list(scores)])
                open_entity = True
        assert [(e["start"], e["end"], e["word"]) for e in entities] == [(s, e, text[s:e]) for s, e, _ in want]
        for entity, (_, _, scores) in zip(entities, want):
            assert entity["entity_group"] == "X"
            assert entity["score"] == pytest.approx(sum(scores) / len(scores), abs=1e-5)
    assert seen_tags == {"O", "B-X", "I-X"}  # the case exercises every tag


@pytest.mark.parametrize("task, cls", [("fill-mask", BertForMaskedLM), ("text-classification", BertForSequenceClassification),
                                       ("token-classification", BertForTokenClassification)])
def test_pipelines_unpad_by_default_with_the_same_results(tokenizer, task, cls):
    model = tiny(cls, tokenizer, id2label={0: "O", 1: "B-X", 2: "I-X"})
    texts = [t.replace("movie", "[MASK]") for t in TEXTS[:5]] + ["the [MASK] ."]
    results = {}
    for unpad in (True, False):
        run = pipeline(task, model=model, tokenizer=tokenizer, batch_size=4, unpad=unpad)
        assert run.model.bert.attn_implementation == ("unpadded" if unpad else "sdpa")
        results[unpad] = list(_flatten(run(texts)))
    floats = [isinstance(v, float) for v in results[False]]
    assert [isinstance(v, float) for v in results[True]] == floats
    assert [v for v, f in zip(results[True], floats) if not f] == [v for v, f in zip(results[False], floats) if not f]
    assert [v for v, f in zip(results[True], floats) if f] == pytest.approx(
        [v for v, f in zip(results[False], floats) if f], abs=1e-5)


def test_pipeline_leaves_the_callers_model_untouched(tokenizer):
    model = tiny(BertForSequenceClassification, tokenizer, id2label={0: "neg", 1: "pos"})
    model.train().set_attn_implementation("sdpa")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clf = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
    scores = clf.scores([("the movie was good .", None)])
    assert model.training and all(m.training for m in model.modules())
    assert model.bert.attn_implementation == "sdpa"
    assert model.device == torch.device("cpu")
    assert not clf.model.training and clf.model.bert.attn_implementation == "unpadded"
    # The pipeline's view shares the caller's tensors (no copy of the weights), and did not change them.
    assert clf.model.bert.embeddings.word_embeddings.weight is model.bert.embeddings.word_embeddings.weight
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        model.eval()
        batch = tokenizer(["the movie was good ."], return_tensors="pt")
        assert torch.allclose(scores, model(**batch).logits.softmax(-1), atol=1e-5)


def test_pipeline_refuses_to_move_the_callers_model(tokenizer):
    model = tiny(BertForSequenceClassification, tokenizer, id2label={0: "neg", 1: "pos"})
    with pytest.raises(ValueError, match="move the model first"):
        pipeline("text-classification", model=model, tokenizer=tokenizer, device="meta")
    assert model.device == torch.device("cpu")


def test_pipeline_inputs_are_the_tokenizers_model_input_names(tokenizer, monkeypatch):
    model = tiny(BertForSequenceClassification, tokenizer, id2label={0: "neg", 1: "pos"})
    clf = pipeline("text-classification", model=model, tokenizer=tokenizer)
    seen = []
    clf.model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(sorted(kwargs)), with_kwargs=True)
    monkeypatch.setattr(tokenizer, "model_input_names", ["input_ids", "attention_mask"])
    clf("the movie was good .")
    assert seen == [["attention_mask", "input_ids"]]


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
    from lmforge.cpu import capabilities as cpu_caps

    monkeypatch.setattr(cpu_caps, "_bf16_warned", False)
    model = tiny(BertForSequenceClassification, tokenizer, id2label={0: "neg", 1: "pos"})
    fp32 = pipeline("text-classification", model=model, tokenizer=tokenizer)(TEXTS[:6], top_k=None)
    with cpu_caps.forced(capability="avx2"), caplog.at_level(logging.WARNING, logger="lmforge"):
        for _ in range(2):
            bf16 = pipeline("text-classification", model=model, tokenizer=tokenizer, bf16=True)(TEXTS[:6], top_k=None)
    assert len([r for r in caplog.records if "slower than fp32" in r.getMessage()]) == 1
    for want, got in zip(fp32, bf16):
        assert got[0]["score"] == pytest.approx(want[0]["score"], abs=0.02)


@pytest.mark.parametrize("mode", ["cls", "mean", "max"])
def test_sentence_embedding_pools_as_the_folder_says(tokenizer, tmp_path, mode):
    import json

    from lmforge.models.bert import BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32)).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "1_Pooling").mkdir()
    flags = {"pooling_mode_cls_token": mode == "cls", "pooling_mode_mean_tokens": mode == "mean",
             "pooling_mode_max_tokens": mode == "max"}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(flags))
    (tmp_path / "modules.json").write_text(json.dumps([
        {"path": "", "type": "sentence_transformers.models.Transformer"},
        {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    texts = ["the movie was good", "bad", "the actors were fine and the movie number 3 was bad"]
    got = torch.tensor(pipeline("sentence-embedding", model=str(tmp_path))(texts))
    for text, vector in zip(texts, got):
        with torch.no_grad():
            hidden = model(**tokenizer([text], return_tensors="pt")).last_hidden_state[0]  # (T, H), no padding
        expected = {"cls": hidden[0], "mean": hidden.mean(0), "max": hidden.amax(0)}[mode]
        torch.testing.assert_close(vector, expected, atol=1e-5, rtol=0)
