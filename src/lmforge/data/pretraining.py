"""BERT pretraining data: instances (NSP sentence pairs), a memory-mapped cache, dynamic masking.

The recipe follows Google BERT's `create_pretraining_data.py`, with masking moved out of the
static data and into the collator (RoBERTa's "dynamic masking"), so every epoch sees new masks:

1. `tokenize_documents` turns documents (lists of sentences, from `lmforge.data.corpus`) into token
   ids, batch-encoded with the fast `tokenizers` backend, plus a word-start flag per token.
2. `create_instances` (in memory) / `build_or_load_cache` (on disk) cut each document into
   instances. With NSP: `[CLS] A [SEP] B [SEP]`, B being the true continuation or (50%) a random
   span of another document. Without NSP (MLM only): contiguous sentences packed as `[CLS] A [SEP]`.
3. `MaskingCollator` pads a list of instances and masks 15% of tokens (80% [MASK] / 10% random /
   10% unchanged), optionally whole words, from an explicitly passed `torch.Generator`.
4. `PretrainingBatches` is the resumable, shardable, infinite batch source for the training loop.

An *instance* is a dict of numpy arrays of one sequence length L:
`input_ids` int32 [L], `token_type_ids` int8 [L], `word_starts` bool [L] and, with NSP,
`next_sentence_label` int (0 = IsNext, 1 = NotNext, as in Hugging Face).

Internally an instance is first a *span*: token ranges of A and B in the flat token array of the
corpus. Sentences of a document are stored back to back, so "some contiguous sentences", "truncate
from the front" and "put the unused sentences back" are just integer range edits, no token copies.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import random
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import tokenizers
import torch

from .corpus import CorpusError, PathLike, TxtFormat, read_documents, resolve_corpus_files

logger = logging.getLogger(__name__)

# Bump whenever the cache layout or the instance recipe changes: old caches then stop matching.
CACHE_FORMAT_VERSION = 1
IGNORE_INDEX = -100  # label of positions that are not predicted (PyTorch cross-entropy default)

Instance = dict[str, Any]
Split = Literal["train", "eval"]


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


# ============================================================================================
# Tokenization


@dataclass(frozen=True)
class TokenizedDocument:
    ids: np.ndarray  # int32 [n_tokens]: every sentence's tokens back to back
    word_starts: np.ndarray  # bool [n_tokens]: token begins a word (for whole-word masking)
    sentence_lengths: np.ndarray  # int64 [n_sentences]: all > 0 (sentences with no tokens dropped)


def plain_backend(tokenizer: TokenizerLike) -> tokenizers.Tokenizer:
    """A copy of the backend with padding and truncation off.

    The wrapper may have configured them for model inputs; here they would pad or cut sentences.
    A copy, because the backend object is shared with the caller.
    """
    backend = tokenizers.Tokenizer.from_str(tokenizer.backend.to_str())
    backend.no_padding()
    backend.no_truncation()
    return backend


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


# ============================================================================================
# Instances


@dataclass(frozen=True)
class _TokenStore:
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
    def from_documents(cls, documents: Iterable[TokenizedDocument]) -> _TokenStore:
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


# (a_start, a_end, b_start, b_end, next_sentence_label): token ranges in _TokenStore.tokens.
# Without NSP the B range is empty and the label is -1.
_Span = tuple[int, int, int, int, int]


def _check_settings(max_seq_length: int, short_seq_prob: float, dupe_factor: int) -> None:
    if max_seq_length < 5:  # [CLS] a [SEP] b [SEP]: NSP needs at least one token on each side
        raise ValueError(f"max_seq_length must be >= 5, got {max_seq_length}")
    if not 0.0 <= short_seq_prob <= 1.0:
        raise ValueError(f"short_seq_prob must be in [0, 1], got {short_seq_prob}")
    if dupe_factor < 1:
        raise ValueError(f"dupe_factor must be >= 1, got {dupe_factor}")


def _instance_spans(
    store: _TokenStore,
    doc_ids: Sequence[int],
    rng: random.Random,
    *,
    max_seq_length: int,
    short_seq_prob: float,
    nsp: bool,
    dupe_factor: int,
) -> Iterator[_Span]:
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
    store: _TokenStore,
    doc_ids: Sequence[int],
    position: int,
    rng: random.Random,
    max_seq_length: int,
    short_seq_prob: float,
) -> Iterator[_Span]:
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
    store: _TokenStore, doc_ids: Sequence[int], position: int, rng: random.Random, target: int
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
    store: _TokenStore, doc: int, rng: random.Random, max_seq_length: int, short_seq_prob: float
) -> Iterator[_Span]:
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


def _assemble(store: _TokenStore, span: _Span, cls_id: int, sep_id: int) -> Instance:
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
    _check_settings(max_seq_length, short_seq_prob, dupe_factor)
    store = _TokenStore.from_documents(tokenize_documents(documents, tokenizer))
    spans = _instance_spans(
        store,
        range(store.num_documents),
        random.Random(seed),
        max_seq_length=max_seq_length,
        short_seq_prob=short_seq_prob,
        nsp=nsp,
        dupe_factor=dupe_factor,
    )
    return [_assemble(store, span, tokenizer.cls_token_id, tokenizer.sep_token_id) for span in spans]


# ============================================================================================
# Memory-mapped cache


class _NpyWriter:
    """Append 1-D chunks to a raw file; `close()` turns it into a `.npy` (header + data).

    The final length is unknown while streaming, and a `.npy` header holds the shape, so the data
    goes to a raw file first and is copied behind the header at the end (one sequential copy).
    """

    _FLUSH_ITEMS = 1 << 20

    def __init__(self, path: Path, dtype: np.dtype | type) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self._raw_path = path.with_suffix(".raw")
        self._raw_path.write_bytes(b"")
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self.count = 0

    def append(self, values: np.ndarray | Sequence[int]) -> None:
        array = np.asarray(values, dtype=self.dtype)
        self._buffer.append(array)
        self._buffered += array.size
        if self._buffered >= self._FLUSH_ITEMS:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            data = np.concatenate(self._buffer)
            with open(self._raw_path, "ab") as raw:  # reopened per flush: no handle to leak on errors
                data.tofile(raw)
            self.count += data.size
            self._buffer, self._buffered = [], 0

    def close(self) -> Path:
        self._flush()
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.count,),
        }
        with open(self.path, "wb") as out, open(self._raw_path, "rb") as raw:
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(raw, out, 1 << 22)
        self._raw_path.unlink()
        return self.path


def _load(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


class PretrainingDataset:
    """One split of a pretraining cache; items are instance dicts (see the module docstring).

    Arrays are memory-mapped read-only, so opening a cache costs nothing and forked DataLoader
    workers share the pages.
    """

    def __init__(self, directory: PathLike, meta: Mapping[str, Any] | None = None, cache_hit: bool = False):
        self.directory = Path(directory)
        self.meta: dict[str, Any] = dict(meta or {})
        self.cache_hit = cache_hit  # True when built by an earlier call (no tokenization happened)
        self.input_ids = _load(self.directory / "input_ids.npy")  # int32 [n_tokens], all instances
        self.token_type_ids = _load(self.directory / "token_type_ids.npy")  # int8 [n_tokens]
        self.word_starts = _load(self.directory / "word_starts.npy")  # bool [n_tokens]
        self.offsets = _load(self.directory / "offsets.npy")  # int64 [n_instances + 1]
        nsp_path = self.directory / "next_sentence_label.npy"
        # int8 [n_instances]; absent for an MLM-only cache
        self.next_sentence_label = _load(nsp_path) if nsp_path.exists() else None

    @property
    def nsp(self) -> bool:
        return self.next_sentence_label is not None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> Instance:
        if not -len(self) <= index < len(self):
            raise IndexError(f"instance {index} out of range for {len(self)} instances")
        index %= len(self)
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        instance: Instance = {
            "input_ids": np.asarray(self.input_ids[start:stop]),
            "token_type_ids": np.asarray(self.token_type_ids[start:stop]),
            "word_starts": np.asarray(self.word_starts[start:stop]),
        }
        if self.next_sentence_label is not None:
            instance["next_sentence_label"] = int(self.next_sentence_label[index])
        return instance

    def __repr__(self) -> str:
        return f"PretrainingDataset({str(self.directory)!r}, instances={len(self)}, nsp={self.nsp})"


def tokenizer_fingerprint(tokenizer: TokenizerLike) -> str:
    """sha256 of everything that decides token ids: vocab, normaliser, pre-tokeniser, model, specials."""
    digest = hashlib.sha256(plain_backend(tokenizer).to_str().encode("utf-8"))
    digest.update(json.dumps([tokenizer.cls_token_id, tokenizer.sep_token_id]).encode())
    return digest.hexdigest()


def cache_key(files: Sequence[Path], tokenizer: TokenizerLike, settings: Mapping[str, Any]) -> str:
    """Hash of corpus files (path, size, mtime), tokenizer, instance settings and format version."""
    file_ids = []
    for file in files:
        stat = file.stat()
        file_ids.append([str(file), stat.st_size, stat.st_mtime_ns])
    payload = {
        "format_version": CACHE_FORMAT_VERSION,
        "files": file_ids,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "settings": dict(settings),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:24]


def build_or_load_cache(
    corpus_paths: PathLike | Iterable[PathLike],
    tokenizer: TokenizerLike,
    cache_dir: PathLike,
    *,
    max_seq_length: int = 128,
    short_seq_prob: float = 0.1,
    nsp: bool = True,
    dupe_factor: int = 1,
    eval_fraction: float = 0.0,
    seed: int = 12345,
    txt_format: TxtFormat = "bert",
    text_field: str = "text",
    strict: bool = True,
    split: Split = "train",
) -> PretrainingDataset:
    """Return the `split` ("train" or "eval") of the cache for these inputs, building it if needed.

    Both splits are built together under `cache_dir/<key>/`; asking for the other split later hits
    the cache. `eval_fraction` of the *documents* (chosen by `seed`) go to "eval", so no text is
    shared between the splits. The result has `cache_hit` (True: nothing was tokenized).
    """
    _check_settings(max_seq_length, short_seq_prob, dupe_factor)
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    settings = {
        "max_seq_length": max_seq_length,
        "short_seq_prob": short_seq_prob,
        "nsp": nsp,
        "dupe_factor": dupe_factor,
        "eval_fraction": eval_fraction,
        "seed": seed,
        "txt_format": txt_format,
        "text_field": text_field,
        "strict": strict,
    }
    files = resolve_corpus_files(corpus_paths)
    key = cache_key(files, tokenizer, settings)
    root = Path(cache_dir)
    final = root / key
    cache_hit = (final / "meta.json").is_file()
    if cache_hit:
        logger.info("pretraining cache hit: %s", final)
    else:
        root.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
        try:
            logger.info("building pretraining cache %s from %d file(s)", final, len(files))
            _build_cache(temp, files, tokenizer, settings, key)
            try:
                os.rename(temp, final)  # atomic: readers see a complete cache or none
            except OSError:
                if not (final / "meta.json").is_file():  # not "another process finished first"
                    raise
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    meta = json.loads((final / "meta.json").read_text())
    return PretrainingDataset(final / split, meta=meta, cache_hit=cache_hit)


def _build_cache(
    out: Path, files: list[Path], tokenizer: TokenizerLike, settings: dict[str, Any], key: str
) -> None:
    # Pass 1: stream documents -> tokens on disk, so memory does not grow with the corpus.
    work = out / "tokens"
    work.mkdir()
    writers = {
        "tokens": _NpyWriter(work / "tokens.npy", np.int32),
        "word_starts": _NpyWriter(work / "word_starts.npy", np.bool_),
        "sentence_offsets": _NpyWriter(work / "sentence_offsets.npy", np.int64),
        "doc_offsets": _NpyWriter(work / "doc_offsets.npy", np.int64),
    }
    writers["sentence_offsets"].append([0])
    writers["doc_offsets"].append([0])
    n_tokens = n_sentences = 0
    documents = read_documents(
        files, txt_format=settings["txt_format"], text_field=settings["text_field"], strict=settings["strict"]
    )
    for document in tokenize_documents(documents, tokenizer):
        writers["tokens"].append(document.ids)
        writers["word_starts"].append(document.word_starts)
        writers["sentence_offsets"].append(n_tokens + np.cumsum(document.sentence_lengths))
        n_tokens += len(document.ids)
        n_sentences += len(document.sentence_lengths)
        writers["doc_offsets"].append([n_sentences])
    store = _TokenStore(**{name: _load(writer.close()) for name, writer in writers.items()})
    if store.num_documents == 0:
        raise CorpusError(f"no tokens in the corpus (every sentence tokenized to nothing): {files}")

    # Pass 2: cut instances per split, reading tokens back through the memory map.
    n_docs = store.num_documents
    n_eval = 0
    if settings["eval_fraction"] > 0:
        if n_docs < 2:
            raise ValueError("eval_fraction > 0 needs at least 2 documents in the corpus")
        n_eval = min(n_docs - 1, max(1, round(n_docs * settings["eval_fraction"])))
    order = np.random.default_rng(settings["seed"]).permutation(n_docs)
    split_docs = {"train": sorted(order[n_eval:].tolist()), "eval": sorted(order[:n_eval].tolist())}
    split_meta = {}
    for split, doc_ids in split_docs.items():
        # The train split draws exactly like `create_instances` (same seed, same documents when
        # eval_fraction is 0); eval gets its own stream (str seeds hash stably across runs).
        rng = random.Random(settings["seed"] if split == "train" else f"lmforge-eval:{settings['seed']}")
        spans = _instance_spans(
            store,
            doc_ids,
            rng,
            max_seq_length=settings["max_seq_length"],
            short_seq_prob=settings["short_seq_prob"],
            nsp=settings["nsp"],
            dupe_factor=settings["dupe_factor"],
        )
        split_meta[split] = _write_split(out / split, store, spans, tokenizer, settings["nsp"])
        split_meta[split]["documents"] = len(doc_ids)
    shutil.rmtree(work)
    meta = {
        "format_version": CACHE_FORMAT_VERSION,
        "key": key,
        "files": [str(f) for f in files],
        "settings": settings,
        "documents": n_docs,
        "splits": split_meta,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))  # written last: marks completion


def _write_split(
    directory: Path, store: _TokenStore, spans: Iterable[_Span], tokenizer: TokenizerLike, nsp: bool
) -> dict[str, int]:
    directory.mkdir()
    ids = _NpyWriter(directory / "input_ids.npy", np.int32)
    types = _NpyWriter(directory / "token_type_ids.npy", np.int8)
    starts = _NpyWriter(directory / "word_starts.npy", np.bool_)
    offsets = _NpyWriter(directory / "offsets.npy", np.int64)
    labels = _NpyWriter(directory / "next_sentence_label.npy", np.int8) if nsp else None
    offsets.append([0])
    total = count = 0
    for span in spans:
        instance = _assemble(store, span, tokenizer.cls_token_id, tokenizer.sep_token_id)
        ids.append(instance["input_ids"])
        types.append(instance["token_type_ids"])
        starts.append(instance["word_starts"])
        total += len(instance["input_ids"])
        count += 1
        offsets.append([total])
        if labels is not None:
            labels.append([instance["next_sentence_label"]])
    for writer in (ids, types, starts, offsets, labels):
        if writer is not None:
            writer.close()
    return {"instances": count, "tokens": total}


# ============================================================================================
# Masking


def _as_generator(generator: torch.Generator | int) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (int, np.integer)):
        return torch.Generator().manual_seed(int(generator))
    raise TypeError("pass a torch.Generator or an int seed: masking never uses the global RNG")


class MaskingCollator:
    """Pad instances to the batch's longest and apply BERT's masked-LM corruption.

    Per sequence, `round(length * mlm_probability)` tokens (at least 1, at most
    `max_predictions_per_seq`; length counts [CLS]/[SEP], as Google does) are chosen among
    non-special tokens; of those 80% become [MASK], 10% a random non-special token, 10% stay.
    With `whole_word_mask`, whole words are chosen and all their pieces are masked together (a word
    that would overflow the budget is skipped, as in Google's code).

    Call it as `collator(instances, generator)`; `generator` is a `torch.Generator` or an int seed.
    It is required so that masking is reproducible and independent of the global RNG.

    Returns int64 tensors: `input_ids`, `attention_mask`, `token_type_ids` [batch, seq] and
    `labels` [batch, seq] (original id where predicted, -100 elsewhere), plus
    `next_sentence_label` [batch] when the instances carry it (NSP objective).
    """

    def __init__(
        self,
        tokenizer: TokenizerLike,
        mlm_probability: float = 0.15,
        max_predictions_per_seq: int = 20,
        whole_word_mask: bool = False,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        if not 0.0 <= mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must be in [0, 1], got {mlm_probability}")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        self.mlm_probability = mlm_probability
        self.max_predictions_per_seq = max_predictions_per_seq
        self.whole_word_mask = whole_word_mask
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pad_token_id = tokenizer.pad_token_id
        self.mask_token_id = tokenizer.mask_token_id
        special = {
            int(i)
            for i in [
                *tokenizer.all_special_ids,
                tokenizer.pad_token_id,
                tokenizer.cls_token_id,
                tokenizer.sep_token_id,
                tokenizer.mask_token_id,
                tokenizer.unk_token_id,
            ]
            if i is not None
        }
        size = max(tokenizer.vocab_size, max(special, default=-1) + 1)
        self._is_special = np.zeros(size, dtype=bool)  # bool [vocab]
        self._is_special[sorted(special)] = True
        # int64 [n_replacements]: random replacements never produce a special token
        self._replacement_ids = torch.from_numpy(np.flatnonzero(~self._is_special[: tokenizer.vocab_size]))
        if len(self._replacement_ids) == 0:
            raise ValueError("the vocabulary has no non-special token to use as a random replacement")

    def __call__(
        self, instances: Sequence[Mapping[str, Any]], generator: torch.Generator | int
    ) -> dict[str, torch.Tensor]:
        if not instances:
            raise ValueError("cannot collate an empty list of instances")
        gen = _as_generator(generator)
        lengths = [len(x["input_ids"]) for x in instances]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(instances)
        input_ids = np.full((batch, width), self.pad_token_id, dtype=np.int64)  # [batch, seq]
        token_type_ids = np.zeros((batch, width), dtype=np.int64)  # [batch, seq]
        attention_mask = np.zeros((batch, width), dtype=np.int64)  # [batch, seq]
        labels = np.full((batch, width), IGNORE_INDEX, dtype=np.int64)  # [batch, seq]
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        for row, (instance, length) in enumerate(zip(instances, lengths)):
            ids = np.asarray(instance["input_ids"], dtype=np.int64)
            input_ids[row, :length] = ids
            attention_mask[row, :length] = 1
            if "token_type_ids" in instance:
                token_type_ids[row, :length] = instance["token_type_ids"]
            word_starts = instance.get("word_starts")
            chosen = self._choose_positions(
                ids, None if word_starts is None else np.asarray(word_starts), gen
            )
            rows.append(np.full(len(chosen), row))
            cols.append(chosen)
        row_index, col_index = np.concatenate(rows), np.concatenate(cols)
        labels[row_index, col_index] = input_ids[row_index, col_index]
        # 80% [MASK], 10% random token, 10% unchanged. Draw for every chosen position, in one go,
        # so the generator's stream does not depend on which branch each position takes.
        n = len(row_index)
        action = torch.rand(n, generator=gen).numpy()  # float32 [n]
        random_ids = self._replacement_ids[
            torch.randint(len(self._replacement_ids), (n,), generator=gen)
        ].numpy()  # int64 [n]
        masked = action < 0.8
        replaced = action >= 0.9
        input_ids[row_index[masked], col_index[masked]] = self.mask_token_id
        input_ids[row_index[replaced], col_index[replaced]] = random_ids[replaced]
        out = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "token_type_ids": torch.from_numpy(token_type_ids),
            "labels": torch.from_numpy(labels),
        }
        if all("next_sentence_label" in x for x in instances):
            out["next_sentence_label"] = torch.tensor(
                [int(x["next_sentence_label"]) for x in instances], dtype=torch.int64
            )  # [batch]
        return out

    def _choose_positions(
        self, ids: np.ndarray, word_starts: np.ndarray | None, gen: torch.Generator
    ) -> np.ndarray:
        """Positions (int64 [k]) of one unpadded sequence to predict."""
        known = ids < len(self._is_special)
        candidate = np.ones(len(ids), dtype=bool)
        candidate[known] = ~self._is_special[ids[known]]
        positions = np.flatnonzero(candidate)  # int64 [n_candidates]
        budget = round(len(ids) * self.mlm_probability)
        if self.mlm_probability > 0:
            budget = max(1, budget)
        budget = min(budget, self.max_predictions_per_seq, len(positions))
        if budget <= 0:
            return np.zeros(0, dtype=np.int64)
        if not self.whole_word_mask or word_starts is None:
            order = torch.randperm(len(positions), generator=gen).numpy()
            return np.sort(positions[order[:budget]])
        # Words: a candidate starts a new word when flagged so, or when the previous position is
        # not a candidate (e.g. a "##" piece right after [CLS] because the front was truncated).
        new_word = word_starts[positions].astype(bool)
        new_word[1:] |= positions[1:] != positions[:-1] + 1
        new_word[0] = True
        # word w is positions[bounds[w] : bounds[w + 1]]
        bounds = np.append(np.flatnonzero(new_word), len(positions))
        chosen: list[np.ndarray] = []
        count = 0
        for word in torch.randperm(len(bounds) - 1, generator=gen).tolist():
            if count >= budget:
                break
            size = int(bounds[word + 1] - bounds[word])
            if count + size > budget:
                continue
            chosen.append(positions[bounds[word] : bounds[word + 1]])
            count += size
        return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


# ============================================================================================
# Batches


def _mix_seed(*parts: int) -> int:
    """A well-spread 63-bit seed from several integers (e.g. seed, batch index, rank)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 32 | int(state[1])) & ((1 << 63) - 1)


class PretrainingBatches:
    """Infinite, resumable iterator of masked batches over a dataset of instances.

    Epoch `e` visits the dataset in the order `numpy.random.default_rng([seed, e]).permutation(n)`
    (or in order, with `shuffle=False`), `batch_size` instances at a time; the last incomplete
    batch of an epoch is dropped so every batch (and every rank) has the same size. Batch `i` of
    epoch `e` has the global index `e * len(self) + i` and is masked from a generator seeded by
    `(seed, global index, rank)`, so a resumed run produces exactly the batches an uninterrupted
    one would.

    Distributed: `batch_size` is the *global* batch size; rank `r` of `world_size` takes the
    `r`-th of `world_size` equal, disjoint slices of every global batch.

    `state_dict()` is `{"epoch", "index"}` where index counts batches already yielded in the epoch;
    `load_state_dict` jumps there without collating anything.
    """

    def __init__(
        self,
        dataset: Sequence[Mapping[str, Any]],
        collator: MaskingCollator,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(
                f"batch_size ({batch_size}) must be a positive multiple of world_size ({world_size})"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if len(dataset) < batch_size:
            raise ValueError(f"dataset has {len(dataset)} instances, fewer than one batch of {batch_size}")
        self.dataset = dataset
        self.collator = collator
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.local_batch_size = batch_size // world_size
        self.epoch = 0
        self.index = 0
        self._order_epoch = -1
        self._order = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.dataset) // self.batch_size

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index <= len(self):
            raise ValueError(f"invalid batch position {dict(state)} for {len(self)} batches per epoch")
        self.epoch, self.index = epoch, index

    def order(self, epoch: int) -> np.ndarray:
        """int64 [n]: dataset indices in the order epoch `epoch` visits them."""
        if epoch != self._order_epoch:
            n = len(self.dataset)
            self._order = (
                np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            )
            self._order_epoch = epoch
        return self._order

    def indices(self, epoch: int, index: int) -> np.ndarray:
        """int64 [local_batch_size]: this rank's dataset indices for batch `index` of `epoch`."""
        start = index * self.batch_size + self.rank * self.local_batch_size
        return self.order(epoch)[start : start + self.local_batch_size]

    def __iter__(self) -> PretrainingBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.index >= len(self):
            self.epoch, self.index = self.epoch + 1, 0
        global_index = self.epoch * len(self) + self.index
        instances = [self.dataset[int(i)] for i in self.indices(self.epoch, self.index)]
        generator = torch.Generator().manual_seed(_mix_seed(self.seed, global_index, self.rank))
        batch = self.collator(instances, generator)
        self.index += 1  # counted as consumed once handed out
        return batch
