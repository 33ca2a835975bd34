"""Causal-LM pretraining data: documents joined with the EOS token and cut into fixed-length blocks, no padding.

    doc 1 tokens, EOS, doc 2 tokens, EOS, ...  ->  (n_blocks, block_size), n_blocks = total tokens // block_size

The tokens after the last whole block are dropped. Whole documents go to "train" or "eval" first
(`cache.split_documents`: `eval_fraction` of them, chosen by the seed), so the splits share no text; each
split joins its documents in corpus order. A document's text is its sentences (`data.corpus`) joined with
newlines, so the lines of a bert-layout .txt file stay lines.

The blocks are cached like the MLM instances (`cache.py`): written once as a memory-mapped `.npy` under a key
of (files, tokenizer, settings) in a temporary folder renamed into place; `BlockDataset` reads them back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers

from ...tokenizers.tokenizer import plain_backend
from ..corpus import CorpusError, PathLike, TxtFormat, read_documents, resolve_corpus_files
from .cache import NpyWriter, build_once, cache_key, load_npy, split_documents

# Bump whenever the block layout changes: old caches then stop matching.
BLOCKS_FORMAT_VERSION = 1


class BlockDataset:
    """One split of a block cache; item i is `{"input_ids": int32 [block_size]}`. Memory-mapped read-only."""

    def __init__(self, directory: PathLike, meta: dict[str, Any] | None = None, cache_hit: bool = False):
        self.directory = Path(directory)
        self.meta: dict[str, Any] = dict(meta or {})
        self.cache_hit = cache_hit  # True when built by an earlier call (no tokenization happened)
        self.blocks = load_npy(self.directory / "blocks.npy")  # int32 (n_blocks, block_size)

    @property
    def block_size(self) -> int:
        return self.blocks.shape[1]

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"block {index} out of range for {len(self)} blocks")
        return {"input_ids": np.asarray(self.blocks[index])}

    def __repr__(self) -> str:
        return f"BlockDataset({str(self.directory)!r}, blocks={len(self)}, block_size={self.block_size})"


def document_text(sentences: Sequence[str]) -> str:
    return "\n".join(sentences)


def encode_documents(
    documents: Iterable[Sequence[str]], backend: tokenizers.Tokenizer, eos_token_id: int, batch_documents: int = 64
) -> Iterator[np.ndarray]:
    """int32 [n + 1] per document: its tokens (no special tokens added), then the EOS id; documents that
    tokenize to nothing are skipped. Encodes `batch_documents` documents per `encode_batch` call."""
    pending: list[str] = []

    def flush() -> Iterator[np.ndarray]:
        for encoding in backend.encode_batch(pending, add_special_tokens=False):
            if encoding.ids:
                yield np.asarray([*encoding.ids, eos_token_id], dtype=np.int32)
        pending.clear()

    for document in documents:
        pending.append(document_text(document))
        if len(pending) >= batch_documents:
            yield from flush()
    if pending:
        yield from flush()


def cut_blocks(tokens: np.ndarray, block_size: int) -> np.ndarray:
    """(len(tokens) // block_size, block_size): the joined tokens cut into whole blocks, the rest dropped."""
    n_blocks = len(tokens) // block_size
    return tokens[: n_blocks * block_size].reshape(n_blocks, block_size)


def build_or_load_blocks(
    corpus_paths: PathLike | Iterable[PathLike],
    tokenizer: Any,
    cache_dir: PathLike,
    *,
    block_size: int,
    eval_fraction: float = 0.0,
    seed: int = 0,
    txt_format: TxtFormat = "bert",
    text_field: str = "text",
    strict: bool = True,
    split: str = "train",
) -> BlockDataset:
    """The `split` ("train" or "eval") of the block cache for these inputs, building both splits if needed.

    `tokenizer` needs an `eos_token_id`. The result has `cache_hit` (True: nothing was tokenized).
    """
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2 (one prediction needs two tokens), got {block_size}")
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("causal-LM blocks join documents with the EOS token, and this tokenizer has none "
                         "(train one with `lmforge tokenizer train --kind gpt2`)")
    settings = {
        "blocks_format_version": BLOCKS_FORMAT_VERSION,
        "block_size": block_size,
        "eos_token_id": eos,
        "eval_fraction": eval_fraction,
        "seed": seed,
        "txt_format": txt_format,
        "text_field": text_field,
        "strict": strict,
    }
    files = resolve_corpus_files(corpus_paths)
    key = cache_key(files, tokenizer, settings)
    final, cache_hit = build_once(Path(cache_dir), key,
                                  lambda out: _build_blocks(out, files, plain_backend(tokenizer), settings, key))
    meta = json.loads((final / "meta.json").read_text())
    return BlockDataset(final / split, meta=meta, cache_hit=cache_hit)


def _build_blocks(out: Path, files: list[Path], backend: tokenizers.Tokenizer, settings: dict[str, Any],
                  key: str) -> None:
    # Pass 1: stream documents -> tokens (each followed by EOS) on disk, so memory does not grow with the corpus.
    work = out / "tokens"
    work.mkdir()
    tokens_writer = NpyWriter(work / "tokens.npy", np.int32)
    offsets_writer = NpyWriter(work / "doc_offsets.npy", np.int64)
    offsets_writer.append([0])
    total = 0
    documents = read_documents(files, txt_format=settings["txt_format"], text_field=settings["text_field"],
                               strict=settings["strict"])
    for ids in encode_documents(documents, backend, settings["eos_token_id"]):
        tokens_writer.append(ids)
        total += len(ids)
        offsets_writer.append([total])
    tokens, offsets = load_npy(tokens_writer.close()), load_npy(offsets_writer.close())
    n_docs = len(offsets) - 1
    if n_docs == 0:
        raise CorpusError(f"no tokens in the corpus (every document tokenized to nothing): {files}")

    # Pass 2: per split, join its documents' tokens and cut them into blocks, straight into the .npy.
    split_meta = {}
    for split, doc_ids in split_documents(n_docs, settings["eval_fraction"], settings["seed"]).items():
        lengths = offsets[1:][doc_ids] - offsets[:-1][doc_ids]
        n_blocks = int(lengths.sum()) // settings["block_size"]
        (out / split).mkdir()
        blocks = np.lib.format.open_memmap(out / split / "blocks.npy", mode="w+", dtype=np.int32,
                                           shape=(n_blocks, settings["block_size"]))
        flat = blocks.reshape(-1)  # (n_blocks * block_size,), a view
        filled = 0
        for doc in doc_ids:
            if filled == len(flat):
                break
            piece = tokens[offsets[doc] : offsets[doc + 1]][: len(flat) - filled]
            flat[filled : filled + len(piece)] = piece
            filled += len(piece)
        blocks.flush()
        del blocks, flat
        split_meta[split] = {"documents": len(doc_ids), "tokens": int(lengths.sum()), "blocks": n_blocks}
    del tokens, offsets
    for name in ("tokens.npy", "doc_offsets.npy"):
        (work / name).unlink()
    work.rmdir()
    meta = {"key": key, "files": [str(f) for f in files], "settings": settings, "documents": n_docs,
            "splits": split_meta}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))  # written last: marks completion
