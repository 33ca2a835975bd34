"""Labelled files -> examples: CSV / TSV / JSONL (`load_examples` -> `Example`) and CoNLL (`load_conll` ->
`TaggedSentence`). Plain Python, no tensors.

* :class:`Example` is one sequence-level example (``text``, optional ``text_pair``, ``label``) with the
  ``source`` (``"file:line"``) it came from, so later errors (an unseen label at evaluation, say) can
  point at the offending line.
* :func:`load_examples` reads CSV / TSV (delimited, with a header row) and JSONL files for
  ``single_label`` classification (label: ``str``), ``multi_label`` classification (label:
  ``list[str]``; a JSON list or a ``label_delimiter``-separated string such as ``"a|b"``) and
  ``regression`` (label: ``float``). Malformed input raises :class:`DataError` naming file and line (a file
  that is not UTF-8 too, with the column of the first bad byte).
* :func:`load_conll` reads token-classification data (token first, tag in the last column).

Label maps are in labels.py, features and padding in collators.py, batch orders in batches.py.
"""

from __future__ import annotations

import contextlib
import csv
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import find_invalid_utf8
from .corpus import read_jsonl_records

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
    from .labels import TASKS  # here: labels.py imports this module

    example_tasks = tuple(t for t in TASKS if t != "token_classification")  # token tagging: load_conll
    if task not in example_tasks:
        raise ValueError(f"task must be one of {example_tasks}, got {task!r}")
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
        for line_no, record in read_jsonl_records(path, enumerate(f, start=1), DataError):
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


# ---------------------------------------------------------------------------------------- splits


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


# --------------------------------------------------------------------------------------- encoding


# ---------------------------------------------------------------------------------------- batching


