"""Encoder-decoder pretraining data: documents packed into sequences `tokens </s>` with their sentence starts,
cached memory-mapped like the MLM instances (`cache.py`), for the noise collators (`denoising.py` for BART's text
infilling, `span_corruption.py` for T5's span corruption).

A sequence is contiguous whole sentences of one document up to `max_seq_length - 1` tokens (a sentence longer
than that is cut into pieces), then the tokenizer's EOS: what the Unigram tokenizer's `$A </s>` template gives for
one text. `short_seq_prob` of them aim shorter, as BERT's. Whole documents go to "train" or "eval"
(`cache.split_documents`), so the splits share no text. An item is
`{"input_ids": int32 [L], "sentence_starts": bool [L]}`: the EOS is last, and `sentence_starts` marks the first
token of every sentence (the first token always), which sentence permutation needs.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..corpus import PathLike, TxtFormat, resolve_corpus_files
from .cache import NpyWriter, build_once, cache_key, load_npy, split_documents, tokenize_to_store
from .documents import TokenizerLike
from .instances import TokenStore, _packed_spans, check_settings

# Bump whenever the layout changes: old caches then stop matching.
SEQUENCES_FORMAT_VERSION = 1


class SequenceDataset:
    """One split of a sequence cache (see the module docstring). Memory-mapped read-only."""

    def __init__(self, directory: PathLike, meta: dict[str, Any] | None = None, cache_hit: bool = False):
        self.directory = Path(directory)
        self.meta: dict[str, Any] = dict(meta or {})
        self.cache_hit = cache_hit  # True when built by an earlier call (no tokenization happened)
        self.input_ids = load_npy(self.directory / "input_ids.npy")  # int32 [n_tokens], all sequences
        self.sentence_starts = load_npy(self.directory / "sentence_starts.npy")  # bool [n_tokens]
        self.offsets = load_npy(self.directory / "offsets.npy")  # int64 [n_sequences + 1]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sequence {index} out of range for {len(self)} sequences")
        index %= len(self)
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        return {"input_ids": np.asarray(self.input_ids[start:stop]),
                "sentence_starts": np.asarray(self.sentence_starts[start:stop])}

    def __repr__(self) -> str:
        return f"SequenceDataset({str(self.directory)!r}, sequences={len(self)})"


def build_or_load_sequences(
    corpus_paths: PathLike | Iterable[PathLike],
    tokenizer: TokenizerLike,
    cache_dir: PathLike,
    *,
    max_seq_length: int = 128,
    short_seq_prob: float = 0.1,
    eval_fraction: float = 0.0,
    seed: int = 0,
    txt_format: TxtFormat = "bert",
    text_field: str = "text",
    strict: bool = True,
    split: str = "train",
) -> SequenceDataset:
    """The `split` ("train" or "eval") of the sequence cache for these inputs, building both splits if needed.
    `tokenizer` needs an `eos_token_id`. The result has `cache_hit` (True: nothing was tokenized)."""
    check_settings(max_seq_length, short_seq_prob, dupe_factor=1)
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if tokenizer.eos_token_id is None:
        raise ValueError("encoder-decoder sequences end with the EOS token, and this tokenizer has none (train "
                         "one with `lmforge tokenizer train --kind unigram`)")
    settings = {
        "sequences_format_version": SEQUENCES_FORMAT_VERSION,
        "max_seq_length": max_seq_length,
        "short_seq_prob": short_seq_prob,
        "eos_token_id": tokenizer.eos_token_id,
        "eval_fraction": eval_fraction,
        "seed": seed,
        "txt_format": txt_format,
        "text_field": text_field,
        "strict": strict,
    }
    files = resolve_corpus_files(corpus_paths)
    key = cache_key(files, tokenizer, settings)
    final, cache_hit = build_once(Path(cache_dir), key, lambda out: _build(out, files, tokenizer, settings, key))
    meta = json.loads((final / "meta.json").read_text())
    return SequenceDataset(final / split, meta=meta, cache_hit=cache_hit)


def _build(out: Path, files: list[Path], tokenizer: TokenizerLike, settings: dict[str, Any], key: str) -> None:
    work = out / "tokens"
    store = tokenize_to_store(work, files, tokenizer, settings)
    split_meta = {}
    for split, doc_ids in split_documents(store.num_documents, settings["eval_fraction"], settings["seed"]).items():
        rng = random.Random(f"lmforge-seq2seq-{split}:{settings['seed']}")  # str seeds hash stably across runs
        split_meta[split] = _write_split(out / split, store, doc_ids, rng, settings)
        split_meta[split]["documents"] = len(doc_ids)
    shutil.rmtree(work)
    meta = {"key": key, "files": [str(f) for f in files], "settings": settings, "documents": store.num_documents,
            "splits": split_meta}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))  # written last: marks completion


def _write_split(directory: Path, store: TokenStore, doc_ids: list[int], rng: random.Random,
                 settings: dict[str, Any]) -> dict[str, int]:
    directory.mkdir()
    ids = NpyWriter(directory / "input_ids.npy", np.int32)
    starts = NpyWriter(directory / "sentence_starts.npy", np.bool_)
    offsets = NpyWriter(directory / "offsets.npy", np.int64)
    offsets.append([0])
    eos = np.array([settings["eos_token_id"]], dtype=np.int32)
    total = count = 0
    for doc in doc_ids:
        # `_packed_spans` leaves room for BERT's [CLS] and [SEP]; a sequence here has only the EOS, so it gets
        # one more slot than it would: max_seq_length - 1 tokens.
        for start, stop, *_ in _packed_spans(store, doc, rng, settings["max_seq_length"] + 1,
                                             settings["short_seq_prob"]):
            first = np.searchsorted(store.sentence_offsets, start, side="left")
            last = np.searchsorted(store.sentence_offsets, stop, side="left")
            sentence_starts = np.zeros(stop - start + 1, dtype=bool)
            sentence_starts[store.sentence_offsets[first:last] - start] = True
            sentence_starts[0] = True  # a piece cut from a long sentence starts one too
            ids.append(store.tokens[start:stop])
            ids.append(eos)
            starts.append(sentence_starts)
            total += stop - start + 1
            count += 1
            offsets.append([total])
    for writer in (ids, starts, offsets):
        writer.close()
    return {"sequences": count, "tokens": total}
