"""BERT pretraining data: instances (NSP), the memory-mapped cache, masking and resumable batches."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from lmforge.data.batches import PretrainingBatches
from lmforge.data.collators import MaskingCollator
from lmforge.data.pretraining import cache
from lmforge.data.pretraining.cache import build_or_load_cache
from lmforge.data.pretraining.documents import tokenize_documents, word_start_table
from lmforge.data.pretraining.instances import create_instances
from lmforge.nn.heads import IGNORE_INDEX

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD, UNK, CLS, SEP, MASK = range(5)
N_DOCS = 12
WORDS = [f"doc{k}" for k in range(N_DOCS)] + ["play", "##ing", "##ed", "un", "##believ", "##able", "."]


@dataclass
class StandInTokenizer:
    """The duck-typed tokenizer contract of lmforge.data.pretraining."""

    backend: Tokenizer | None
    vocab_size: int
    pad_token_id: int = PAD
    unk_token_id: int = UNK
    cls_token_id: int = CLS
    sep_token_id: int = SEP
    mask_token_id: int = MASK
    all_special_ids: list[int] = field(default_factory=lambda: [PAD, UNK, CLS, SEP, MASK])


def wordpiece_tokenizer(words: list[str] = WORDS) -> StandInTokenizer:
    vocab = {token: i for i, token in enumerate(SPECIALS + words)}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return StandInTokenizer(backend=backend, vocab_size=len(vocab))


def doc_token(tokenizer: StandInTokenizer, k: int) -> int:
    return tokenizer.backend.token_to_id(f"doc{k}")


def marked_documents(n_docs: int = N_DOCS, sentences: int = 30, seed: int = 0) -> list[list[str]]:
    """Document k is made only of the word `dock`, so every token tells which document it came from."""
    rng = random.Random(seed)
    return [[" ".join([f"doc{k}"] * rng.randint(3, 8)) for _ in range(sentences)] for k in range(n_docs)]


def write_corpus(directory: Path, documents: list[list[str]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "corpus.txt"
    path.write_text("\n\n".join("\n".join(doc) for doc in documents) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Tokenization and instances


def test_word_starts_follow_wordpiece_continuation_prefix():
    tok = wordpiece_tokenizer()
    (doc,) = tokenize_documents([["Playing unbelievable.", "played"]], tok)
    pieces = [tok.backend.id_to_token(i) for i in doc.ids]
    assert pieces == ["play", "##ing", "un", "##believ", "##able", ".", "play", "##ed"]
    assert doc.word_starts.tolist() == [True, False, True, False, False, True, True, False]
    assert doc.sentence_lengths.tolist() == [6, 2]


def test_word_starts_for_byte_level_bpe_use_the_space_marker():
    backend = Tokenizer(models.BPE({"[PAD]": 0, "\u0120the": 1, "the": 2, "ing": 3}, []))
    assert word_start_table(backend).tolist() == [False, True, False, False]


def test_nsp_labels_are_balanced_and_random_b_comes_from_another_document():
    tok = wordpiece_tokenizer()
    instances = create_instances(
        marked_documents(), tok, max_seq_length=64, short_seq_prob=0.0, seed=1, dupe_factor=3
    )
    labels = np.array([x["next_sentence_label"] for x in instances])
    assert len(instances) > 150
    assert 0.4 < labels.mean() < 0.62  # 1 = NotNext; a lone last chunk always takes a random B
    for x in instances:
        ids, types = x["input_ids"], x["token_type_ids"]
        a, b = ids[types == 0][1:-1], ids[types == 1][:-1]  # strip [CLS]/[SEP]
        assert len(set(a.tolist())) == 1 and len(set(b.tolist())) == 1  # each side: one document
        assert (a[0] != b[0]) == bool(x["next_sentence_label"])


def test_nsp_instances_fit_and_have_correct_segments():
    tok = wordpiece_tokenizer()
    docs = [[" ".join([f"doc{k}"] * n) for n in (40, 3, 25, 9)] for k in range(4)]
    for max_len in (8, 20):
        for x in create_instances(docs, tok, max_seq_length=max_len, short_seq_prob=0.3, seed=3):
            ids, types = x["input_ids"].tolist(), x["token_type_ids"].tolist()
            assert len(ids) <= max_len and len(ids) == len(types) == len(x["word_starts"])
            assert ids[0] == CLS and ids[-1] == SEP and ids.count(SEP) == 2
            first_sep = ids.index(SEP)
            assert first_sep >= 2 and first_sep <= len(ids) - 3  # A and B are both non-empty
            assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)


def test_single_document_corpus_gives_only_is_next():
    tok = wordpiece_tokenizer()
    instances = create_instances([["doc0 doc0", "doc0", "doc0 doc0 doc0"]], tok, max_seq_length=16, seed=0)
    assert instances and all(x["next_sentence_label"] == 0 for x in instances)


def test_mlm_only_packs_contiguous_text_without_losing_tokens():
    tok = wordpiece_tokenizer()
    docs = [["doc1 " * 3, "doc2 " * 30, "doc3 " * 4], ["doc4 " * 2]]  # the 30-token sentence > one sequence
    instances = create_instances(docs, tok, max_seq_length=12, short_seq_prob=0.2, nsp=False, seed=0)
    inner = []
    for x in instances:
        ids = x["input_ids"].tolist()
        assert "next_sentence_label" not in x
        assert len(ids) <= 12 and ids[0] == CLS and ids[-1] == SEP and ids.count(SEP) == 1
        assert not x["token_type_ids"].any()
        inner += ids[1:-1]
    expected = [doc_token(tok, k) for k, n in ((1, 3), (2, 30), (3, 4), (4, 2)) for _ in range(n)]
    assert inner == expected


def test_instances_are_deterministic_for_a_seed():
    tok = wordpiece_tokenizer()
    docs = marked_documents(n_docs=4, sentences=10)
    first = create_instances(docs, tok, max_seq_length=32, seed=7)
    again = create_instances(docs, tok, max_seq_length=32, seed=7)
    other = create_instances(docs, tok, max_seq_length=32, seed=8)

    def same(xs: list[dict], ys: list[dict]) -> bool:
        return len(xs) == len(ys) and all(
            np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(xs, ys)
        )

    assert same(first, again) and not same(first, other)


# ---------------------------------------------------------------------------------------------
# Cache


def test_cache_matches_in_memory_instances_and_is_memory_mapped(tmp_path):
    tok = wordpiece_tokenizer()
    docs = marked_documents(n_docs=5, sentences=12)
    corpus = write_corpus(tmp_path / "corpus", docs)
    dataset = build_or_load_cache(corpus, tok, tmp_path / "cache", max_seq_length=32, seed=5)
    expected = create_instances(docs, tok, max_seq_length=32, seed=5)
    assert not dataset.cache_hit and dataset.nsp and len(dataset) == len(expected)
    assert isinstance(dataset.input_ids, np.memmap) and dataset.input_ids.dtype == np.int32
    for i, x in enumerate(expected):
        item = dataset[i]
        for key in ("input_ids", "token_type_ids", "word_starts"):
            np.testing.assert_array_equal(item[key], x[key])
        assert item["next_sentence_label"] == x["next_sentence_label"]
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp")]


def test_second_build_hits_the_cache_and_changed_settings_rebuild(tmp_path, monkeypatch):
    tok = wordpiece_tokenizer()
    corpus = write_corpus(tmp_path / "corpus", marked_documents(n_docs=3, sentences=8))
    first = build_or_load_cache(corpus, tok, tmp_path / "cache", max_seq_length=32)

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(cache, "tokenize_documents", no_tokenizing)
    second = build_or_load_cache(corpus, tok, tmp_path / "cache", max_seq_length=32)
    assert second.cache_hit and second.directory == first.directory
    np.testing.assert_array_equal(second.input_ids, first.input_ids)
    with pytest.raises(AssertionError, match="tokenized again"):
        build_or_load_cache(corpus, tok, tmp_path / "cache", max_seq_length=24)


def test_changed_corpus_file_rebuilds(tmp_path):
    tok = wordpiece_tokenizer()
    corpus = write_corpus(tmp_path / "corpus", marked_documents(n_docs=3, sentences=8))
    first = build_or_load_cache(corpus, tok, tmp_path / "cache", max_seq_length=32)
    write_corpus(tmp_path / "corpus", marked_documents(n_docs=4, sentences=8))
    second = build_or_load_cache(corpus, tok, tmp_path / "cache", max_seq_length=32)
    assert not second.cache_hit and second.directory != first.directory


def test_eval_split_holds_out_whole_documents(tmp_path):
    tok = wordpiece_tokenizer()
    corpus = write_corpus(tmp_path / "corpus", marked_documents(n_docs=8, sentences=10))
    kwargs = {"max_seq_length": 32, "eval_fraction": 0.25, "seed": 11}
    train = build_or_load_cache(corpus, tok, tmp_path / "cache", **kwargs)
    held = build_or_load_cache(corpus, tok, tmp_path / "cache", split="eval", **kwargs)
    assert held.cache_hit and len(held) > 0 and len(train) > len(held)
    specials = {PAD, UNK, CLS, SEP, MASK}
    eval_tokens = set(np.asarray(held.input_ids).tolist()) - specials
    train_tokens = set(np.asarray(train.input_ids).tolist()) - specials
    assert len(eval_tokens) == 2 and not eval_tokens & train_tokens  # 2 of 8 documents, disjoint


# ---------------------------------------------------------------------------------------------
# Masking


def toy_instances(n: int, lengths: tuple[int, int], seed: int = 0, vocab: int = 1000) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(*lengths))
        ids = rng.integers(5, vocab, size=length).astype(np.int32)
        ids[0], ids[-1] = CLS, SEP
        ids[length // 2] = SEP
        out.append({"input_ids": ids, "token_type_ids": np.zeros(length, np.int8)})
    return out


def test_masking_statistics_and_never_specials_or_padding():
    tok = StandInTokenizer(backend=None, vocab_size=1000)
    collator = MaskingCollator(tok, max_predictions_per_seq=1000)
    instances = toy_instances(48, (90, 130))
    batch = collator(instances, torch.Generator().manual_seed(0))
    original = torch.full_like(batch["input_ids"], PAD)
    for row, x in enumerate(instances):
        original[row, : len(x["input_ids"])] = torch.from_numpy(x["input_ids"].astype(np.int64))
    chosen = batch["labels"] != IGNORE_INDEX
    for row, x in enumerate(instances):
        assert int(chosen[row].sum()) == round(len(x["input_ids"]) * 0.15)
    assert torch.equal(batch["labels"][chosen], original[chosen])
    assert not chosen[original < 5].any()  # never [CLS]/[SEP]/[PAD] (or any special)
    assert torch.equal(batch["attention_mask"], (original != PAD).long())
    new = batch["input_ids"][chosen]
    n = len(new)
    masked = (new == MASK).float().mean()
    kept = (new == original[chosen]).float().mean()
    replaced = 1 - masked - kept
    assert n > 700
    assert abs(masked - 0.8) < 0.05 and abs(kept - 0.1) < 0.04 and abs(replaced - 0.1) < 0.04
    assert (new[new != MASK] >= 5).all()  # random replacements are never special tokens
    assert torch.equal(batch["input_ids"][~chosen], original[~chosen])


def test_electra_masking_puts_mask_at_every_chosen_position_with_the_same_choice():
    tok = StandInTokenizer(backend=None, vocab_size=1000)
    instances = toy_instances(16, (90, 130))
    bert = MaskingCollator(tok, max_predictions_per_seq=1000)(instances, 5)
    electra = MaskingCollator(tok, max_predictions_per_seq=1000, mask_replace_prob=1.0,
                              random_replace_prob=0.0)(instances, 5)
    chosen = electra["labels"] != IGNORE_INDEX
    assert torch.equal(electra["labels"], bert["labels"])  # the same positions from the same seed
    assert (electra["input_ids"][chosen] == MASK).all()
    assert torch.equal(electra["input_ids"][~chosen], bert["input_ids"][~chosen])
    with pytest.raises(ValueError, match="sum <= 1"):
        MaskingCollator(tok, mask_replace_prob=0.9, random_replace_prob=0.2)


def test_max_predictions_per_seq_is_respected():
    tok = StandInTokenizer(backend=None, vocab_size=1000)
    batch = MaskingCollator(tok, max_predictions_per_seq=7)(toy_instances(8, (100, 120)), 0)
    assert ((batch["labels"] != IGNORE_INDEX).sum(dim=1) == 7).all()


def test_whole_word_masking_masks_every_piece_of_a_word():
    tok = StandInTokenizer(backend=None, vocab_size=1000)
    rng = np.random.default_rng(1)
    instances = []
    for x in toy_instances(32, (60, 100), seed=1):
        starts = rng.random(len(x["input_ids"])) < 0.4  # words of 1..n pieces
        instances.append({**x, "word_starts": starts})
    collator = MaskingCollator(tok, max_predictions_per_seq=1000, whole_word_mask=True)
    chosen = (collator(instances, 3)["labels"] != IGNORE_INDEX).numpy()
    n_words = 0
    for row, x in enumerate(instances):
        ids, starts = x["input_ids"], x["word_starts"]
        word, words = [], []
        for pos in range(len(ids)):
            if ids[pos] < 5 or starts[pos] or not word:
                if word:
                    words.append(word)
                word = [] if ids[pos] < 5 else [pos]
            else:
                word.append(pos)
        if word:
            words.append(word)
        for w in words:
            flags = chosen[row, w]
            assert flags.all() or not flags.any()
            n_words += bool(flags.all()) and len(w) > 1
    assert n_words > 20  # multi-piece words were actually masked


def test_same_seed_gives_same_masks():
    tok = StandInTokenizer(backend=None, vocab_size=1000)
    collator = MaskingCollator(tok)
    instances = toy_instances(6, (30, 60))
    a = collator(instances, torch.Generator().manual_seed(42))
    b = collator(instances, torch.Generator().manual_seed(42))
    c = collator(instances, torch.Generator().manual_seed(43))
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["labels"], c["labels"])


def test_padding_dtypes_and_nsp_label_presence():
    tok = StandInTokenizer(backend=None, vocab_size=1000)
    instances = toy_instances(3, (5, 12))
    batch = MaskingCollator(tok, pad_to_multiple_of=8)(instances, 0)
    assert batch["input_ids"].shape[1] % 8 == 0 and "next_sentence_label" not in batch
    assert all(t.dtype == torch.int64 for t in batch.values())
    labelled = [{**x, "next_sentence_label": i % 2} for i, x in enumerate(instances)]
    assert MaskingCollator(tok)(labelled, 0)["next_sentence_label"].tolist() == [0, 1, 0]
    with pytest.raises(TypeError):
        MaskingCollator(tok)(instances, None)


# ---------------------------------------------------------------------------------------------
# Batches


class CountingCollator(MaskingCollator):
    calls = 0

    def __call__(self, instances, generator):
        CountingCollator.calls += 1
        return super().__call__(instances, generator)


def numbered_instances(n: int = 40) -> list[dict]:
    # instance i is recognisable by its second token (5 + i)
    return [{**x, "input_ids": np.concatenate([[CLS, 5 + i], x["input_ids"][1:]]).astype(np.int32),
             "token_type_ids": np.zeros(len(x["input_ids"]) + 1, np.int8), "next_sentence_label": i % 2}
            for i, x in enumerate(toy_instances(n, (10, 20)))]  # fmt: skip


def test_resumed_batches_equal_uninterrupted_ones():
    tok = StandInTokenizer(backend=None, vocab_size=1000)
    data = numbered_instances()

    def make() -> PretrainingBatches:
        return PretrainingBatches(data, CountingCollator(tok), batch_size=8, seed=3)

    straight = make()
    reference = [next(straight) for _ in range(9)]  # 5 batches per epoch: crosses into epoch 1
    interrupted = make()
    for _ in range(6):
        next(interrupted)
    state = interrupted.state_dict()
    assert state == {"epoch": 1, "index": 1, "batch_size": 8}
    resumed = make()
    CountingCollator.calls = 0
    resumed.load_state_dict(state)
    assert CountingCollator.calls == 0  # skipping ahead collates nothing
    for expected in reference[6:]:
        got = next(resumed)
        assert set(got) == set(expected)
        assert all(torch.equal(got[k], expected[k]) for k in got)


def test_epochs_are_reshuffled_permutations():
    tok = StandInTokenizer(backend=None, vocab_size=1000)
    source = PretrainingBatches(numbered_instances(), MaskingCollator(tok), batch_size=8, seed=0)
    epoch0 = np.concatenate([source.indices(0, i) for i in range(len(source))])
    epoch1 = np.concatenate([source.indices(1, i) for i in range(len(source))])
    assert sorted(epoch0.tolist()) == list(range(40)) and not np.array_equal(epoch0, epoch1)


def test_ranks_take_disjoint_slices_of_each_global_batch():
    tok = StandInTokenizer(backend=None, vocab_size=1000)
    data = numbered_instances()
    single = PretrainingBatches(data, MaskingCollator(tok), batch_size=8, seed=9)
    ranks = [
        PretrainingBatches(data, MaskingCollator(tok), batch_size=8, seed=9, rank=r, world_size=2)
        for r in (0, 1)
    ]
    for index in range(len(single)):
        parts = [r.indices(0, index) for r in ranks]
        assert not set(parts[0]) & set(parts[1])
        assert sorted(np.concatenate(parts).tolist()) == sorted(single.indices(0, index).tolist())
    batch = next(ranks[1])
    assert batch["input_ids"].shape[0] == 4
    assert sorted((batch["input_ids"][:, 1] - 5).tolist()) == sorted(ranks[1].indices(0, 0).tolist())


# ---------------------------------------------------------------------------------------------
# A real tokenizer


def test_real_wordpiece_tokenizer_word_starts(minilm_path):
    backend = Tokenizer.from_file(str(minilm_path / "tokenizer.json"))
    ids = {t: backend.token_to_id(t) for t in SPECIALS}
    tok = StandInTokenizer(
        backend=backend,
        vocab_size=backend.get_vocab_size(),
        pad_token_id=ids["[PAD]"],
        unk_token_id=ids["[UNK]"],
        cls_token_id=ids["[CLS]"],
        sep_token_id=ids["[SEP]"],
        mask_token_id=ids["[MASK]"],
        all_special_ids=sorted(ids.values()),
    )
    docs = [
        ["The tokenizer handles unbelievably long words.", "Second sentence here."],
        ["Another document."],
    ]
    instances = create_instances(docs, tok, max_seq_length=32, seed=0)
    assert instances
    for x in instances:
        pieces = [backend.id_to_token(int(i)) for i in x["input_ids"]]
        assert x["word_starts"].tolist() == [not p.startswith("##") for p in pieces]
    batch = MaskingCollator(tok, whole_word_mask=True)(instances, 0)
    assert batch["input_ids"].shape[0] == len(instances)
