"""What makes a short pretraining transfer (issue 12): mean pooling for sequence classification
(`classifier_pooling`, `finetune --pooling`), frozen embeddings while fine-tuning (`--freeze-embeddings`),
and PPMI-SVD word vectors as the start of pretraining (`training.word_vectors`, `pretrain --word-init`)."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import torch
from test_finetune import make_checkpoint, options, sentiment_rows, write_csv
from test_pretrain_recipe import TINY

from lmforge.cli import main
from lmforge.models.bert import BertConfig, BertForSequenceClassification
from lmforge.models.config import ConfigError
from lmforge.recipes.finetune import FinetuneOptions, build_model, run
from lmforge.recipes.pretrain import PretrainOptions
from lmforge.training.word_vectors import ppmi_svd_vectors


@pytest.fixture(autouse=True)
def _quiet_loading():
    logging.getLogger("lmforge").setLevel(logging.ERROR)
    yield


def tiny_config(**changes) -> BertConfig:
    fields = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                  max_position_embeddings=32, num_labels=3)
    fields.update(changes)
    return BertConfig(**fields)


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Weights moved off their init (zero biases and unit LayerNorms would hide bugs)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def padded_batch(T: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 50, (3, T), generator=g)
    attention_mask = torch.zeros(3, T, dtype=torch.long)
    for b, length in enumerate([T, 6, 2]):
        attention_mask[b, :length] = 1
    return dict(input_ids=input_ids.masked_fill(attention_mask == 0, 0), attention_mask=attention_mask)


# ------------------------------------------------------------------------------------------- mean pooling
@pytest.mark.parametrize("attn", ["unpadded", "sdpa"])
def test_mean_pooling_classifies_the_mean_over_real_tokens(attn):
    torch.manual_seed(0)
    model = perturbed(BertForSequenceClassification(tiny_config(classifier_pooling="mean")))
    model.set_attn_implementation(attn)
    batch = padded_batch()
    with torch.no_grad():
        logits = model(**batch).logits
        hidden = model.bert(**batch).last_hidden_state  # (B, T, C)
    mask = batch["attention_mask"]
    expected = torch.stack([hidden[b, mask[b] == 1].mean(dim=0) for b in range(3)])  # (B, C)
    torch.testing.assert_close(logits, model.classifier(expected), atol=1e-5, rtol=0)
    # more padding changes nothing
    wider = {k: torch.nn.functional.pad(v, (0, 5)) for k, v in batch.items()}
    with torch.no_grad():
        torch.testing.assert_close(model(**wider).logits, logits, atol=1e-5, rtol=0)


def test_cls_pooling_is_the_default_and_differs_from_mean():
    torch.manual_seed(0)
    cls = perturbed(BertForSequenceClassification(tiny_config()))
    mean = BertForSequenceClassification(tiny_config(classifier_pooling="mean")).eval()
    mean.load_state_dict(cls.state_dict())
    batch = padded_batch()
    with torch.no_grad():
        pooled = cls.bert(**batch).pooler_output
        torch.testing.assert_close(cls(**batch).logits, cls.classifier(pooled), atol=1e-6, rtol=0)
        assert not torch.allclose(mean(**batch).logits, cls(**batch).logits, atol=1e-3)
    assert "classifier_pooling" not in tiny_config().to_dict()
    with pytest.raises(ConfigError, match="classifier_pooling"):
        tiny_config(classifier_pooling="max")


def test_mean_pooling_is_saved_and_transformers_reads_cls_instead(tmp_path):
    torch.manual_seed(0)
    model = perturbed(BertForSequenceClassification(tiny_config(classifier_pooling="mean")))
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["classifier_pooling"] == "mean"
    batch = padded_batch()
    reloaded = BertForSequenceClassification.from_pretrained(tmp_path)
    assert reloaded.config.classifier_pooling == "mean"
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, atol=1e-6, rtol=0)
        cls = BertForSequenceClassification(tiny_config()).eval()
        cls.load_state_dict(model.state_dict())
        ours_cls = cls(**batch).logits
    transformers = pytest.importorskip("transformers")
    theirs = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        # transformers keeps the key but its BERT head always reads the pooled [CLS]
        torch.testing.assert_close(theirs(**batch).logits, ours_cls, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------- finetune options
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def sentiment_csv(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("data") / "reviews.csv", sentiment_rows())


def test_finetune_pooling_is_stored_in_the_fine_tuned_model(ckpt, sentiment_csv, tmp_path):
    from lmforge.data.labels import LabelMap

    labels = LabelMap(["negative", "positive"])
    assert build_model(options(ckpt, sentiment_csv, tmp_path), labels).config.classifier_pooling is None
    results = run(options(ckpt, sentiment_csv, tmp_path / "out", max_steps=2, pooling="mean"))
    best = json.loads((tmp_path / "out" / "best" / "config.json").read_text())
    assert best["classifier_pooling"] == "mean"
    # fine-tuning the fine-tuned model again keeps its pooling unless told otherwise
    again = build_model(options(results["best_dir"], sentiment_csv, tmp_path), labels)
    assert again.config.classifier_pooling == "mean"
    assert build_model(options(results["best_dir"], sentiment_csv, tmp_path, pooling="cls"),
                       labels).config.classifier_pooling == "cls"
    with pytest.raises(ValueError, match="token_classification"):
        FinetuneOptions(task="token_classification", pooling="mean")
    from lmforge.models.electra import ElectraConfig, ElectraForMaskedLM

    electra = tmp_path / "electra"
    ElectraForMaskedLM(ElectraConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32)).save_pretrained(electra)
    with pytest.raises(ValueError, match="'electra' family has no pooling choice"):
        build_model(options(electra, sentiment_csv, tmp_path, pooling="mean"), labels)
    with pytest.raises(ValueError, match="pooling"):
        FinetuneOptions(pooling="max")


def test_freeze_embeddings_keeps_them_and_trains_the_rest(ckpt, sentiment_csv, tmp_path):
    from safetensors.torch import load_file

    run(options(ckpt, sentiment_csv, tmp_path / "out", max_steps=3, eval_every=3, freeze_embeddings=True))
    before, after = load_file(ckpt / "model.safetensors"), load_file(tmp_path / "out" / "best" / "model.safetensors")
    embeddings = [k for k in after if k.startswith("bert.embeddings.")]
    assert len(embeddings) == 5  # word, position, token type, LayerNorm weight and bias
    assert all(torch.equal(after[k], before[k]) for k in embeddings)
    assert not torch.equal(after["bert.encoder.layer.0.attention.self.query.weight"],
                           before["bert.encoder.layer.0.attention.self.query.weight"])


# ------------------------------------------------------------------------------------------ word vectors
def synonym_corpus(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sequences in which words 10-14 occur among contexts 30-39 and words 20-24 among contexts 40-49."""
    rng = random.Random(seed)
    sequences = []
    for _ in range(400):
        group = rng.randrange(2)
        words, contexts = (range(10, 15), range(30, 40)) if group == 0 else (range(20, 25), range(40, 50))
        sequences.append([1] + [rng.choice(words) if i % 3 == 0 else rng.choice(contexts) for i in range(12)] + [2])
    offsets = np.cumsum([0] + [len(s) for s in sequences])
    return np.concatenate([np.asarray(s) for s in sequences]), offsets


def test_ppmi_svd_vectors_put_words_used_alike_together():
    ids, offsets = synonym_corpus()
    vectors = ppmi_svd_vectors(ids, offsets, vocab_size=60, dim=4, window=3, contexts=30, ignore=[1, 2], std=0.02)
    assert vectors.shape == (60, 4) and vectors.dtype == torch.float32
    unit = torch.nn.functional.normalize(vectors[[10, 11, 12, 20, 21, 22]], dim=-1)
    cos = unit @ unit.T  # (6, 6)
    same = torch.cat([cos[:3, :3][~torch.eye(3, dtype=torch.bool)], cos[3:, 3:][~torch.eye(3, dtype=torch.bool)]])
    assert same.min() > 0.9 and cos[:3, 3:].max() < 0.1
    seen = vectors.abs().sum(dim=-1) > 0
    assert not seen[[0, 1, 2, 5, 55]].any()  # special tokens and unseen ids stay zero
    assert vectors[seen].std().item() == pytest.approx(0.02, rel=1e-4)
    again = ppmi_svd_vectors(ids, offsets, vocab_size=60, dim=4, window=3, contexts=30, ignore=[1, 2], std=0.02)
    assert torch.equal(vectors, again)


def test_ppmi_svd_vectors_check_their_input():
    ids, offsets = synonym_corpus()
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 40\)"):
        ppmi_svd_vectors(ids, offsets, vocab_size=40, dim=4)
    with pytest.raises(ValueError, match="fewer than dim=64"):
        ppmi_svd_vectors(ids, offsets, vocab_size=60, dim=64)


def sentiment_corpus(tmp_path, monkeypatch):
    """A corpus in which "great" / "superb" / "lovely" share contexts, and "awful" / "dreadful" / "dull" others."""
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    rng = random.Random(0)
    good, bad = ["great", "superb", "lovely"], ["awful", "dreadful", "dull"]
    # 20 context words that come with the good words, 20 others with the bad ones (dim 32 needs >= 32 tokens)
    cheer, gloom = [f"w{i}" for i in range(20)], [f"z{i}" for i in range(20)]
    docs = []
    for _ in range(40):
        lines = []
        for _ in range(8):
            words, contexts = (good, cheer) if rng.random() < 0.5 else (bad, gloom)
            lines.append(" ".join(rng.choice(words) if i % 3 == 0 else rng.choice(contexts) for i in range(9)) + " .")
        docs.append("\n".join(lines))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return corpus


def test_pretrain_word_init_starts_from_the_word_vectors(tmp_path, monkeypatch):
    from lmforge.data.pretraining.cache import PretrainingDataset
    from lmforge.models.bert import BertForMaskedLM
    from lmforge.tokenizers import AutoTokenizer

    corpus = sentiment_corpus(tmp_path, monkeypatch)
    out = tmp_path / "run"
    # lr ~0: the exported embeddings are the initial ones
    assert main(["pretrain", "--corpus", str(corpus), "-o", str(out), "--objective", "mlm", "--max-steps", "1",
                 "--learning-rate", "1e-12", "--word-init", "ppmi-svd", *TINY]) == 0
    assert json.loads((out / "options.json").read_text())["word_init"] == "ppmi-svd"
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    table = BertForMaskedLM.from_pretrained(out / "final").bert.embeddings.word_embeddings.weight.detach()
    train = PretrainingDataset(next((tmp_path / "cache" / "pretraining").glob("*/train")))
    vectors = ppmi_svd_vectors(train.input_ids, train.offsets, table.shape[0], table.shape[1],
                               ignore=tokenizer.all_special_ids)
    seen = vectors.abs().sum(dim=-1) > 0
    torch.testing.assert_close(table[seen], vectors[seen], atol=1e-6, rtol=0)
    great, superb, awful = (tokenizer.convert_tokens_to_ids(w) for w in ("great", "superb", "awful"))
    cos = torch.nn.functional.cosine_similarity
    assert cos(table[great], table[superb], dim=0) > cos(table[great], table[awful], dim=0) + 0.5


def test_word_init_needs_a_masked_lm_objective():
    with pytest.raises(ValueError, match="--word-init ppmi-svd applies to --objective mlm"):
        PretrainOptions(objective="electra", word_init="ppmi-svd")
    with pytest.raises(ValueError, match="word_init"):
        PretrainOptions(objective="mlm", word_init="glove")


def test_frozen_word_embeddings_stay_at_the_word_vectors_while_the_layers_train(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    corpus = sentiment_corpus(tmp_path, monkeypatch)
    args = ["pretrain", "--corpus", str(corpus), "--objective", "mlm", "--max-steps", "3", "--learning-rate", "1e-2",
            "--word-init", "ppmi-svd", "--warmup-ratio", "0", *TINY]
    assert main([*args, "-o", str(tmp_path / "start"), "--max-steps", "1", "--learning-rate", "1e-12"]) == 0
    assert main([*args, "-o", str(tmp_path / "frozen"), "--freeze-word-embeddings"]) == 0
    start, frozen = (load_file(tmp_path / name / "final" / "model.safetensors") for name in ("start", "frozen"))
    words, query = "bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(frozen[words], start[words], atol=1e-6, rtol=0)
    assert (frozen[query] - start[query]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="--freeze-word-embeddings applies to --objective mlm"):
        PretrainOptions(objective="clm", freeze_word_embeddings=True)
