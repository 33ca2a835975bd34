"""Streaming raw-text corpora for pretraining.

A *document* is a list of sentence strings (stripped, never empty). `read_documents` yields them one
at a time, reading files line by line, so memory does not grow with the corpus.

Accepted inputs (`paths` is one path or a list): files, directories (searched recursively for
`.txt` and `.jsonl`; hidden files and folders are skipped) and glob patterns (`data/**/*.txt`).

File formats, chosen by suffix:

- `.jsonl`: one JSON object per line; the document is the string under `text_field`. Its text is
  split into lines, then each line into sentences with `split_sentences`.
- anything else is plain UTF-8 text, in one of two layouts (`txt_format`):
  - `"bert"` (Google BERT's layout): one sentence per line, a blank line between documents.
  - `"document_per_line"`: every non-blank line is a document, split with `split_sentences`.

  The end of a file always ends a document.

Robustness: a UTF-8 byte-order mark is stripped. Bytes that are not UTF-8 raise `CorpusError` naming
the file, line and column; with `strict=False` they are replaced by U+FFFD instead and reported by one
`CorpusWarning` per file naming the first bad line and the number of bad lines. A corpus with no
files, or no non-blank text, raises `CorpusError` naming the paths.
"""

from __future__ import annotations

import glob
import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from ..files import UTF8_BOM, invalid_utf8_message

PathLike = str | os.PathLike
TxtFormat = Literal["bert", "document_per_line"]

# Suffixes picked up when a directory is given; explicit files and glob matches are read whatever
# their suffix (as plain text unless `.jsonl`).
CORPUS_SUFFIXES = (".txt", ".jsonl")
_GLOB_CHARS = re.compile(r"[*?\[]")

# Sentence boundary: `.`, `!` or `?` (optionally followed by closing quotes/brackets), then
# whitespace, then an ASCII capital letter, a digit or an opening quote/bracket. Deliberately simple:
# it splits after abbreviations such as "Mr. Smith" and does not split lower-case starts. For
# pretraining this only moves NSP/segment boundaries a little, which BERT tolerates.
_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*(?=\s+[\"'\u201c\u2018(\[]?[A-Z0-9])")


class CorpusError(ValueError):
    """The corpus cannot be read: no files, no text, bad JSON or (strict mode) bytes that are not UTF-8."""


class CorpusWarning(UserWarning):
    """Something in the corpus was repaired while reading (e.g. undecodable bytes replaced)."""


def split_sentences(text: str) -> list[str]:
    """Split one paragraph into sentences (see `_SENTENCE_END`); blank pieces are dropped."""
    sentences = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        sentences.append(text[start : match.end()].strip())
        start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def resolve_corpus_files(paths: PathLike | Iterable[PathLike]) -> list[Path]:
    """Expand files, directories and globs into a sorted-per-input, de-duplicated list of files."""
    inputs = _as_list(paths)
    files: list[Path] = []
    for raw in inputs:
        text = os.fspath(raw)
        path = Path(text).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(_scan_dir(path))
        elif _GLOB_CHARS.search(text):
            for match in sorted(glob.glob(str(path), recursive=True)):
                match_path = Path(match)
                files.extend(_scan_dir(match_path) if match_path.is_dir() else [match_path])
        else:
            raise CorpusError(f"corpus path does not exist: {text}")
    unique: dict[Path, None] = {}
    for file in files:
        unique.setdefault(file.resolve(), None)
    if not unique:
        raise CorpusError(f"no corpus files ({', '.join(CORPUS_SUFFIXES)}) found in: {_describe(inputs)}")
    return list(unique)


def read_documents(
    paths: PathLike | Iterable[PathLike],
    *,
    txt_format: TxtFormat = "bert",
    text_field: str = "text",
    strict: bool = True,
) -> Iterator[list[str]]:
    """Yield every document of the corpus, in file order, as a list of sentences."""
    if txt_format not in ("bert", "document_per_line"):
        raise ValueError(f"txt_format must be 'bert' or 'document_per_line', got {txt_format!r}")
    inputs = _as_list(paths)
    any_document = False
    for file in resolve_corpus_files(inputs):
        if file.suffix.lower() == ".jsonl":
            documents = _read_jsonl(file, text_field, strict)
        else:
            documents = _read_txt(file, txt_format, strict)
        for document in documents:
            any_document = True
            yield document
    if not any_document:
        raise CorpusError(f"corpus has no non-blank text: {_describe(inputs)}")


# --------------------------------------------------------------------------------------------
# Per-format readers


def _read_txt(file: Path, txt_format: TxtFormat, strict: bool) -> Iterator[list[str]]:
    document: list[str] = []
    for _, line in _decoded_lines(file, strict):
        line = line.strip()
        if txt_format == "document_per_line":
            sentences = split_sentences(line)
            if sentences:
                yield sentences
        elif line:
            document.append(line)
        elif document:
            yield document
            document = []
    if document:
        yield document


def _read_jsonl(file: Path, text_field: str, strict: bool) -> Iterator[list[str]]:
    for lineno, record in read_jsonl_records(file, _decoded_lines(file, strict), CorpusError):
        text = record.get(text_field)
        if not isinstance(text, str):
            raise CorpusError(f"{file}:{lineno}: no string field {text_field!r} in this JSON line")
        sentences = [s for paragraph in text.splitlines() for s in split_sentences(paragraph)]
        if sentences:
            yield sentences


def read_jsonl_records(
    file: Path, lines: Iterable[tuple[int, str]], error: type[ValueError]
) -> Iterator[tuple[int, dict]]:
    """(line number, JSON object) for each non-blank line of a JSONL file, given as (line number, text)
    pairs (the caller decodes, strict or not); a bad line raises `error` naming file and line."""
    for lineno, line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise error(f"{file}:{lineno}: invalid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise error(f"{file}:{lineno}: expected a JSON object, got {type(record).__name__}")
        yield lineno, record


def _decoded_lines(file: Path, strict: bool) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, text without the line ending), decoding UTF-8 line by line.

    Decoding per line (rather than `open(errors=...)`) is what lets us name the first bad line.
    """
    bad_lines = 0
    first_bad = 0
    with open(file, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if lineno == 1 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM) :]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                if strict:
                    message = invalid_utf8_message(file, lineno, raw, err)
                    raise CorpusError(f"{message}, or pass --no-strict to replace undecodable bytes") from None
                bad_lines += 1
                first_bad = first_bad or lineno
                text = raw.decode("utf-8", errors="replace")
            yield lineno, text.rstrip("\r\n")
    if bad_lines:
        warnings.warn(
            f"{file}:{first_bad}: {bad_lines} line(s) with undecodable UTF-8 bytes; "
            "they were replaced with U+FFFD",
            CorpusWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------------------------
# Helpers


def _as_list(paths: PathLike | Iterable[PathLike]) -> list[PathLike]:
    if isinstance(paths, (str, os.PathLike)):
        return [paths]
    return list(paths)


def _scan_dir(directory: Path) -> list[Path]:
    found = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # sorted: deterministic order
        for name in sorted(names):
            if not name.startswith(".") and name.lower().endswith(CORPUS_SUFFIXES):
                found.append(Path(root) / name)
    return found


def _describe(inputs: list[PathLike]) -> str:
    return ", ".join(os.fspath(p) for p in inputs) if inputs else "(no paths given)"
