"""Labelled task data for fine-tuning: CSV / TSV / JSONL / CoNLL loading, label maps, encoding, batching.

Everything here is plain Python until :func:`pad_collate`, which builds the tensors a model takes.

* :class:`Example` is one sequence-level example (``text``, optional ``text_pair``, ``label``) with the
  ``source`` (``"file:line"``) it came from, so later errors (an unseen label at evaluation, say) can
  point at the offending line.
* :func:`load_examples` reads CSV / TSV (delimited, with a header row) and JSONL files for
  ``single_label`` classification (label: ``str``), ``multi_label`` classification (label:
  ``list[str]``; a JSON list or a ``label_delimiter``-separated string such as ``"a|b"``) and
  ``regression`` (label: ``float``). Malformed input raises :class:`DataError` naming file and line (a file
  that is not UTF-8 too, with the column of the first bad byte).
* :class:`LabelMap` maps label names to ids (sorted names -> ``0..n-1``) and round-trips through the
  ``id2label`` / ``label2id`` dicts of a model config.
* :func:`load_conll` reads token-classification data (token first, tag in the last column);
  :func:`align_labels_to_subtokens` puts each word's label on its first sub-token and ``-100`` elsewhere.
* :func:`encode_classification` / :func:`encode_token_classification` turn examples into feature dicts,
  :func:`pad_collate` pads a list of them to the batch's longest sequence, and
  :func:`length_grouped_order` orders examples so batches hold similar lengths.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..utils import find_invalid_utf8

__all__ = [
    "IGNORE_INDEX",
    "TASK_TYPES",
    "DataError",
    "Example",
    "LabelMap",
    "TaggedSentence",
    "align_labels_to_subtokens",
    "encode_classification",
    "encode_token_classification",
    "length_grouped_order",
    "load_conll",
    "load_examples",
    "pad_collate",
    "split_examples",
]

TASK_TYPES = ("single_label", "multi_label", "regression")
IGNORE_INDEX = -100

Label = str | float | list[str] | None


class DataError(ValueError):
    """Malformed or inconsistent task data; the message names the file and line."""


@dataclass
class Example:
    """One sequence-level example.

    ``label`` is a ``str`` (single-label classification), a ``float`` (regression), a ``list[str]``
    (multi-label classification) or ``None`` (unlabelled). ``source`` is ``"file:line"``.
    """

    text: str
    text_pair: str | None = None
    label: Label = None
    source: str = ""


@dataclass
class TaggedSentence:
    """One token-classification sentence: words and one tag per word; ``source`` is ``"file:line"``."""

    tokens: list[str]
    tags: list[str]
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.tags):
            raise DataError(f"{self.source}: {len(self.tokens)} tokens but {len(self.tags)} tags")


# ----------------------------------------------------------------------------------------- loading


_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}


def _file_format(path: Path, delimiter: str | None) -> str | None:
    """Return the delimiter for delimited files, or ``None`` for JSON lines."""
    if delimiter is not None:
        if len(delimiter) != 1:
            raise DataError(f"{path}: delimiter must be a single character, got {delimiter!r}")
        return delimiter
    for suffix in reversed([s.lower() for s in path.suffixes]):  # "dev.v2.tsv" -> ".tsv"
        if suffix in _JSONL_SUFFIXES:
            return None
        if suffix in _DELIMITERS:
            return _DELIMITERS[suffix]
    raise DataError(
        f"{path}: cannot tell the format from the file name; use a .csv, .tsv or .jsonl extension "
        "or pass delimiter=..."
    )


def load_examples(
    path: str | Path,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str | None = "label",
    task: str = "single_label",
    delimiter: str | None = None,
    label_delimiter: str = "|",
) -> list[Example]:
    """Load labelled examples from a CSV / TSV file (header row first) or a JSONL file.

    The format follows the extension (``.csv``, ``.tsv``/``.tab``, ``.jsonl``/``.ndjson``)
    unless ``delimiter`` is given, which forces a delimited file. A UTF-8 byte-order mark is
    ignored. CSV files use standard quoting; tab-separated files are read without quote processing
    (as GLUE's TSV files need). Blank lines are skipped.

    ``task`` is ``"single_label"`` (label kept as ``str``; JSON integers become strings),
    ``"multi_label"`` (a JSON list of strings, or a string split on ``label_delimiter``; an empty
    value means no labels) or ``"regression"`` (label parsed as a finite ``float``).
    ``label_column=None`` loads unlabelled examples (``label`` is ``None``).

    Raises:
        DataError: naming file and line, for a missing file or column (listing the columns that
            exist), a row with the wrong number of fields, invalid JSON, an empty text, a label
            that does not fit the task, or bytes that are not UTF-8 (with their column).
    """
    if task not in TASK_TYPES:
        raise ValueError(f"task must be one of {TASK_TYPES}, got {task!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    delim = _file_format(path, delimiter)
    columns = (text_column, text_pair_column, label_column)
    if delim is None:
        rows = _iter_jsonl(path, columns)
    else:
        rows = _iter_delimited(path, delim, columns)
    examples = []
    with _utf8_errors_named(path):
        for line, record in rows:
            source = f"{path}:{line}"
            text = _text_value(record[text_column], text_column, source)
            pair = None
            if text_pair_column is not None:
                pair = _text_value(record[text_pair_column], text_pair_column, source)
            label = None
            if label_column is not None:
                label = _parse_label(record[label_column], task, label_delimiter, source)
            examples.append(Example(text=text, text_pair=pair, label=label, source=source))
    return examples


@contextlib.contextmanager
def _utf8_errors_named(path: Path) -> Iterator[None]:
    """Turn a UnicodeDecodeError while reading `path` (in text mode, which cannot tell the line) into a
    DataError naming the line and column of the first byte that is not UTF-8."""
    try:
        yield
    except UnicodeDecodeError as e:
        raise DataError(find_invalid_utf8(path) or f"{path}: not valid UTF-8 ({e.reason})") from None


def _iter_delimited(path: Path, delim: str, columns: Sequence[str | None]) -> Iterable[tuple[int, dict]]:
    quoting = csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delim, quoting=quoting)
        header: list[str] | None = None
        start = 1  # physical line where the next record starts
        try:
            for row in reader:
                line, start = start, reader.line_num + 1
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                if header is None:
                    header = [h.strip() for h in row]
                    missing = [c for c in columns if c is not None and c not in header]
                    if missing:
                        raise DataError(
                            f"{path}:{line}: missing column {missing[0]!r}; "
                            f"available columns: {', '.join(map(repr, header))}"
                        )
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path}:{line}: malformed row: expected {len(header)} fields "
                        f"({delim!r}-separated), found {len(row)}"
                    )
                yield line, dict(zip(header, row))
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: malformed row: {e}") from None
    if header is None:
        raise DataError(f"{path}:1: empty file (expected a header row)")


def _iter_jsonl(path: Path, columns: Sequence[str | None]) -> Iterable[tuple[int, dict]]:
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: malformed row: invalid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise DataError(
                    f"{path}:{line_no}: malformed row: expected a JSON object, got {type(record).__name__}"
                )
            for c in columns:
                if c is not None and c not in record:
                    raise DataError(
                        f"{path}:{line_no}: missing column {c!r}; "
                        f"available columns: {', '.join(map(repr, record))}"
                    )
            yield line_no, record


def _text_value(value: Any, column: str, source: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{source}: column {column!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{source}: empty text in column {column!r}")
    return value


def _parse_label(value: Any, task: str, label_delimiter: str, source: str) -> Label:
    if task == "regression":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise DataError(f"{source}: regression label must be a number, got {value!r}")
        try:
            out = float(value)
        except ValueError:
            raise DataError(f"{source}: regression label must be a number, got {value!r}") from None
        if not math.isfinite(out):
            raise DataError(f"{source}: regression label must be finite, got {value!r}")
        return out
    if task == "multi_label":
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(label_delimiter)]
        elif isinstance(value, list):
            parts = [p.strip() if isinstance(p, str) else _label_str(p, source) for p in value]
        else:
            raise DataError(
                f"{source}: multi-label labels must be a list or a delimited string, got {value!r}"
            )
        out_list: list[str] = []
        for p in parts:
            if p and p not in out_list:
                out_list.append(p)
        return out_list
    # single_label
    label = value.strip() if isinstance(value, str) else _label_str(value, source)
    if not label:
        raise DataError(f"{source}: empty label")
    return label


def _label_str(value: Any, source: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{source}: class label must be a string or an integer, got {value!r}")
    return str(value)


# ------------------------------------------------------------------------------------- label maps


class LabelMap:
    """Label names <-> ids. Ids follow the order given (``from_examples`` sorts the names)."""

    def __init__(self, names: Iterable[str]):
        self.names: list[str] = list(names)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate label names: {self.names}")
        self.label2id: dict[str, int] = {n: i for i, n in enumerate(self.names)}

    @classmethod
    def from_examples(cls, examples: Iterable[Example | TaggedSentence]) -> LabelMap:
        """Collect the labels of training examples (str, list[str], or a sentence's tags), sorted."""
        seen: set[str] = set()
        for ex in examples:
            if isinstance(ex, TaggedSentence):
                seen.update(ex.tags)
            elif isinstance(ex.label, str):
                seen.add(ex.label)
            elif isinstance(ex.label, list):
                seen.update(ex.label)
            elif ex.label is not None:
                raise DataError(f"{ex.source}: label {ex.label!r} is not a class label")
        if not seen:
            raise DataError("no class labels found in the training examples")
        return cls(sorted(seen))

    @classmethod
    def from_config(cls, id2label: Mapping[Any, str], label2id: Mapping[str, Any] | None = None) -> LabelMap:
        """Rebuild from a config's ``id2label`` (keys may be JSON strings such as ``"0"``)."""
        items = sorted((int(k), v) for k, v in id2label.items())
        if [k for k, _ in items] != list(range(len(items))):
            raise ValueError(f"id2label ids must be 0..{len(items) - 1}, got {[k for k, _ in items]}")
        lm = cls(v for _, v in items)
        if label2id is not None and {k: int(v) for k, v in label2id.items()} != lm.label2id:
            raise ValueError(f"label2id {dict(label2id)} does not match id2label {dict(id2label)}")
        return lm

    def to_config(self) -> tuple[dict[int, str], dict[str, int]]:
        """``(id2label, label2id)`` for a model config."""
        return dict(enumerate(self.names)), dict(self.label2id)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, label: object) -> bool:
        return label in self.label2id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelMap) and self.names == other.names

    def __repr__(self) -> str:
        return f"LabelMap({self.names!r})"

    def encode(self, label: str, source: str | None = None) -> int:
        """Id of ``label``; :class:`DataError` naming ``source`` and the known labels if unseen."""
        try:
            return self.label2id[label]
        except (KeyError, TypeError):
            where = f"{source}: " if source else ""
            raise DataError(
                f"{where}label {label!r} was not seen in the training data; "
                f"known labels: {', '.join(map(repr, self.names))}"
            ) from None

    def encode_multi(self, labels: Iterable[str], source: str | None = None) -> list[float]:
        """Multi-hot vector (floats, for ``BCEWithLogitsLoss``) of a multi-label example."""
        vec = [0.0] * len(self.names)
        for label in labels:
            vec[self.encode(label, source)] = 1.0
        return vec

    def decode(self, idx: int) -> str:
        return self.names[int(idx)]


# ---------------------------------------------------------------------------------------- splits


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder rounding of ``n * fractions`` so the counts sum to ``n``."""
    raw = [n * f for f in fractions]
    counts = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def split_examples(
    examples: Sequence[Any],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    stratify: bool = False,
) -> tuple[list[Any], ...]:
    """Shuffle with ``seed`` and cut into ``len(fractions)`` parts (e.g. train / validation / test).

    Part sizes are ``len(examples) * fraction`` rounded so they sum to ``len(examples)``.
    ``stratify=True`` splits each class (``Example.label``, a ``str``) separately so every part keeps
    the class proportions; the parts are then shuffled.
    """
    if not fractions or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {tuple(fractions)}")
    rng = random.Random(seed)
    if not stratify:
        items = list(examples)
        rng.shuffle(items)
        parts, start = [], 0
        for c in _split_counts(len(items), fractions):
            parts.append(items[start : start + c])
            start += c
        return tuple(parts)
    groups: dict[str, list[Any]] = {}
    for ex in examples:
        if not isinstance(ex.label, str):
            raise TypeError(f"stratify=True needs single-label examples; {ex.source} has label {ex.label!r}")
        groups.setdefault(ex.label, []).append(ex)
    parts = [[] for _ in fractions]
    for label in sorted(groups):
        items = groups[label]
        rng.shuffle(items)
        start = 0
        for part, c in zip(parts, _split_counts(len(items), fractions)):
            part.extend(items[start : start + c])
            start += c
    for part in parts:
        rng.shuffle(part)
    return tuple(parts)


# ---------------------------------------------------------------------------- token classification


def load_conll(path: str | Path) -> list[TaggedSentence]:
    """Read CoNLL-style token classification data.

    One token per line, whitespace-separated columns: the token first, the tag in the LAST column
    (so CoNLL-2003's ``word POS chunk NER`` works). A blank line ends a sentence; ``-DOCSTART-``
    lines are skipped. ``source`` of each sentence is the line of its first token.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    sentences: list[TaggedSentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    first = 0

    def flush() -> None:
        if tokens:
            sentences.append(TaggedSentence(list(tokens), list(tags), f"{path}:{first}"))
            tokens.clear()
            tags.clear()

    with _utf8_errors_named(path), open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            cols = line.split()
            if not cols:
                flush()
                continue
            if cols[0] == "-DOCSTART-":
                flush()
                continue
            if len(cols) < 2:
                raise DataError(
                    f"{path}:{line_no}: malformed line: expected a token and a tag "
                    f"(whitespace-separated), got {line.rstrip()!r}"
                )
            if not tokens:
                first = line_no
            tokens.append(cols[0])
            tags.append(cols[-1])
    flush()
    return sentences


def align_labels_to_subtokens(
    word_ids: Sequence[int | None],
    word_labels: Sequence[str | int],
    label2id: Mapping[str, int] | LabelMap | None = None,
    source: str | None = None,
) -> list[int]:
    """Per-token labels from per-word labels.

    ``word_ids`` is what a fast tokenizer's ``word_ids()`` gives: the word index of each token, or
    ``None`` for special tokens. The first sub-token of each word gets the word's label id; later
    sub-tokens of the same word and special tokens get ``-100`` (ignored by the loss).
    ``word_labels`` are names mapped through ``label2id`` (a dict or :class:`LabelMap`), or ids
    already when ``label2id`` is ``None``.
    """
    out: list[int] = []
    prev: int | None = None
    for wid in word_ids:
        if wid is None or wid == prev:
            out.append(IGNORE_INDEX)
        else:
            label = word_labels[wid]
            if label2id is None:
                out.append(int(label))
            elif isinstance(label2id, LabelMap):
                out.append(label2id.encode(label, source))
            elif label in label2id:
                out.append(int(label2id[label]))
            else:
                where = f"{source}: " if source else ""
                raise DataError(
                    f"{where}label {label!r} was not seen in the training data; "
                    f"known labels: {', '.join(map(repr, label2id))}"
                )
        prev = wid
    return out


# --------------------------------------------------------------------------------------- encoding


def encode_classification(
    examples: Sequence[Example],
    tokenizer: Any,
    label_map: LabelMap | None,
    max_length: int,
    batch_size: int = 1024,
) -> list[dict[str, Any]]:
    """Tokenize examples into feature dicts (``input_ids``, ``attention_mask``, ``token_type_ids``
    when the tokenizer gives them, and ``labels``).

    ``tokenizer(texts, pairs, truncation=True, max_length=max_length)`` must return a mapping of
    lists (HF-compatible). Labels: ``str`` -> class id (``int``) through ``label_map``;
    ``list[str]`` -> multi-hot floats; ``float`` -> itself (regression); ``None`` -> no ``labels``.
    An unseen label raises :class:`DataError` naming the example's file and line.
    """
    if not examples:
        return []
    has_pair = [ex.text_pair is not None for ex in examples]
    if any(has_pair) and not all(has_pair):
        bad = examples[has_pair.index(not has_pair[0])]
        raise DataError(f"{bad.source}: some examples have a text pair and others do not")
    features: list[dict[str, Any]] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        texts = [ex.text for ex in chunk]
        pairs = [ex.text_pair for ex in chunk] if has_pair[0] else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
        for i, ex in enumerate(chunk):
            feat = {k: list(enc[k][i]) for k in keys}
            label = _encode_label(ex, label_map)
            if label is not None:
                feat["labels"] = label
            features.append(feat)
    return features


def _encode_label(ex: Example, label_map: LabelMap | None) -> int | float | list[float] | None:
    if ex.label is None:
        return None
    if isinstance(ex.label, float):
        return ex.label
    if label_map is None:
        raise DataError(f"{ex.source}: class label {ex.label!r} needs a label map")
    if isinstance(ex.label, str):
        return label_map.encode(ex.label, ex.source)
    return label_map.encode_multi(ex.label, ex.source)


def _backend_of(tokenizer: Any) -> Any:
    for name in ("backend", "backend_tokenizer", "_tokenizer"):
        backend = getattr(tokenizer, name, None)
        if backend is not None and hasattr(backend, "encode_batch"):
            return backend
    if hasattr(tokenizer, "encode_batch"):
        return tokenizer
    raise TypeError("token classification needs a fast tokenizer (with a `tokenizers.Tokenizer` backend)")


def encode_token_classification(
    sentences: Sequence[TaggedSentence],
    tokenizer: Any,
    label_map: LabelMap | None,
    max_length: int,
) -> list[dict[str, Any]]:
    """Tokenize pre-split words and align tags to sub-tokens (see :func:`align_labels_to_subtokens`).

    Uses the tokenizer's ``tokenizers.Tokenizer`` backend (``.backend`` for lmforge tokenizers,
    ``.backend_tokenizer`` for HF fast ones); words past ``max_length`` (special tokens included)
    are cut. ``label_map=None`` gives features without ``labels``. Each feature also carries
    ``word_ids`` (a list, ``None`` for special tokens) for mapping predictions back to words;
    :func:`pad_collate` ignores it.
    """
    from tokenizers import Tokenizer as _BackendTokenizer

    backend = _backend_of(tokenizer)
    # Work on a copy so padding/truncation state set on the shared backend does not leak in (or out).
    backend = _BackendTokenizer.from_str(backend.to_str())
    backend.no_padding()
    backend.no_truncation()
    n_special = backend.post_processor.num_special_tokens_to_add(False) if backend.post_processor else 0
    if max_length <= n_special:
        raise ValueError(f"max_length={max_length} leaves no room next to {n_special} special tokens")
    words = [s.tokens for s in sentences]
    encodings = backend.encode_batch(words, is_pretokenized=True, add_special_tokens=False)
    features = []
    for sent, enc in zip(sentences, encodings):
        enc.truncate(max_length - n_special)
        enc = backend.post_process(enc, None, True)
        word_ids = list(enc.word_ids)
        feat: dict[str, Any] = {
            "input_ids": list(enc.ids),
            "token_type_ids": list(enc.type_ids),
            "attention_mask": list(enc.attention_mask),
            "word_ids": word_ids,
        }
        if label_map is not None:
            feat["labels"] = align_labels_to_subtokens(word_ids, sent.tags, label_map, sent.source)
        features.append(feat)
    return features


# ---------------------------------------------------------------------------------------- batching


def pad_collate(
    features: Sequence[Mapping[str, Any]],
    pad_token_id: int,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Stack feature dicts into a batch, padding sequences on the right to the batch's longest.

    ``input_ids`` pad with ``pad_token_id``, token-level ``labels`` with ``-100``, every other
    sequence (``attention_mask``, ``token_type_ids``, ...) with 0. Sequences become int64 tensors
    ``[batch, length]``. ``labels`` that are one int per example become int64 ``[batch]``; float
    labels (regression ``[batch]``, multi-hot ``[batch, num_labels]``) become float32. Keys whose
    values are not numbers or lists of numbers (``word_ids``) are left out.
    """
    if not features:
        raise ValueError("pad_collate needs at least one feature")
    keys = list(features[0])
    batch: dict[str, torch.Tensor] = {}
    for key in keys:
        if key == "word_ids":
            continue
        values = [f[key] for f in features]
        first = values[0]
        if isinstance(first, (list, tuple)):
            is_float = any(isinstance(v, float) for seq in values for v in seq)
            if key == "labels" and is_float:
                batch[key] = torch.tensor(values, dtype=torch.float32)  # multi-hot
                continue
            pad = pad_token_id if key == "input_ids" else IGNORE_INDEX if key == "labels" else 0
            length = max(len(v) for v in values)
            if pad_to_multiple_of:
                length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
            out = torch.full((len(values), length), pad, dtype=torch.int64)
            for i, v in enumerate(values):
                if v:
                    out[i, : len(v)] = torch.tensor(v, dtype=torch.int64)
            batch[key] = out
        elif isinstance(first, float):
            batch[key] = torch.tensor(values, dtype=torch.float32)
        elif isinstance(first, int):
            batch[key] = torch.tensor(values, dtype=torch.int64)
    return batch


def length_grouped_order(
    lengths: Sequence[int],
    batch_size: int,
    seed: int = 0,
    mega_batch_mult: int = 50,
) -> list[int]:
    """A permutation of ``range(len(lengths))`` in which consecutive ``batch_size`` chunks hold similar
    lengths, so dynamic padding wastes little.

    Indices are shuffled with ``seed``, cut into mega-batches of ``mega_batch_mult * batch_size``,
    sorted by length (longest first) inside each, cut into batches, and the batch order shuffled.
    A short batch (when ``batch_size`` does not divide ``len(lengths)``) is kept last, so callers
    simply chunk the result by ``batch_size``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = random.Random(seed)
    indices = list(range(len(lengths)))
    rng.shuffle(indices)
    mega = max(1, mega_batch_mult) * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(indices), mega):
        group = sorted(indices[start : start + mega], key=lambda i: -lengths[i])
        batches.extend(group[j : j + batch_size] for j in range(0, len(group), batch_size))
    short = batches.pop() if batches and len(batches[-1]) < batch_size else None
    rng.shuffle(batches)
    if short is not None:
        batches.append(short)
    return [i for b in batches for i in b]
