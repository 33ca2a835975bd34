"""HF tokenizer folders: file names, reading tokenizer_config.json / special_tokens_map.json / vocab.txt,
and building a BERT WordPiece backend from a vocab.txt (that file format is BERT's)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, decoders, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers.models import WordPiece

from .templates import bert_normalizer, bert_template

TOKENIZER_FILE = "tokenizer.json"


VOCAB_FILE = "vocab.txt"


TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"


def token_content(value: Any) -> str | None:
    """Special tokens appear as plain strings or as serialised AddedToken dicts ({"content": ...})."""
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get("content")
    return str(value)


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise TypeError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def read_vocab_txt(path: Path) -> dict[str, int]:
    # Same reading rule as transformers' `load_vocab`: one token per line, only "\n" stripped,
    # later duplicates win. (`WordPiece.from_file` strips all trailing whitespace, which differs.)
    vocab: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            vocab[line.rstrip("\n")] = index
    if not vocab:
        raise ValueError(f"vocabulary file {path} is empty")
    return vocab


def backend_json(backend: BackendTokenizer) -> dict[str, Any]:
    return json.loads(backend.to_str())


def sync_bert_normalizer(backend: BackendTokenizer, config: dict[str, Any]) -> None:
    """Apply tokenizer_config's BERT flags to a tokenizer.json BertNormalizer, as transformers does.

    transformers' BertTokenizer builds its normaliser from `do_lower_case` / `strip_accents` /
    `tokenize_chinese_chars`, so when the config states them they beat tokenizer.json. Flags the config
    does not state keep tokenizer.json's value (transformers would use its defaults, which can silently
    lowercase a cased model).
    """
    normalizer = backend_json(backend).get("normalizer") or {}
    keys = ("do_lower_case", "strip_accents", "tokenize_chinese_chars")
    if normalizer.get("type") != "BertNormalizer" or not any(k in config for k in keys):
        return
    backend.normalizer = bert_normalizer(
        lowercase=bool(config.get("do_lower_case", normalizer.get("lowercase", True))),
        strip_accents=config.get("strip_accents", normalizer.get("strip_accents")),
        tokenize_chinese_chars=bool(config.get("tokenize_chinese_chars", normalizer.get("handle_chinese_chars", True))),
        clean_text=bool(normalizer.get("clean_text", True)),
    )


def build_bert_backend(
    vocab: dict[str, int], config: dict[str, Any], special: dict[str, str | None]
) -> BackendTokenizer:
    """The BERT WordPiece pipeline for a folder that has only vocab.txt (what transformers builds)."""
    unk, cls_token, sep = special["unk_token"], special["cls_token"], special["sep_token"]
    assert unk is not None and cls_token is not None and sep is not None
    backend = BackendTokenizer(WordPiece(vocab, unk_token=unk, continuing_subword_prefix="##",
                                         max_input_chars_per_word=100))
    backend.normalizer = bert_normalizer(
        lowercase=bool(config.get("do_lower_case", True)),
        strip_accents=config.get("strip_accents"),
        tokenize_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
        clean_text=bool(config.get("clean_text", True)),
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    # Special tokens must exist before the template can name their ids.
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in (unk, sep, special["pad_token"], cls_token, special["mask_token"])
                                if t is not None])
    cls_id, sep_id = backend.token_to_id(cls_token), backend.token_to_id(sep)
    assert cls_id is not None and sep_id is not None
    backend.post_processor = bert_template(cls_token, sep, cls_id, sep_id)
    return backend
