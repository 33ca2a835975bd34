"""Pretraining instances: documents cut into NSP sentence pairs (`[CLS] A [SEP] B [SEP]`) or packed
MLM-only sequences, as token ranges of the corpus's flat token array (see the package docstring)."""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .documents import TokenizedDocument, TokenizerLike, tokenize_documents

logger = logging.getLogger(__name__)


Instance = dict[str, Any]
Split = Literal["train", "eval"]


# ============================================================================================
# Tokenization


# ============================================================================================
# Instances


@dataclass(frozen=True)
class TokenStore:
    """A tokenized corpus as flat arrays (in memory or memory-mapped)."""

    tokens: np.ndarray  # int32 [n_tokens]
    word_starts: np.ndarray  # bool [n_tokens]
    sentence_offsets: np.ndarray  # int64 [n_sentences + 1]: token offset where each sentence starts
    doc_offsets: np.ndarray  # int64 [n_documents + 1]: sentence offset where each document starts

    @property
    def num_documents(self) -> int:
        return len(self.doc_offsets) - 1

    def sentence_spans(self, doc: int) -> list[tuple[int, int]]:
        first, last = int(self.doc_offsets[doc]), int(self.doc_offsets[doc + 1])
        offsets = self.sentence_offsets[first : last + 1].tolist()
        return list(itertools.pairwise(offsets))

    @classmethod
    def from_documents(cls, documents: Iterable[TokenizedDocument]) -> TokenStore:
        docs = list(documents)
        lengths = [d.sentence_lengths for d in docs]
        return cls(
            tokens=np.concatenate([d.ids for d in docs] or [np.zeros(0, np.int32)]),
            word_starts=np.concatenate([d.word_starts for d in docs] or [np.zeros(0, bool)]),
            sentence_offsets=np.concatenate([[0], np.cumsum(np.concatenate(lengths or [[]]))]).astype(
                np.int64
            ),
            doc_offsets=np.concatenate([[0], np.cumsum([len(x) for x in lengths])]).astype(np.int64),
        )


# (a_start, a_end, b_start, b_end, next_sentence_label): token ranges in TokenStore.tokens.
# Without NSP the B range is empty and the label is -1.
Span = tuple[int, int, int, int, int]


def check_settings(max_seq_length: int, short_seq_prob: float, dupe_factor: int) -> None:
    if max_seq_length < 5:  # [CLS] a [SEP] b [SEP]: NSP needs at least one token on each side
        raise ValueError(f"max_seq_length must be >= 5, got {max_seq_length}")
    if not 0.0 <= short_seq_prob <= 1.0:
        raise ValueError(f"short_seq_prob must be in [0, 1], got {short_seq_prob}")
    if dupe_factor < 1:
        raise ValueError(f"dupe_factor must be >= 1, got {dupe_factor}")


def instance_spans(
    store: TokenStore,
    doc_ids: Sequence[int],
    rng: random.Random,
    *,
    max_seq_length: int,
    short_seq_prob: float,
    nsp: bool,
    dupe_factor: int,
) -> Iterator[Span]:
    """All instances of the documents `doc_ids` (random B segments are drawn from these too)."""
    for _ in range(dupe_factor):  # Google's dupe_factor: the same text cut differently
        for position in range(len(doc_ids)):
            if nsp:
                yield from _nsp_spans(store, doc_ids, position, rng, max_seq_length, short_seq_prob)
            else:
                yield from _packed_spans(store, doc_ids[position], rng, max_seq_length, short_seq_prob)


def _target_length(rng: random.Random, max_tokens: int, short_seq_prob: float) -> int:
    # Mostly fill the sequence; sometimes (short_seq_prob) aim shorter so the model also sees short
    # inputs, as it will when fine-tuned. Google draws this once per document; we draw it per
    # instance, which is what the flag's description intends.
    if rng.random() < short_seq_prob:
        return rng.randint(2, max_tokens)
    return max_tokens


def _nsp_spans(
    store: TokenStore,
    doc_ids: Sequence[int],
    position: int,
    rng: random.Random,
    max_seq_length: int,
    short_seq_prob: float,
) -> Iterator[Span]:
    max_tokens = max_seq_length - 3  # room for [CLS] A [SEP] B [SEP]
    sentences = store.sentence_spans(doc_ids[position])
    target = _target_length(rng, max_tokens, short_seq_prob)
    chunk_first, chunk_length = 0, 0  # the chunk is sentences[chunk_first : i + 1]
    i = 0
    while i < len(sentences):
        chunk_length += sentences[i][1] - sentences[i][0]
        if i == len(sentences) - 1 or chunk_length >= target:
            n_chunk = i - chunk_first + 1
            a_stop = chunk_first + (rng.randint(1, n_chunk - 1) if n_chunk >= 2 else 1)  # exclusive
            a = (sentences[chunk_first][0], sentences[a_stop - 1][1])
            span: tuple[int, int, int, int] | None
            if len(doc_ids) > 1 and (n_chunk == 1 or rng.random() < 0.5):
                b = _random_b(store, doc_ids, position, rng, target - (a[1] - a[0]))
                span, label = (*a, *b), 1
                # The sentences after A were not used: put them back for the next instance.
                i = a_stop - 1
            elif n_chunk >= 2:
                span, label = (*a, sentences[a_stop][0], sentences[i][1]), 0
            else:
                # A lone sentence and no other document to draw B from: cut the sentence in two.
                start, stop = sentences[i]
                span, label = None, 0
                if stop - start >= 2:
                    cut = rng.randint(start + 1, stop - 1)
                    span = (start, cut, cut, stop)
            if span is not None:
                yield (*_truncate_pair(*span, max_tokens, rng), label)
            chunk_first, chunk_length = i + 1, 0
            target = _target_length(rng, max_tokens, short_seq_prob)
        i += 1


def _random_b(
    store: TokenStore, doc_ids: Sequence[int], position: int, rng: random.Random, target: int
) -> tuple[int, int]:
    """Contiguous sentences of another document, from a random sentence on, up to `target` tokens."""
    other = rng.randint(0, len(doc_ids) - 2)
    other += other >= position  # uniform over every document except the current one
    doc = doc_ids[other]
    lo, hi = int(store.doc_offsets[doc]), int(store.doc_offsets[doc + 1])  # its sentences
    first = rng.randint(lo, hi - 1)
    start = int(store.sentence_offsets[first])
    # Token ends of the sentences from `first` on; take sentences until the first end that reaches
    # the target (a binary search, so long documents cost nothing extra).
    ends = store.sentence_offsets[first + 1 : hi + 1]
    last = min(int(np.searchsorted(ends, start + target)), len(ends) - 1)
    return start, int(ends[last])


def _truncate_pair(
    a_start: int, a_stop: int, b_start: int, b_stop: int, max_tokens: int, rng: random.Random
) -> tuple[int, int, int, int]:
    """Drop tokens from the longer side, at its front or back at random, until the pair fits.

    Random ends (Google's choice) avoid a bias towards always seeing sentence beginnings.
    """
    while (a_stop - a_start) + (b_stop - b_start) > max_tokens:
        if a_stop - a_start > b_stop - b_start:
            if rng.random() < 0.5:
                a_start += 1
            else:
                a_stop -= 1
        elif rng.random() < 0.5:
            b_start += 1
        else:
            b_stop -= 1
    return a_start, a_stop, b_start, b_stop


def _packed_spans(
    store: TokenStore, doc: int, rng: random.Random, max_seq_length: int, short_seq_prob: float
) -> Iterator[Span]:
    """MLM only: pack whole contiguous sentences up to the target length.

    A sentence longer than a whole sequence is cut into pieces rather than truncated, so no text
    is lost. Instances never cross documents.
    """
    max_tokens = max_seq_length - 2  # [CLS] A [SEP]
    target = _target_length(rng, max_tokens, short_seq_prob)
    chunk_start, chunk_length = 0, 0
    for start, stop in store.sentence_spans(doc):
        for piece_start in range(start, stop, max_tokens):
            piece_length = min(stop, piece_start + max_tokens) - piece_start
            if chunk_length and chunk_length + piece_length > target:
                yield chunk_start, chunk_start + chunk_length, 0, 0, -1
                chunk_length = 0
                target = _target_length(rng, max_tokens, short_seq_prob)
            if not chunk_length:
                chunk_start = piece_start
            chunk_length += piece_length  # pieces are contiguous, so the chunk stays one range
            if chunk_length >= target:
                yield chunk_start, chunk_start + chunk_length, 0, 0, -1
                chunk_length = 0
                target = _target_length(rng, max_tokens, short_seq_prob)
    if chunk_length:
        yield chunk_start, chunk_start + chunk_length, 0, 0, -1


def assemble(store: TokenStore, span: Span, cls_id: int, sep_id: int) -> Instance:
    """Token ids with [CLS]/[SEP], segment ids and word-start flags for one span."""
    a_start, a_stop, b_start, b_stop, label = span
    cls = np.array([cls_id], dtype=np.int32)
    sep = np.array([sep_id], dtype=np.int32)
    special = np.ones(1, dtype=bool)
    ids_parts = [cls, store.tokens[a_start:a_stop], sep]
    start_parts = [special, store.word_starts[a_start:a_stop], special]
    if label >= 0:
        ids_parts += [store.tokens[b_start:b_stop], sep]
        start_parts += [store.word_starts[b_start:b_stop], special]
    input_ids = np.concatenate(ids_parts).astype(np.int32, copy=False)  # int32 [L]
    token_type_ids = np.zeros(len(input_ids), dtype=np.int8)  # int8 [L]: 0 = A, 1 = B
    token_type_ids[a_stop - a_start + 2 :] = 1  # B and its closing [SEP] (empty range without NSP)
    instance: Instance = {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "word_starts": np.concatenate(start_parts),  # bool [L]
    }
    if label >= 0:
        instance["next_sentence_label"] = label
    return instance


def create_instances(
    documents: Iterable[Sequence[str]],
    tokenizer: TokenizerLike,
    max_seq_length: int = 128,
    short_seq_prob: float = 0.1,
    nsp: bool = True,
    seed: int = 12345,
    dupe_factor: int = 1,
) -> list[Instance]:
    """Build all instances of an in-memory corpus (for small data and tests).

    For real corpora use `build_or_load_cache`, which streams and stores the same instances.
    """
    check_settings(max_seq_length, short_seq_prob, dupe_factor)
    store = TokenStore.from_documents(tokenize_documents(documents, tokenizer))
    spans = instance_spans(
        store,
        range(store.num_documents),
        random.Random(seed),
        max_seq_length=max_seq_length,
        short_seq_prob=short_seq_prob,
        nsp=nsp,
        dupe_factor=dupe_factor,
    )
    return [assemble(store, span, tokenizer.cls_token_id, tokenizer.sep_token_id) for span in spans]


# ============================================================================================
# Memory-mapped cache


# ============================================================================================
# Masking


# ============================================================================================
# Batches




