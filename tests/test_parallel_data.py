"""Parallel data: the .mo reader, placeholder rules, accelerator stripping, the ui-strings datasets built from
fake catalogs (split by catalog, deduplicated, deterministic), parallel files with file:line errors."""

from __future__ import annotations

import gettext
import json
from pathlib import Path

import pytest
from mo_helpers import write_mo

from lmforge.data.datasets import DatasetFetchError
from lmforge.data.labelled import DataError
from lmforge.data.parallel import (
    build_ui_strings,
    clean_pair,
    load_pairs,
    load_parallel_splits,
    placeholder_signature,
    placeholder_survival,
    placeholders,
    read_mo,
    strip_accelerators,
    token_ids,
    ui_strings_text_file,
)


def test_read_mo_matches_gettext(tmp_path):
    path = write_mo(tmp_path / "a.mo", [("Hello %s", "你好 %s"), ("menu\x04_Open", "打开(_O)"),
                                        ("%d file\x00%d files", "%d 个文件\x00unused")])
    pairs = dict(read_mo(path))
    with open(path, "rb") as f:
        reference = gettext.GNUTranslations(f)
    assert pairs["Hello %s"] == reference.gettext("Hello %s")
    assert pairs["_Open"] == reference.pgettext("menu", "_Open")  # context dropped from the msgid
    assert pairs["%d file"] == "%d 个文件"  # plural: singular msgid, first form
    assert "" not in pairs  # header left out


def test_read_mo_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.mo"
    bad.write_bytes(b"not a catalog at all, just some bytes")
    with pytest.raises(DataError, match="bad.mo: not a gettext .mo file"):
        read_mo(bad)


def test_placeholders_kept_in_order():
    assert placeholders("%s of %d, %1$s, %(name)s, {0}, {name}, {}, 100%%") == [
        "%s", "%d", "%1$s", "%(name)s", "{0}", "{name}", "{}"]
    assert placeholders("%-10.3lf and %lu: %m") == ["%-10.3lf", "%lu", "%m"]
    # unnumbered ones keep their order; numbered / named ones may move
    assert placeholder_signature("%s then %d") != placeholder_signature("%d then %s")
    assert placeholder_signature("%1$s then %2$d") == placeholder_signature("%2$d 然后 %1$s")
    assert placeholder_signature("{a} {b}") == placeholder_signature("{b} {a}")


def test_placeholder_survival():
    sources = ["open %s", "%d of %d", "plain text"]
    assert placeholder_survival(sources, ["打开 %s", "%d 的 %d", "x"]) == 1.0
    assert placeholder_survival(sources, ["打开", "%d 的 %d", "x"]) == 0.5
    assert placeholder_survival(["no placeholders"], ["x"]) is None


def test_accelerators_stripped():
    assert strip_accelerators("_Open") == "Open"
    assert strip_accelerators("打开(_O)") == "打开"
    assert strip_accelerators("Save _As…") == "Save As…"
    assert strip_accelerators("LC_ALL is set") == "LC_ALL is set"  # an identifier keeps its underscore
    assert strip_accelerators("%s_%d") == "%s_%d"


@pytest.mark.parametrize("msgid,msgstr,reason", [
    ("Open", "", "untranslated"),
    ("line one\nline two", "一\n二", "multi-line or long"),
    ("123", "一二三", "no letters"),
    ("Status", "Status", "identical"),
    ("%s copied", "已复制", "placeholders differ"),
])
def test_clean_pair_drops(msgid, msgstr, reason):
    assert clean_pair(msgid, msgstr) == reason


def fake_locale(root: Path, locale: str = "zh_CN", catalogs: int = 12, per: int = 10) -> Path:
    for c in range(catalogs):
        messages = [(f"message {i} of catalog {c} with %s", f"目录 {c} 的消息 {i} %s") for i in range(per)]
        messages.append(("Shared string", f"共享 {c}"))  # in every catalog: kept once
        write_mo(root / locale / "LC_MESSAGES" / f"pkg{c:02d}.mo", messages)
    return root


def test_ui_strings_split_by_catalog(tmp_path):
    root = fake_locale(tmp_path)
    splits = build_ui_strings("ui-strings-en-zh", locale_dir=root)
    assert set(splits) == {"train", "validation", "test"}
    assert all(splits.values())
    catalogs = {name: {p.origin for p in pairs} for name, pairs in splits.items()}
    assert not catalogs["train"] & catalogs["test"] and not catalogs["train"] & catalogs["validation"]
    assert not catalogs["validation"] & catalogs["test"]
    sources = [p.source for pairs in splits.values() for p in pairs]
    assert len(sources) == len(set(sources)) == 12 * 10 + 1  # "Shared string" deduplicated
    assert splits.stats["dropped: duplicate source"] == 11
    assert splits.stats["pairs"] == {k: len(v) for k, v in splits.items()}
    assert splits.target_language == "zh"
    again = build_ui_strings("ui-strings-en-zh", locale_dir=root)
    assert {k: [p.source for p in v] for k, v in again.items()} == {k: [p.source for p in v] for k, v in splits.items()}


def test_ui_strings_text_leaves_held_out_catalogs_out(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    root = fake_locale(tmp_path / "locale")
    splits = build_ui_strings("ui-strings-en-zh", locale_dir=root)
    lines = set(ui_strings_text_file("ui-strings-en-zh", locale_dir=root).read_text(encoding="utf-8").splitlines())
    assert {p.source for p in splits["train"]} | {p.target for p in splits["train"]} <= lines
    assert not lines & {p.source for p in splits["test"] + splits["validation"]}


def test_ui_strings_missing_catalogs_names_packages(tmp_path):
    with pytest.raises(DatasetFetchError, match="apt-get install libc-l10n"):
        build_ui_strings("ui-strings-en-de", locale_dir=tmp_path)


def test_pairs_from_files(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("source\ttarget\nOpen\t打开\nClose\t关闭\n", encoding="utf-8")
    pairs = load_pairs(tsv)
    assert [(p.source, p.target, p.origin) for p in pairs] == [("Open", "打开", f"{tsv}:2"), ("Close", "关闭", f"{tsv}:3")]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(json.dumps({"en": "Open", "zh": "打开"}) + "\n" + json.dumps({"en": "Close"}) + "\n",
                     encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs.jsonl:2: missing column 'zh'"):
        load_pairs(jsonl, "en", "zh")
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text("source,target\nOpen,\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs.csv:2: empty text in column 'target'"):
        load_pairs(csv_file)


def test_lone_file_split_80_10_10(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("source\ttarget\n" + "".join(f"s{i}\tt{i}\n" for i in range(50)), encoding="utf-8")
    splits = load_parallel_splits(str(tsv), seed=3)
    assert {k: len(v) for k, v in splits.items()} == {"train": 40, "validation": 5, "test": 5}
    assert [p.source for p in splits["test"]] == [p.source for p in load_parallel_splits(str(tsv), seed=3)["test"]]


class _NoTemplate:
    """A tokenizer whose template adds nothing (as lmforge's trained byte-level BPE)."""

    eos_token_id = 0

    def __call__(self, texts, truncation, max_length):
        return {"input_ids": [[5 + len(w) for w in t.split()][:max_length] for t in texts]}


def test_token_ids_end_with_eos():
    assert token_ids(_NoTemplate(), ["a bb ccc", "x y z w v"], max_length=4) == [[6, 7, 8, 0], [6, 6, 6, 0]]


@pytest.mark.slow
def test_real_catalogs_when_present():
    if not any(Path("/usr/share/locale/zh_CN/LC_MESSAGES").glob("*.mo")):
        pytest.skip("no zh_CN gettext catalogs on this machine")
    splits = build_ui_strings("ui-strings-en-zh")
    sizes = {k: len(v) for k, v in splits.items()}
    assert sizes["train"] > 1000 and sizes["validation"] > 100 and sizes["test"] > 100
    assert all(placeholder_signature(p.source) == placeholder_signature(p.target) for p in splits["test"])
