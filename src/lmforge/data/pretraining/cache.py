"""The pretraining cache: instances written once as memory-mapped .npy arrays under a key of (files, tokenizer,
settings), and `PretrainingDataset` reading them back."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...tokenizers.tokenizer import plain_backend
from ..corpus import CorpusError, PathLike, TxtFormat, read_documents, resolve_corpus_files
from .documents import TokenizerLike, tokenize_documents
from .instances import Instance, Span, Split, TokenStore, assemble, check_settings, instance_spans

logger = logging.getLogger(__name__)


# Bump whenever the cache layout or the instance recipe changes: old caches then stop matching.
CACHE_FORMAT_VERSION = 1


class NpyWriter:
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


def load_npy(path: Path) -> np.ndarray:
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
        self.input_ids = load_npy(self.directory / "input_ids.npy")  # int32 [n_tokens], all instances
        self.token_type_ids = load_npy(self.directory / "token_type_ids.npy")  # int8 [n_tokens]
        self.word_starts = load_npy(self.directory / "word_starts.npy")  # bool [n_tokens]
        self.offsets = load_npy(self.directory / "offsets.npy")  # int64 [n_instances + 1]
        nsp_path = self.directory / "next_sentence_label.npy"
        # int8 [n_instances]; absent for an MLM-only cache
        self.next_sentence_label = load_npy(nsp_path) if nsp_path.exists() else None

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
    check_settings(max_seq_length, short_seq_prob, dupe_factor)
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
    final, cache_hit = build_once(Path(cache_dir), key, lambda out: _build_cache(out, files, tokenizer, settings, key))
    meta = json.loads((final / "meta.json").read_text())
    return PretrainingDataset(final / split, meta=meta, cache_hit=cache_hit)


def build_once(root: Path, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """(`root / key`, cache hit): `build(folder)` fills a temporary folder, which must end with a `meta.json`
    (written last), and is renamed to `root / key` (atomic: readers see a complete cache or none)."""
    final = root / key
    if (final / "meta.json").is_file():
        logger.info("pretraining cache hit: %s", final)
        return final, True
    root.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
    try:
        logger.info("building pretraining cache %s", final)
        build(temp)
        try:
            os.rename(temp, final)
        except OSError:
            if not (final / "meta.json").is_file():  # not "another process finished first"
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return final, False


def split_documents(n_docs: int, eval_fraction: float, seed: int) -> dict[str, list[int]]:
    """{"train": document indices, "eval": document indices}, each sorted: `eval_fraction` of the documents
    (at least one, at most all but one, when > 0), chosen by `seed`."""
    n_eval = 0
    if eval_fraction > 0:
        if n_docs < 2:
            raise ValueError("eval_fraction > 0 needs at least 2 documents in the corpus")
        n_eval = min(n_docs - 1, max(1, round(n_docs * eval_fraction)))
    order = np.random.default_rng(seed).permutation(n_docs)
    return {"train": sorted(order[n_eval:].tolist()), "eval": sorted(order[:n_eval].tolist())}


def tokenize_to_store(work: Path, files: list[Path], tokenizer: TokenizerLike, settings: Mapping[str, Any]) -> TokenStore:
    """Pass 1 of a cache build: stream documents -> tokens into `work/` (created), memory-mapped back as a
    TokenStore, so memory does not grow with the corpus. The caller deletes `work/` when done."""
    work.mkdir()
    writers = {
        "tokens": NpyWriter(work / "tokens.npy", np.int32),
        "word_starts": NpyWriter(work / "word_starts.npy", np.bool_),
        "sentence_offsets": NpyWriter(work / "sentence_offsets.npy", np.int64),
        "doc_offsets": NpyWriter(work / "doc_offsets.npy", np.int64),
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
    store = TokenStore(**{name: load_npy(writer.close()) for name, writer in writers.items()})
    if store.num_documents == 0:
        raise CorpusError(f"no tokens in the corpus (every sentence tokenized to nothing): {files}")
    return store


def _build_cache(
    out: Path, files: list[Path], tokenizer: TokenizerLike, settings: dict[str, Any], key: str
) -> None:
    work = out / "tokens"
    store = tokenize_to_store(work, files, tokenizer, settings)

    # Pass 2: cut instances per split, reading tokens back through the memory map.
    n_docs = store.num_documents
    split_docs = split_documents(n_docs, settings["eval_fraction"], settings["seed"])
    split_meta = {}
    for split, doc_ids in split_docs.items():
        # The train split draws exactly like `create_instances` (same seed, same documents when
        # eval_fraction is 0); eval gets its own stream (str seeds hash stably across runs).
        rng = random.Random(settings["seed"] if split == "train" else f"lmforge-eval:{settings['seed']}")
        spans = instance_spans(
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
    directory: Path, store: TokenStore, spans: Iterable[Span], tokenizer: TokenizerLike, nsp: bool
) -> dict[str, int]:
    directory.mkdir()
    ids = NpyWriter(directory / "input_ids.npy", np.int32)
    types = NpyWriter(directory / "token_type_ids.npy", np.int8)
    starts = NpyWriter(directory / "word_starts.npy", np.bool_)
    offsets = NpyWriter(directory / "offsets.npy", np.int64)
    labels = NpyWriter(directory / "next_sentence_label.npy", np.int8) if nsp else None
    offsets.append([0])
    total = count = 0
    for span in spans:
        instance = assemble(store, span, tokenizer.cls_token_id, tokenizer.sep_token_id)
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
