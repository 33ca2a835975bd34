"""Parallel text (source -> target pairs) for seq2seq fine-tuning: files (CSV / TSV / JSONL with a source and a
target column) and the named datasets built from the gettext catalogs installed on the machine.

Named datasets (`parallel_dataset_names()`):

* ``ui-strings-en-zh``: English -> Simplified Chinese, from ``/usr/share/locale/zh_CN/LC_MESSAGES/*.mo``;
* ``ui-strings-en-de``: English -> German, from ``/usr/share/locale/de/LC_MESSAGES/*.mo``.

Every installed Debian package with translations ships one catalog per language (a compiled .mo file: each
English ``msgid`` with its translation). `read_mo` parses the binary format directly (GNU gettext's layout:
magic, count, two tables of (length, offset)); a message with a context (``ctxt\\x04msgid``) keeps the msgid, a
plural message keeps its singular and the first translated form. A pair is kept when:

* both sides are one line of 1..`MAX_CHARS` characters once surrounding whitespace is stripped (multi-line
  ``--help`` blocks are column layout, not sentences, and outgrow a small model's context);
* the source has a letter, and the translation differs from it (an identical msgstr is mostly an untranslated
  string: copying is not what the model should learn);
* the placeholders agree (`placeholders_match`): ``%s``, ``%d``, ``%1$s``, ``%(name)s``, ``{0}``, ``{name}``,
  ``{}`` are kept verbatim; pairs whose translation drops, adds or renumbers one are left out.

Keyboard accelerators are stripped (`strip_accelerators`): GTK marks a mnemonic with ``_`` before a letter
(``_Open``) and Chinese catalogs append it in brackets (``打开(_O)``). The marker is per-language widget
metadata, not text: kept, the model would have to learn to invent a letter in brackets, and BLEU would score it.

Pairs are deduplicated on the source text (the first catalog in name order wins) and split by catalog, so no
catalog of the validation or test split is trained on: catalogs are shuffled with a fixed seed and handed to test
until it holds `HELD_OUT_FRACTION` of the pairs, then to validation (skipping catalogs that would overshoot it by
half). Since every source string is kept once over all catalogs, no source text is in two splits. The result is
deterministic for the same catalogs.
"""

from __future__ import annotations

import random
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .labelled import DataError, _file_format, _iter_delimited, _iter_jsonl, _text_value, _utf8_errors_named
from .splits import SPLIT_NAMES, split_examples, split_files

LOCALE_DIR = Path("/usr/share/locale")
MAX_CHARS = 200
HELD_OUT_FRACTION = {"test": 0.10, "validation": 0.05}
OVERSHOOT = 1.5
SPLIT_SEED = 0

# Debian packages whose catalogs make up most of the pairs (all ship zh_CN and de translations).
CATALOG_PACKAGES = ("libc-l10n", "iso-codes", "coreutils", "gettext", "git", "xkb-data", "libglib2.0-data",
                    "libgtk2.0-common", "systemd", "apt", "dpkg", "tar", "wget", "postgresql-15")


@dataclass(frozen=True)
class ParallelInfo:
    name: str
    locale: str  # folder under /usr/share/locale
    target_language: str  # sacreBLEU tokenizer choice: "zh" scores with tokenize="zh"
    description: str


_PARALLEL = {
    "ui-strings-en-zh": ParallelInfo("ui-strings-en-zh", "zh_CN", "zh",
                                     "English -> Simplified Chinese UI strings of the installed gettext catalogs"),
    "ui-strings-en-de": ParallelInfo("ui-strings-en-de", "de", "de",
                                     "English -> German UI strings of the installed gettext catalogs"),
}


@dataclass
class Pair:
    """One source -> target example; `origin` is ``"file:line"`` or the catalog (``"coreutils.mo"``)."""

    source: str
    target: str
    origin: str = ""


class ParallelSplits(dict):
    """``{"train": [Pair], "validation": [...], "test": [...]}`` plus the dataset's `name`, `target_language`
    (``"zh"`` for Chinese targets, else None) and `stats` (counts of what was read, kept and dropped)."""

    def __init__(self, splits: dict[str, list[Pair]], name: str, target_language: str | None = None,
                 stats: dict[str, Any] | None = None):
        super().__init__(splits)
        self.name = name
        self.target_language = target_language
        self.stats = stats or {}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.items())
        return f"ParallelSplits({self.name!r}, {sizes})"


def parallel_dataset_names() -> list[str]:
    return sorted(_PARALLEL)


def parallel_info(name: str) -> ParallelInfo:
    try:
        return _PARALLEL[name]
    except KeyError:
        raise KeyError(f"unknown parallel dataset {name!r}; known: {', '.join(parallel_dataset_names())}") from None


# ------------------------------------------------------------------------------------------ placeholders
# printf (C, with %N$ positions and length modifiers; glibc's %m, the errno text), Python's %(name)s, and
# str.format's {0} / {name} / {}.
# "%%" is matched first and thrown away: it is a literal percent sign, not an argument.
_PLACEHOLDER = re.compile(
    r"%%"
    r"|%(?P<pos>\d+\$)?[-+ #0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|L|q|j|z|Z|t)?[diouxXeEfFgGaAcspCSm]"
    r"|%\((?P<key>\w+)\)[-+ #0]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa]"
    r"|\{(?P<field>\w*)(?:[!:][^{}]*)?\}"
)


def placeholders(text: str) -> list[str]:
    """The placeholders of `text`, in order (``"%s of %d"`` -> ``["%s", "%d"]``)."""
    return [m.group(0) for m in _PLACEHOLDER.finditer(text) if m.group(0) != "%%"]


def placeholder_signature(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What a translation must keep: the unnumbered placeholders (``%s``, ``{}``) in order (their order is the
    argument order), and the numbered or named ones (``%1$s``, ``%(n)d``, ``{0}``, ``{name}``) as a multiset
    (a translation may move them)."""
    ordered, named = [], []
    for m in _PLACEHOLDER.finditer(text):
        if m.group(0) == "%%":
            continue
        (named if m.group("pos") or m.group("key") or m.group("field") else ordered).append(m.group(0))
    return tuple(ordered), tuple(sorted(named))


def placeholders_match(source: str, output: str) -> bool:
    """`output` carries the placeholders of `source` (see `placeholder_signature`)."""
    return placeholder_signature(source) == placeholder_signature(output)


def placeholder_survival(sources: Sequence[str], outputs: Sequence[str]) -> float | None:
    """Fraction of the outputs whose placeholders match their source's, over the sources that have any
    (None when none has: nothing to survive)."""
    scored = [placeholders_match(s, o) for s, o in zip(sources, outputs, strict=True) if placeholders(s)]
    return sum(scored) / len(scored) if scored else None


# ------------------------------------------------------------------------------------------- accelerators
_ACCEL_BRACKETS = re.compile(r"\s*[(（]_[^\W_][)）]")  # "打开(_O)" -> "打开"
_ACCEL_MARK = re.compile(r"(?<![\w%$])_(?=[^\W_])")  # "_Open" -> "Open", not "foo_bar" or "%_x"


def strip_accelerators(text: str) -> str:
    """`text` without GTK mnemonic markers: a bracketed ``(_X)`` anywhere, and a lone ``_`` before a letter at a
    word start when it is the text's only underscore (``_Open``, ``Save _As``; identifiers such as
    ``LC_ALL`` or ``_NET_WM_NAME`` keep theirs)."""
    text = _ACCEL_BRACKETS.sub("", text)
    if text.count("_") == 1 and _ACCEL_MARK.search(text):
        text = _ACCEL_MARK.sub("", text, count=1)
    return text


# ------------------------------------------------------------------------------------------------ .mo files
_MO_MAGIC = 0x950412DE


def read_mo(path: str | Path) -> list[tuple[str, str]]:
    """(msgid, msgstr) pairs of a compiled gettext catalog, header (empty msgid) left out: a context prefix
    (``ctxt\\x04``) is dropped from msgid, a plural keeps its singular msgid and first translated form. Text is
    decoded with the header's charset (UTF-8 when it names none). A file that is not a catalog raises DataError."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 28:
        raise DataError(f"{path}: not a gettext .mo file (only {len(data)} bytes)")
    for order in ("<", ">"):
        if struct.unpack(order + "I", data[:4])[0] == _MO_MAGIC:
            break
    else:
        raise DataError(f"{path}: not a gettext .mo file (bad magic number)")
    _, count, ids_at, strs_at = struct.unpack(order + "4I", data[4:20])
    raw: list[tuple[bytes, bytes]] = []
    try:
        for i in range(count):
            id_len, id_off = struct.unpack_from(order + "2I", data, ids_at + 8 * i)
            str_len, str_off = struct.unpack_from(order + "2I", data, strs_at + 8 * i)
            if id_off + id_len > len(data) or str_off + str_len > len(data):
                raise DataError(f"{path}: message {i} points past the end of the file")
            raw.append((data[id_off:id_off + id_len], data[str_off:str_off + str_len]))
    except struct.error:
        raise DataError(f"{path}: truncated .mo file (message tables cut short)") from None
    charset = "utf-8"
    pairs = []
    for msgid, msgstr in raw:
        if not msgid:  # the header: "Content-Type: text/plain; charset=UTF-8" ...
            found = re.search(rb"charset=([\w-]+)", msgstr)
            charset = found.group(1).decode("ascii") if found and found.group(1) != b"CHARSET" else "utf-8"
            continue
        msgid = msgid.split(b"\x04", 1)[-1].split(b"\x00", 1)[0]
        msgstr = msgstr.split(b"\x00", 1)[0]
        try:
            pairs.append((msgid.decode(charset), msgstr.decode(charset)))
        except (UnicodeDecodeError, LookupError) as e:
            raise DataError(f"{path}: a message is not valid {charset} ({e})") from None
    return pairs


def clean_pair(msgid: str, msgstr: str) -> tuple[str, str] | str:
    """The (source, target) kept from a catalog message, or the reason it is dropped."""
    source, target = strip_accelerators(msgid).strip(), strip_accelerators(msgstr).strip()
    if not target:
        return "untranslated"
    if "\n" in source or "\n" in target or len(source) > MAX_CHARS or len(target) > MAX_CHARS:
        return "multi-line or long"
    if not any(c.isalpha() for c in source):
        return "no letters"
    if source == target:
        return "identical"
    if not placeholders_match(source, target):
        return "placeholders differ"
    return source, target


# --------------------------------------------------------------------------------------- ui-strings datasets
def catalog_help(locale_dir: Path, locale: str) -> str:
    return (f"no gettext catalogs in {locale_dir / locale / 'LC_MESSAGES'} (the ui-strings datasets read the "
            f"installed translations). Install Debian packages that ship them, e.g. `apt-get install "
            f"{' '.join(CATALOG_PACKAGES[:6])}`; on a slim image also remove the path-exclude of /usr/share/locale "
            "in /etc/dpkg/dpkg.cfg.d/ and reinstall them")


def catalog_pairs(locale_dir: Path, locale: str) -> tuple[dict[str, list[Pair]], dict[str, int]]:
    """`{catalog: [Pair]}` of every catalog of `locale` (cleaned, deduplicated by source across catalogs in name
    order) and the counts of messages read and dropped by reason."""
    folder = locale_dir / locale / "LC_MESSAGES"
    files = sorted(folder.glob("*.mo")) if folder.is_dir() else []
    if not files:
        from .datasets import DatasetFetchError

        raise DatasetFetchError(catalog_help(locale_dir, locale))
    counts: dict[str, int] = {"catalogs": len(files), "messages": 0}
    seen: set[str] = set()
    catalogs: dict[str, list[Pair]] = {}
    for file in files:
        kept = []
        for msgid, msgstr in read_mo(file):
            counts["messages"] += 1
            cleaned = clean_pair(msgid, msgstr)
            if isinstance(cleaned, str):
                counts[f"dropped: {cleaned}"] = counts.get(f"dropped: {cleaned}", 0) + 1
                continue
            if cleaned[0] in seen:
                counts["dropped: duplicate source"] = counts.get("dropped: duplicate source", 0) + 1
                continue
            seen.add(cleaned[0])
            kept.append(Pair(cleaned[0], cleaned[1], file.name))
        catalogs[file.stem] = kept
    return catalogs, counts


def assign_catalogs(sizes: dict[str, int], seed: int = SPLIT_SEED) -> dict[str, str]:
    """`{catalog: split}`: catalogs in a seeded shuffle of their sorted names go to test until it holds
    HELD_OUT_FRACTION["test"] of the pairs, then to validation; a catalog that would take a split past OVERSHOOT
    times its share is skipped (it stays in train, as do all the rest) unless all would: then the smallest."""
    total = sum(sizes.values())
    order = sorted(sizes)
    random.Random(seed).shuffle(order)
    split_of = {name: "train" for name in order}
    for split in ("test", "validation"):
        goal, held = HELD_OUT_FRACTION[split] * total, 0
        for name in order:
            if held >= goal:
                break
            if split_of[name] == "train" and 0 < sizes[name] and held + sizes[name] <= OVERSHOOT * goal:
                split_of[name] = split
                held += sizes[name]
        left = [name for name in order if split_of[name] == "train" and sizes[name] > 0]
        if held == 0 and len(left) > 1:  # every catalog overshoots: the smallest one still makes a split
            split_of[min(left, key=lambda name: sizes[name])] = split
    return split_of


def build_ui_strings(name: str, locale_dir: str | Path = LOCALE_DIR, seed: int = SPLIT_SEED) -> ParallelSplits:
    """The named ui-strings dataset from the catalogs under `locale_dir` (see the module docstring)."""
    info = parallel_info(name)
    locale_dir = Path(locale_dir)
    catalogs, counts = catalog_pairs(locale_dir, info.locale)
    split_of = assign_catalogs({k: len(v) for k, v in catalogs.items()}, seed)
    # Dedup across catalogs kept the first (name order) copy of a source, so a held-out catalog may have lost a
    # string to a training catalog: never the other way round, and nothing left is shared between splits.
    splits: dict[str, list[Pair]] = {s: [] for s in SPLIT_NAMES}
    for catalog in sorted(catalogs):
        splits[split_of[catalog]].extend(catalogs[catalog])
    stats = {**counts, "pairs": {k: len(v) for k, v in splits.items()},
             "catalogs_by_split": {s: sorted(c for c, t in split_of.items() if t == s) for s in SPLIT_NAMES}}
    return ParallelSplits(splits, name, info.target_language, stats)


def ui_strings_text_file(name: str, locale_dir: str | Path = LOCALE_DIR) -> Path:
    """Both languages' text of the dataset's training catalogs as a bert-layout corpus (a catalog per document, a
    string per line: source, then its translation), for denoising pretraining and tokenizers; validation and test
    catalogs are left out. Rewritten on each call (the installed catalogs may change) into the cache."""
    from ..files import atomic_write_text
    from .datasets import cache_dir

    train = build_ui_strings(name, locale_dir)["train"]
    documents: dict[str, list[str]] = {}
    for pair in train:
        documents.setdefault(pair.origin, []).extend((pair.source, pair.target))
    out = cache_dir() / "datasets" / name / "train.bert.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n\n".join("\n".join(lines) for lines in documents.values()) + "\n")
    return out


# ------------------------------------------------------------------------------------------------- files
_DATA_SUFFIXES = (".csv", ".tsv", ".tab", ".jsonl", ".ndjson")


def load_pairs(path: str | Path, source_column: str = "source", target_column: str = "target") -> list[Pair]:
    """Source / target pairs of a CSV / TSV (header row) or JSONL file; DataError naming file and line for a
    missing column, an empty or non-string text, or bytes that are not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    delim = _file_format(path, None)
    columns = (source_column, target_column)
    rows = _iter_jsonl(path, columns) if delim is None else _iter_delimited(path, delim, columns)
    pairs = []
    with _utf8_errors_named(path):
        for line, record in rows:
            where = f"{path}:{line}"
            pairs.append(Pair(_text_value(record[source_column], source_column, where),
                              _text_value(record[target_column], target_column, where), where))
    return pairs


def load_parallel_splits(data: str, source_column: str = "source", target_column: str = "target",
                         validation_file: str | None = None, test_file: str | None = None,
                         seed: int = 0) -> ParallelSplits:
    """`{"train", "validation"[, "test"]}` pairs of a named dataset, a file (split 80/10/10, seeded) or a folder of
    train / validation / test files; `validation_file` / `test_file` replace those splits."""
    if data in _PARALLEL:
        splits = build_ui_strings(data)
    else:
        path = Path(data)
        if path.is_dir():
            files = split_files(path, _DATA_SUFFIXES, ".csv, .tsv or .jsonl files")
            found = {k: load_pairs(f, source_column, target_column) for k, f in files.items()}
        elif path.is_file():
            found = {"train": load_pairs(path, source_column, target_column)}
        else:
            raise DataError(f"{data!r} is neither a parallel dataset ({', '.join(parallel_dataset_names())}) "
                            "nor an existing file or folder")
        splits = ParallelSplits(found, str(data))
    if validation_file:
        splits["validation"] = load_pairs(validation_file, source_column, target_column)
    if test_file:
        splits["test"] = load_pairs(test_file, source_column, target_column)
    if not splits.get("train"):
        raise DataError(f"{data}: no training pairs")
    if "validation" not in splits and "test" not in splits:
        splits.update(zip(SPLIT_NAMES, split_examples(splits["train"], (0.8, 0.1, 0.1), seed=seed)))
    elif "validation" not in splits:
        splits["train"], splits["validation"] = split_examples(splits["train"], (0.9, 0.1), seed=seed)
    for name in ("train", "validation"):
        if not splits[name]:
            raise DataError(f"{data}: the {name} split is empty (too few pairs to split)")
    if "test" in splits and not splits["test"]:
        del splits["test"]
    ordered = {k: splits[k] for k in SPLIT_NAMES if k in splits}
    return ParallelSplits(ordered, splits.name, splits.target_language, splits.stats)


def both_sides_text(pairs: Iterable[Pair]) -> list[str]:
    """Source and target texts of `pairs`, interleaved (a joint tokenizer's or a denoising corpus's text)."""
    return [text for pair in pairs for text in (pair.source, pair.target)]



# ---------------------------------------------------------------------------------------------- features
def token_ids(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Ids of `texts` as a seq2seq model reads and writes them: the tokenizer's own special tokens (Marian's and
    T5's `</s>`, BART's `<s> ... </s>`), then EOS appended when its template adds none (a tokenizer trained by
    lmforge for a from-scratch model), at most `max_length` ids (EOS kept last)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token: a seq2seq model needs one to end its outputs")
    rows = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    out = []
    for ids in rows:
        ids = list(ids)
        if not ids or ids[-1] != eos:
            ids = ids[:max_length - 1] + [eos]
        out.append(ids)
    return out


def pair_features(pairs: Sequence[Pair], tokenizer, max_source_length: int,
                  max_target_length: int) -> list[dict[str, list[int]]]:
    """`{"input_ids", "attention_mask", "labels"}` per pair (teacher forcing: the model shifts the labels right
    after its decoder start token to make the decoder's inputs)."""
    sources = token_ids(tokenizer, [p.source for p in pairs], max_source_length)
    targets = token_ids(tokenizer, [p.target for p in pairs], max_target_length)
    return [{"input_ids": s, "attention_mask": [1] * len(s), "labels": t} for s, t in zip(sources, targets)]


__all__ = ["Pair", "ParallelInfo", "ParallelSplits", "both_sides_text", "build_ui_strings", "clean_pair",
           "load_pairs", "load_parallel_splits", "pair_features", "parallel_dataset_names", "parallel_info", "placeholder_signature",
           "placeholder_survival", "placeholders", "placeholders_match", "read_mo", "strip_accelerators", "token_ids",
           "ui_strings_text_file"]
