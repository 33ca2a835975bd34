"""train_tokenizer: WordPiece and byte-level BPE on a tiny generated English + Chinese corpus."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from lmforge.tokenizers import AutoTokenizer, Tokenizer, train_tokenizer

transformers = pytest.importorskip("transformers")

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "language", "model", "training", "token", "data", "running", "runner", "walking", "talking", "played", "playing", "player"]
CHINESE = "我爱自然语言处理机器学习深度模型"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SAMPLE = ["The quick brown fox, jumping!", "我爱语言模型"]
PAIR = ["lazy dog", "机器学习"]


def corpus(n: int = 300, seed: int = 0) -> Iterator[str]:
    """A generator (no len): training must stream it."""
    rng = random.Random(seed)
    for _ in range(n):
        english = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10)))
        chinese = "".join(rng.choice(CHINESE) for _ in range(rng.randint(2, 6)))
        yield f"{english.capitalize()}, {chinese}。 {rng.choice(WORDS)}!"


def as_dict(enc) -> dict:
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in dict(enc).items()}


@pytest.fixture(scope="module")
def wordpiece_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wordpiece")
    tok = train_tokenizer(corpus(), folder, kind="wordpiece", vocab_size=300, min_frequency=2)
    return folder, tok


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bpe")
    tok = train_tokenizer(corpus(), folder, kind="bpe", vocab_size=400, min_frequency=2, lowercase=False)
    return folder, tok


def test_wordpiece_special_token_layout(wordpiece_dir):
    _, tok = wordpiece_dir
    assert isinstance(tok, Tokenizer)
    assert tok.convert_ids_to_tokens(list(range(5))) == SPECIALS
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (
        0, 1, 2, 3, 4)
    assert 5 < tok.vocab_size <= 300
    ids = tok("hello", "world")["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3 and ids.count(3) == 2


def test_wordpiece_chinese_characters_are_single_tokens(wordpiece_dir):
    _, tok = wordpiece_dir
    assert tok.tokenize("我爱自然语言处理") == list("我爱自然语言处理")
    assert tok.tokenize("The FOX") == ["the", "fox"]  # lowercased, accents stripped by default
    assert "," in tok.tokenize("dog,fox")  # punctuation split off


def test_wordpiece_folder_loads_in_lmforge_and_transformers(wordpiece_dir):
    folder, tok = wordpiece_dir
    ours = AutoTokenizer.from_pretrained(folder)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    kwargs = {"padding": True, "return_offsets_mapping": True}
    expected = as_dict(theirs(SAMPLE, PAIR, **kwargs))
    assert as_dict(ours(SAMPLE, PAIR, **kwargs)) == expected
    assert as_dict(tok(SAMPLE, PAIR, **kwargs)) == expected
    ids = expected["input_ids"][1]
    assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)


def test_wordpiece_options_are_respected(tmp_path):
    tok = train_tokenizer(corpus(100), tmp_path, vocab_size=200, lowercase=False, tokenize_chinese_chars=False)
    assert tok.tokenize("The")[0].startswith("T")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert tok(SAMPLE)["input_ids"] == theirs(SAMPLE)["input_ids"]


def test_bpe_special_token_layout_and_round_trip(bpe_dir):
    _, tok = bpe_dir
    assert tok.convert_ids_to_tokens(list(range(5))) == SPECIALS
    sentence = "The quick brown fox jumps over the lazy dog."
    ids = tok.encode(sentence)
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.decode(ids, skip_special_tokens=True) == sentence
    assert tok.decode(tok.encode("我爱机器学习 émoji 😀"), skip_special_tokens=True) == "我爱机器学习 émoji 😀"


def test_bpe_folder_loads_in_lmforge_and_transformers(bpe_dir):
    folder, _tok = bpe_dir
    ours = AutoTokenizer.from_pretrained(folder)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    kwargs = {"padding": True, "return_offsets_mapping": True}
    expected = as_dict(theirs(SAMPLE, PAIR, **kwargs))
    assert as_dict(ours(SAMPLE, PAIR, **kwargs)) == expected
    assert ours.decode(ours.encode(SAMPLE[0]), skip_special_tokens=True) == SAMPLE[0]
    assert ours.decode(expected["input_ids"][0]) == theirs.decode(expected["input_ids"][0])
    assert theirs.pad_token_id == ours.pad_token_id == 0 and theirs.mask_token_id == ours.mask_token_id == 4


def test_bpe_keeps_frequent_chinese_characters_whole(bpe_dir):
    _, tok = bpe_dir
    # Each ideograph is isolated before byte-level BPE, so frequent ones merge into one token each.
    assert len(tok.tokenize("我爱")) == 2


def test_training_streams_and_validates(tmp_path):
    consumed = []

    def stream():
        for line in corpus(50):
            consumed.append(line)
            yield line

    train_tokenizer(stream(), tmp_path / "a", vocab_size=100)
    assert len(consumed) == 50
    with pytest.raises(ValueError, match="kind"):
        train_tokenizer(corpus(5), tmp_path / "b", kind="wordlevel")
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(corpus(5), tmp_path / "c", vocab_size=3)


def test_model_input_names_follow_the_model_family_when_the_folder_does_not_say(bpe_dir, tmp_path):
    source, _ = bpe_dir
    import json
    import shutil

    folder = tmp_path / "decoder"
    shutil.copytree(source, folder)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    del config["model_input_names"]
    config_file.write_text(json.dumps(config), encoding="utf-8")
    assert "token_type_ids" in AutoTokenizer.from_pretrained(folder)("a b")  # no config.json: BERT's
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}), encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.model_input_names == ["input_ids", "attention_mask"]
    assert set(tokenizer("a b")) == {"input_ids", "attention_mask"}
