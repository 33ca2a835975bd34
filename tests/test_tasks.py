"""Task data loading, label maps, splits, CoNLL, sub-token alignment, encoding and batching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmforge.data.batches import length_grouped_order
from lmforge.data.collators import (
    align_labels_to_subtokens,
    encode_classification,
    encode_token_classification,
    pad_collate,
)
from lmforge.data.labelled import DataError, Example, TaggedSentence, load_conll, load_examples
from lmforge.data.labels import LabelMap
from lmforge.data.splits import split_examples


def write(path: Path, text: str, bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


# ------------------------------------------------------------------------------------- parsing


def test_csv_with_bom_quotes_and_pairs(tmp_path):
    p = write(
        tmp_path / "train.csv",
        'id,premise,hypothesis,label\n1,"A man, walking",He walks,entailment\n\n2,"Two\nlines",x,neutral\n',
        bom=True,
    )
    exs = load_examples(p, text_column="premise", text_pair_column="hypothesis")
    assert [(e.text, e.text_pair, e.label) for e in exs] == [
        ("A man, walking", "He walks", "entailment"),
        ("Two\nlines", "x", "neutral"),
    ]
    # sources are file:line of the record's first line (line 3 is blank)
    assert exs[0].source == f"{p}:2" and exs[1].source == f"{p}:4"


def test_tsv_no_quote_processing(tmp_path):
    p = write(tmp_path / "dev.tsv", "sentence\tlabel\nit's \"great\tpositive\nbad\tnegative\n")
    exs = load_examples(p, text_column="sentence")
    assert [e.text for e in exs] == ["it's \"great", "bad"]
    assert [e.label for e in exs] == ["positive", "negative"]
    # explicit delimiter overrides the extension
    q = write(tmp_path / "data.txt", "text;label\nhello;a\n")
    assert load_examples(q, delimiter=";")[0].label == "a"


def test_jsonl_single_multi_regression(tmp_path):
    p = write(
        tmp_path / "d.jsonl",
        "\n".join(
            json.dumps(r)
            for r in [
                {"text": "a", "label": 1, "tags": ["x", "y"], "score": 0.5},
                {"text": "b", "label": "neg", "tags": "y|z", "score": "2"},
                {"text": "c", "label": "neg", "tags": [], "score": -1},
            ]
        ),
        bom=True,
    )
    assert [e.label for e in load_examples(p)] == ["1", "neg", "neg"]
    multi = load_examples(p, label_column="tags", task="multi_label")
    assert [e.label for e in multi] == [["x", "y"], ["y", "z"], []]
    reg = load_examples(p, label_column="score", task="regression")
    assert [e.label for e in reg] == [0.5, 2.0, -1.0]
    unlabelled = load_examples(p, label_column=None)
    assert all(e.label is None for e in unlabelled)


def test_multi_label_in_csv(tmp_path):
    p = write(tmp_path / "m.csv", "text,labels\nhi,a|b\nyo, b | c |\nnone,\n")
    exs = load_examples(p, label_column="labels", task="multi_label")
    assert [e.label for e in exs] == [["a", "b"], ["b", "c"], []]


@pytest.mark.parametrize(
    "name,content,kwargs,pieces",
    [
        ("a.csv", "text,label\nx,1\n", {"label_column": "gold"}, [":1", "'gold'", "'text', 'label'"]),
        ("b.csv", "text,label\nx,1\n  ,0\n", {}, [":3", "empty text"]),
        ("c.csv", "text,label\nx,1\ny,1,extra\n", {}, [":3", "expected 2 fields", "found 3"]),
        ("d.jsonl", '{"text": "x", "label": "a"}\n{"text": "y", "label": \n', {}, [":2", "invalid JSON"]),
        ("e.jsonl", '{"text": "x", "label": "a"}\n\n["y"]\n', {}, [":3", "JSON object"]),
        ("f.jsonl", '{"text": "x"}\n', {}, [":1", "'label'", "'text'"]),
        ("g.tsv", "text\tlabel\nx\t1.5\ny\thigh\n", {"task": "regression"}, [":3", "number", "'high'"]),
        ("h.csv", "text,label\nx,nan\n", {"task": "regression"}, [":2", "finite"]),
        ("i.csv", "text,label\nx,\n", {}, [":2", "empty label"]),
        ("j.csv", "text,pair,label\nx,,a\n", {"text_pair_column": "pair"}, [":2", "empty text", "'pair'"]),
    ],
)
def test_loader_errors_name_file_and_line(tmp_path, name, content, kwargs, pieces):
    p = write(tmp_path / name, content)
    with pytest.raises(DataError) as info:
        load_examples(p, **kwargs)
    msg = str(info.value)
    assert name in msg
    for piece in pieces:
        assert piece in msg, (piece, msg)


@pytest.mark.parametrize("name, header, row, load", [
    ("data.csv", "text,label", "{text},pos", load_examples),
    ("data.tsv", "text\tlabel", "{text}\tpos", load_examples),
    ("data.jsonl", None, '{{"text": "{text}", "label": "pos"}}', load_examples),
    ("data.conll", None, "{text} O\n", load_conll),
])
def test_bytes_that_are_not_utf8_name_file_line_and_column(tmp_path, name, header, row, load):
    # 400 good lines (more than one 8 KB decoding chunk) then a latin-1 "\xff" after a UTF-8 "é".
    lines = ([header] if header else []) + [row.format(text=f"café{i}") for i in range(400)]
    bad_line = row.format(text="café\xff")
    lines.append(bad_line)
    path = tmp_path / name
    path.write_bytes("\n".join(lines).encode("utf-8").replace(b"\xc3\xbf", b"\xff") + b"\n")
    lineno = sum(line.count("\n") + 1 for line in lines[:-1]) + 1
    column = bad_line.index("\xff") + 1  # characters, not bytes
    with pytest.raises(DataError) as info:
        load(path)
    assert str(info.value) == f"{path}:{lineno}: not valid UTF-8 (byte 0xff at column {column}); re-save the file as UTF-8"


def test_loader_bad_format_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_examples(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="format"):
        load_examples(write(tmp_path / "x.xlsx", "a"))
    with pytest.raises(DataError, match="empty file"):
        load_examples(write(tmp_path / "empty.csv", ""))


# ---------------------------------------------------------------------------------- label maps


def test_label_map_round_trip_and_unseen_label(tmp_path):
    train = [Example("a", label="pos"), Example("b", label="neg"), Example("c", label="pos")]
    lm = LabelMap.from_examples(train)
    id2label, label2id = lm.to_config()
    assert id2label == {0: "neg", 1: "pos"} and label2id == {"neg": 0, "pos": 1}
    # round trip through a JSON config (keys become strings)
    cfg = json.loads(json.dumps({"id2label": id2label, "label2id": label2id}))
    assert LabelMap.from_config(cfg["id2label"], cfg["label2id"]) == lm
    assert lm.encode("pos") == 1 and lm.decode(0) == "neg"

    p = write(tmp_path / "test.csv", "text,label\nfine,pos\nodd,neutral\n")
    dev = load_examples(p)
    with pytest.raises(DataError) as info:
        [lm.encode(e.label, e.source) for e in dev]
    msg = str(info.value)
    assert "test.csv:3" in msg and "'neutral'" in msg and "'neg', 'pos'" in msg

    multi = LabelMap.from_examples([Example("x", label=["b", "a"]), Example("y", label=["c"])])
    assert multi.names == ["a", "b", "c"] and multi.encode_multi(["c", "a"]) == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError):
        LabelMap.from_config({"0": "a", "2": "b"})


def test_split_examples_seeded_and_stratified():
    exs = [Example(str(i), label="a" if i < 60 else "b") for i in range(100)]
    train, dev, test = split_examples(exs, seed=1)
    assert (len(train), len(dev), len(test)) == (80, 10, 10)
    assert {e.text for e in train + dev + test} == {str(i) for i in range(100)}
    again = split_examples(exs, seed=1)
    assert [e.text for e in again[0]] == [e.text for e in train]
    assert [e.text for e in split_examples(exs, seed=2)[0]] != [e.text for e in train]
    # stratified: 60 a -> 48/6/6, 40 b -> 32/4/4
    s_train, s_dev, s_test = split_examples(exs, seed=0, stratify=True)
    assert [sum(e.label == "a" for e in part) for part in (s_train, s_dev, s_test)] == [48, 6, 6]
    assert [len(part) for part in (s_train, s_dev, s_test)] == [80, 10, 10]
    # counts always sum to n (largest remainder): 7 * (.8, .1, .1) = 5.6, .7, .7 -> floors 5, 0, 0;
    # the 2 left over go to the largest remainders (.7, .7) -> 5, 1, 1
    assert [len(p) for p in split_examples(exs[:7], seed=0)] == [5, 1, 1]
    with pytest.raises(ValueError):
        split_examples(exs, fractions=(0.5, 0.2))


# -------------------------------------------------------------------------------------- CoNLL


def test_load_conll(tmp_path):
    p = write(
        tmp_path / "ner.conll",
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nPeter B-PER\nBlackburn I-PER\n",
        bom=True,
    )
    sents = load_conll(p)
    assert [s.tokens for s in sents] == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert [s.tags for s in sents] == [["B-ORG", "O"], ["B-PER", "I-PER"]]
    assert sents[0].source == f"{p}:3" and sents[1].source == f"{p}:7"
    bad = write(tmp_path / "bad.conll", "EU B-ORG\nlonely\n")
    with pytest.raises(DataError, match=r"bad\.conll:2"):
        load_conll(bad)


def test_align_labels_first_subtoken():
    # [CLS] Peter Black ##burn lives [SEP]
    word_ids = [None, 0, 1, 1, 2, None]
    labels = align_labels_to_subtokens(word_ids, ["B-PER", "I-PER", "O"], {"O": 0, "B-PER": 1, "I-PER": 2})
    assert labels == [-100, 1, 2, -100, 0, -100]
    assert align_labels_to_subtokens(word_ids, [5, 6, 7]) == [-100, 5, 6, -100, 7, -100]
    with pytest.raises(DataError, match="x.conll:4.*'B-LOC'"):
        align_labels_to_subtokens([0], ["B-LOC"], LabelMap(["O"]), source="x.conll:4")


# ------------------------------------------------------------------------------ encode & batch


@pytest.fixture
def hf_tokenizer(minilm_path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(minilm_path))


def test_encode_classification_and_collate(hf_tokenizer):
    exs = [
        Example("a short one", label="pos", source="f:2"),
        Example("a much longer sentence with many more words in it", label="neg", source="f:3"),
    ]
    lm = LabelMap.from_examples(exs)
    feats = encode_classification(exs, hf_tokenizer, lm, max_length=8)
    assert [f["labels"] for f in feats] == [1, 0]
    assert len(feats[1]["input_ids"]) == 8  # truncated
    batch = pad_collate(feats, pad_token_id=hf_tokenizer.pad_token_id)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert all(t.dtype == torch.int64 for t in batch.values())
    n0 = len(feats[0]["input_ids"])
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][0, n0:].eq(hf_tokenizer.pad_token_id).all()
    assert batch["attention_mask"][0].tolist() == [1] * n0 + [0] * (8 - n0)
    # pairs, regression, multi-label
    pair = [Example("q one", "a one", label=0.5), Example("q two", "a two", label=2.0)]
    pf = encode_classification(pair, hf_tokenizer, None, max_length=16)
    assert 1 in pf[0]["token_type_ids"]
    assert pad_collate(pf, 0)["labels"].dtype == torch.float32
    ml = [Example("x", label=["b"]), Example("y", label=["a", "b"])]
    mb = pad_collate(encode_classification(ml, hf_tokenizer, LabelMap(["a", "b"]), 8), 0)
    assert mb["labels"].tolist() == [[0.0, 1.0], [1.0, 1.0]]
    with pytest.raises(DataError, match="f:9"):
        encode_classification([Example("x", label="other", source="f:9")], hf_tokenizer, lm, 8)


def test_encode_token_classification(hf_tokenizer):
    sent = TaggedSentence(["Peter", "Blackburnshire", "lives"], ["B-PER", "I-PER", "O"], "n.conll:1")
    lm = LabelMap.from_examples([sent])
    (feat,) = encode_token_classification([sent], hf_tokenizer, lm, max_length=32)
    ref = hf_tokenizer(sent.tokens, is_split_into_words=True)
    assert feat["input_ids"] == ref["input_ids"] and feat["word_ids"] == ref.word_ids()
    expected = align_labels_to_subtokens(ref.word_ids(), sent.tags, lm)
    assert feat["labels"] == expected and expected.count(-100) >= 3
    (short,) = encode_token_classification([sent], hf_tokenizer, lm, max_length=3)
    assert len(short["input_ids"]) == 3 and short["word_ids"] == [None, 0, None]
    batch = pad_collate([feat, short], pad_token_id=0)
    assert "word_ids" not in batch and batch["labels"][1].tolist()[3:] == [-100] * (len(feat["labels"]) - 3)


def test_pad_collate_plain():
    feats = [{"input_ids": [5, 6, 7], "labels": 1}, {"input_ids": [8], "labels": 0}]
    batch = pad_collate(feats, pad_token_id=9, pad_to_multiple_of=4)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 9], [8, 9, 9, 9]]
    assert batch["labels"].tolist() == [1, 0]


def test_length_grouped_order():
    lengths = [(i * 37) % 101 for i in range(250)]
    order = length_grouped_order(lengths, batch_size=4, seed=0, mega_batch_mult=5)
    assert sorted(order) == list(range(250))
    assert order == length_grouped_order(lengths, batch_size=4, seed=0, mega_batch_mult=5)
    assert order != length_grouped_order(lengths, batch_size=4, seed=1, mega_batch_mult=5)
    batches = [order[i : i + 4] for i in range(0, 250, 4)]
    # within each mega-batch (20 indices) lengths are sorted, so batches span small ranges
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 30  # random batches of 4 from 0..100 would spread ~50
    # batches of the sorted mega-batches are non-increasing inside
    assert all(all(lengths[b[j]] >= lengths[b[j + 1]] for j in range(len(b) - 1)) for b in batches)
    assert len(batches[-1]) == 2  # the short batch is last
