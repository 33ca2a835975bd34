"""Tokenized documents: a corpus's documents as token ids per sentence (one fast batch call per chunk), and
the table of which token ids start a word (whole-word masking)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import tokenizers

from ...tokenizers.tokenizer import plain_backend


class TokenizerLike(Protocol):
    """The part of `lmforge.tokenizers.Tokenizer` this module uses."""

    backend: tokenizers.Tokenizer
    vocab_size: int
    pad_token_id: int
    cls_token_id: int
    sep_token_id: int
    mask_token_id: int
    unk_token_id: int
    all_special_ids: list[int]


@dataclass(frozen=True)
class TokenizedDocument:
    ids: np.ndarray  # int32 [n_tokens]: every sentence's tokens back to back
    word_starts: np.ndarray  # bool [n_tokens]: token begins a word (for whole-word masking)
    sentence_lengths: np.ndarray  # int64 [n_sentences]: all > 0 (sentences with no tokens dropped)


def word_start_table(backend: tokenizers.Tokenizer) -> np.ndarray:
    """bool [vocab]: does this token begin a word? Decided by the backend's model type.

    WordPiece (and BPE with a continuing-subword prefix): the token lacks the prefix (`##`).
    Byte-level BPE: the token carries the space marker `Ġ`. Unigram (SentencePiece): it carries `▁`.
    Anything else (e.g. WordLevel): every token is a word. The first token of every sentence is
    also marked as a word start by `tokenize_documents` (byte-level BPE has no `Ġ` there).
    """
    vocab = backend.get_vocab(with_added_tokens=True)
    kind = type(backend.model).__name__
    prefix = getattr(backend.model, "continuing_subword_prefix", None)
    if kind in ("WordPiece", "BPE") and prefix:

        def starts(token: str) -> bool:
            return not token.startswith(prefix)
    elif kind == "BPE":

        def starts(token: str) -> bool:
            return token.startswith("\u0120")  # Ġ
    elif kind == "Unigram":

        def starts(token: str) -> bool:
            return token.startswith("\u2581")  # ▁
    else:

        def starts(token: str) -> bool:
            return True

    table = np.ones(max(vocab.values(), default=-1) + 1, dtype=bool)
    for token, index in vocab.items():
        table[index] = starts(token)
    return table


def tokenize_documents(
    documents: Iterable[Sequence[str]], tokenizer: TokenizerLike, *, batch_sentences: int = 4096
) -> Iterator[TokenizedDocument]:
    """Tokenize documents lazily, encoding sentences `batch_sentences` at a time.

    Documents whose sentences all tokenize to nothing are skipped.
    """
    backend = plain_backend(tokenizer)
    table = word_start_table(backend)
    pending: list[Sequence[str]] = []
    pending_sentences = 0
    for document in documents:
        pending.append(document)
        pending_sentences += len(document)
        if pending_sentences >= batch_sentences:
            yield from _encode_documents(backend, table, pending)
            pending, pending_sentences = [], 0
    if pending:
        yield from _encode_documents(backend, table, pending)


def _encode_documents(
    backend: tokenizers.Tokenizer, table: np.ndarray, documents: list[Sequence[str]]
) -> Iterator[TokenizedDocument]:
    sentences = [s for document in documents for s in document]
    encodings = iter(backend.encode_batch(sentences, add_special_tokens=False))
    for document in documents:
        pieces = [np.asarray(next(encodings).ids, dtype=np.int32) for _ in document]
        pieces = [p for p in pieces if len(p)]
        if not pieces:
            continue
        ids = np.concatenate(pieces)
        lengths = np.array([len(p) for p in pieces], dtype=np.int64)
        # Ids beyond the table (should not happen) count as word starts.
        word_starts = np.ones(len(ids), dtype=bool)
        known = ids < len(table)
        word_starts[known] = table[ids[known]]
        word_starts[np.cumsum(lengths) - lengths] = True  # a sentence always starts a word
        yield TokenizedDocument(ids, word_starts, lengths)
