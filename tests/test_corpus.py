"""Streaming corpus reading: formats, document boundaries, encoding problems, empty corpora."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from lmforge.data.corpus import (
    CorpusError,
    CorpusWarning,
    read_documents,
    resolve_corpus_files,
    split_sentences,
)


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def test_blank_lines_separate_documents_in_bert_format(tmp_path):
    corpus = write(tmp_path / "a.txt", "One.\nTwo.\n\n\n  \nThree.\r\nFour.\n\nFive.")
    assert list(read_documents(corpus)) == [["One.", "Two."], ["Three.", "Four."], ["Five."]]


def test_end_of_file_ends_a_document(tmp_path):
    write(tmp_path / "a.txt", "A1.\nA2.")
    write(tmp_path / "b.txt", "B1.\n")
    assert list(read_documents(tmp_path)) == [["A1.", "A2."], ["B1."]]


def test_document_per_line_mode_splits_sentences(tmp_path):
    corpus = write(tmp_path / "d.txt", "First one. Second one!\n\nOther doc? Yes.\n")
    docs = list(read_documents(corpus, txt_format="document_per_line"))
    assert docs == [["First one.", "Second one!"], ["Other doc?", "Yes."]]


def test_sentence_splitter_rules():
    assert split_sentences('He said "Go." Then "Stop!" she said. 3 more.') == [
        'He said "Go."',
        'Then "Stop!" she said.',
        "3 more.",
    ]
    # No split before a lower-case word or without a following space.
    assert split_sentences("e.g. this stays. v1.2 too") == ["e.g. this stays. v1.2 too"]
    assert split_sentences("   ") == []


def test_jsonl_uses_the_configured_field(tmp_path):
    rows = [{"body": "Alpha one. Beta two.\nGamma three.", "id": 1}, {"body": "   "}, {"body": "Solo"}]
    corpus = write(tmp_path / "c.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    docs = list(read_documents(corpus, text_field="body"))
    assert docs == [["Alpha one.", "Beta two.", "Gamma three."], ["Solo"]]


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    corpus = write(tmp_path / "c.jsonl", '{"text": "Fine."}\n{"text": oops}\n')
    docs = read_documents(corpus)
    assert next(docs) == ["Fine."]  # streamed: the good line comes out before the bad one is read
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: invalid JSON"):
        next(docs)


def test_jsonl_missing_field_names_file_and_line(tmp_path):
    corpus = write(tmp_path / "c.jsonl", '{"text": "Fine."}\n{"content": "x"}\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: no string field 'text'"):
        list(read_documents(corpus))


def test_utf8_bom_is_stripped(tmp_path):
    txt = write(tmp_path / "a.txt", b"\xef\xbb\xbfHello.\n")
    jsonl = write(tmp_path / "b.jsonl", b'\xef\xbb\xbf{"text": "Hi."}\n')
    assert list(read_documents([txt, jsonl])) == [["Hello."], ["Hi."]]


def test_lenient_mode_replaces_undecodable_bytes_and_warns_once(tmp_path):
    corpus = write(tmp_path / "bad.txt", b"ok.\nok.\nbad \xff.\nok.\nbad \xfe\xfd.\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        docs = list(read_documents(corpus, strict=False))
    assert docs == [["ok.", "ok.", "bad \ufffd.", "ok.", "bad \ufffd\ufffd."]]
    ours = [w for w in caught if issubclass(w.category, CorpusWarning)]
    assert len(ours) == 1
    assert "bad.txt:3:" in str(ours[0].message)
    assert "2 line(s)" in str(ours[0].message)


@pytest.mark.parametrize("name, line, column", [("bad.txt", "the café \xff.", 10),
                                                ("bad.jsonl", '{"text": "the café \xff."}', 20)])
def test_bytes_that_are_not_utf8_name_file_line_and_column(tmp_path, name, line, column):
    # Line 2 holds a latin-1 byte (0xff) after a UTF-8 "é": two bytes, one column.
    first = '{"text": "ok."}' if name.endswith(".jsonl") else "ok."
    corpus = write(tmp_path / name, f"{first}\n{line}\n".encode().replace(b"\xc3\xbf", b"\xff"))
    with pytest.raises(CorpusError) as info:
        list(read_documents(corpus))
    assert str(info.value).startswith(f"{corpus}:2: not valid UTF-8 (byte 0xff at column {column}); re-save")
    assert "--no-strict" in str(info.value)


def test_directory_without_corpus_files_is_an_error(tmp_path):
    write(tmp_path / "notes.md", "not a corpus file")
    with pytest.raises(CorpusError, match="no corpus files") as info:
        list(read_documents(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_glob_matching_nothing_is_an_error(tmp_path):
    with pytest.raises(CorpusError, match="no corpus files"):
        resolve_corpus_files(str(tmp_path / "*.txt"))


def test_blank_corpus_is_an_error(tmp_path):
    write(tmp_path / "a.txt", "\n  \n\n")
    write(tmp_path / "b.jsonl", '{"text": ""}\n')
    with pytest.raises(CorpusError, match="no non-blank text"):
        list(read_documents(tmp_path))


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        list(read_documents(tmp_path / "nope.txt"))


def test_resolution_of_directories_and_globs(tmp_path):
    a = write(tmp_path / "a.txt", "x")
    b = write(tmp_path / "sub" / "b.jsonl", "{}")
    write(tmp_path / "sub" / "skip.md", "x")
    write(tmp_path / ".hidden" / "h.txt", "x")
    raw = write(tmp_path / "other" / "wiki.raw", "x")
    assert resolve_corpus_files(tmp_path) == [a.resolve(), b.resolve()]
    # Globs take any suffix; duplicates (a.txt twice) are dropped.
    found = resolve_corpus_files([str(tmp_path / "other" / "*"), a, str(tmp_path / "*.txt")])
    assert found == [raw.resolve(), a.resolve()]
