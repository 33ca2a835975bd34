"""Tokenizers: an HF-compatible wrapper over the `tokenizers` library, plus tokenizer training.

`Tokenizer` behaves like `transformers`' fast BERT tokenizer (`BertTokenizerFast`, which is
`BertTokenizer` in transformers 5): same ids, token type ids, attention masks, offsets and decoded
text. All the real work (normalisation, WordPiece/BPE, truncation, padding, batching) is done by the
Rust `tokenizers.Tokenizer` held in `.backend`, which data pipelines may also call directly for fast
batch encoding; `.backend` never carries truncation or padding settings between calls.

Folder format (read and written): `tokenizer.json` (preferred) or `vocab.txt` (BERT WordPiece),
`tokenizer_config.json`, `special_tokens_map.json`. Saved folders load in `transformers.AutoTokenizer`.

`train_tokenizer` trains a WordPiece (BERT) or byte-level BPE vocabulary from a stream of texts. Both
kinds start with BERT's special tokens `[PAD] [UNK] [CLS] [SEP] [MASK]` (ids 0-4) and use BERT's
`[CLS] A [SEP] B [SEP]` template, so every BERT head (MLM included) works with either. The same texts
and options give byte-identical files in every process (see `_train_wordpiece_vocab`).

`transformers` is never imported here; the tests compare against it.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers.models import BPE, WordPiece

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"

# Same order as transformers' SPECIAL_TOKENS_ATTRIBUTES, so `all_special_tokens` lists them identically.
SPECIAL_TOKEN_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
BERT_SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
# Ids 0..4 of every tokenizer lmforge trains.
TRAINED_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

DEFAULT_MODEL_MAX_LENGTH = 512
# transformers stores "no limit" as int(1e30); anything above 1e20 means "do not truncate/pad to it".
LARGE_INTEGER = int(1e20)

PADDING_STRATEGIES = ("longest", "max_length", "do_not_pad")
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second", "do_not_truncate")

# CJK ideograph blocks, the same ranges BERT's `_is_chinese_char` (and BertNormalizer) uses.
_CJK_PATTERN = (
    "[\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002b73f"
    "\U0002b740-\U0002b81f\U0002b820-\U0002ceaf\uf900-\ufaff\U0002f800-\U0002fa1f]"
)


class BatchEncoding(dict):
    """Output of `Tokenizer.__call__`: a dict (so `model(**batch)` works) with attribute access.

    `encodings` keeps the backend `tokenizers.Encoding` objects, e.g. for `word_ids()`.
    """

    def __init__(self, data: dict[str, Any] | None = None, encodings: list[Any] | None = None) -> None:
        super().__init__(data or {})
        self.encodings = encodings

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails; keys become attributes (`enc.input_ids`).
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getstate__(self) -> dict[str, Any]:
        # Backend encodings are not needed after pickling (e.g. into DataLoader workers).
        return {"data": dict(self), "encodings": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.update(state["data"])
        self.encodings = state["encodings"]

    def to(self, device: str | torch.device) -> BatchEncoding:
        """Move every tensor value to `device` (in place, like transformers); returns self."""
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                self[key] = value.to(device)
        return self

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """Word index of every token of sequence `batch_index` (None for special/padding tokens)."""
        if not self.encodings:
            raise ValueError("word_ids() needs the backend encodings, which this BatchEncoding does not hold")
        return self.encodings[batch_index].word_ids


def _token_content(value: Any) -> str | None:
    """Special tokens appear as plain strings or as serialised AddedToken dicts ({"content": ...})."""
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get("content")
    return str(value)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise TypeError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _read_vocab_txt(path: Path) -> dict[str, int]:
    # Same reading rule as transformers' `load_vocab`: one token per line, only "\n" stripped,
    # later duplicates win. (`WordPiece.from_file` strips all trailing whitespace, which differs.)
    vocab: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            vocab[line.rstrip("\n")] = index
    if not vocab:
        raise ValueError(f"vocabulary file {path} is empty")
    return vocab


def _bert_template(cls_token: str, sep_token: str, cls_id: int, sep_id: int) -> processors.TemplateProcessing:
    return processors.TemplateProcessing(
        single=f"{cls_token}:0 $A:0 {sep_token}:0",
        pair=f"{cls_token}:0 $A:0 {sep_token}:0 $B:1 {sep_token}:1",
        special_tokens=[(cls_token, cls_id), (sep_token, sep_id)],
    )


def _bert_normalizer(
    lowercase: bool, strip_accents: bool | None, tokenize_chinese_chars: bool, clean_text: bool = True
) -> normalizers.BertNormalizer:
    # strip_accents=None means "follow lowercase", as in original BERT (BertNormalizer does the same).
    return normalizers.BertNormalizer(
        clean_text=clean_text,
        handle_chinese_chars=tokenize_chinese_chars,
        strip_accents=strip_accents,
        lowercase=lowercase,
    )


def _backend_json(backend: BackendTokenizer) -> dict[str, Any]:
    return json.loads(backend.to_str())


class Tokenizer:
    """HF-compatible tokenizer over a `tokenizers.Tokenizer` (`.backend`).

    Build it with `Tokenizer.from_pretrained(folder)` (or `AutoTokenizer.from_pretrained`), or from a
    backend directly: `Tokenizer(backend, special_tokens={"pad_token": "[PAD]", ...})`.
    """

    def __init__(
        self,
        backend: BackendTokenizer,
        *,
        special_tokens: dict[str, str | None] | None = None,
        additional_special_tokens: Sequence[str] = (),
        model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
        padding_side: str = "right",
        truncation_side: str = "right",
        clean_up_tokenization_spaces: bool = False,
        name_or_path: str = "",
        model_input_names: Sequence[str] = ("input_ids", "token_type_ids", "attention_mask"),
        chat_template: str | None = None,
    ) -> None:
        if padding_side not in ("right", "left") or truncation_side not in ("right", "left"):
            raise ValueError(f"padding_side/truncation_side must be 'right' or 'left', got "
                             f"{padding_side!r}/{truncation_side!r}")
        self.backend = backend
        # The `tokenizers` library stores truncation/padding in the object (and tokenizer.json often
        # carries them, e.g. MiniLM's fixed 128). transformers resets them on every call; we drop them
        # once so `.backend.encode_batch` is plain and each call sets exactly what it asks for.
        self.backend.no_truncation()
        self.backend.no_padding()
        self._special: dict[str, str | None] = {attr: None for attr in SPECIAL_TOKEN_ATTRIBUTES}
        for attr, value in (special_tokens or {}).items():
            if attr not in self._special:
                raise ValueError(f"unknown special token attribute {attr!r}; expected one of "
                                 f"{SPECIAL_TOKEN_ATTRIBUTES}")
            self._special[attr] = value
        self.additional_special_tokens = list(additional_special_tokens)
        self.model_max_length = int(model_max_length)
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.name_or_path = name_or_path
        # What __call__ returns by default (decoders take no token_type_ids), and the chat template
        # (Jinja source) carried to tokenizer_config.json.
        self.model_input_names = list(model_input_names)
        self.chat_template = chat_template
        self.pad_token_type_id = 0
        self._lock = threading.Lock()
        self._register_special_tokens()

    def _register_special_tokens(self) -> None:
        # transformers adds every named special token to the backend as a special added token (unless
        # it already is one), so "[MASK]" in raw text maps to its id and decode can skip it. Tokens
        # already in the vocabulary keep their id; new ones are appended.
        existing = {str(t.content) for t in self.backend.get_added_tokens_decoder().values()}
        missing = [t for t in self.all_special_tokens if t not in existing]
        if missing:
            self.backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], **overrides: Any) -> Tokenizer:
        """Load from a folder holding tokenizer.json or vocab.txt (+ optional JSON configs).

        `overrides` replace tokenizer_config.json entries, e.g. `model_max_length=128`.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer folder not found: {folder}")
        config = _read_json(folder / TOKENIZER_CONFIG_FILE)
        special_map = _read_json(folder / SPECIAL_TOKENS_MAP_FILE)
        config.update(overrides)

        # tokenizer_config.json wins over special_tokens_map.json where both name a token.
        special: dict[str, str | None] = {}
        for attr in SPECIAL_TOKEN_ATTRIBUTES:
            value = _token_content(config.get(attr, special_map.get(attr)))
            if value is not None:
                special[attr] = value
        extra = config.get("additional_special_tokens") or config.get("extra_special_tokens") \
            or special_map.get("additional_special_tokens") or []
        extra_tokens = [t for t in (_token_content(v) for v in extra) if t is not None]

        tokenizer_file = folder / TOKENIZER_FILE
        vocab_file = folder / VOCAB_FILE
        if tokenizer_file.is_file():
            backend = BackendTokenizer.from_file(str(tokenizer_file))
            _sync_bert_normalizer(backend, config)
            if backend.model.__class__.__name__ == "WordPiece":
                # A BERT tokenizer.json may name no tokens in the JSON configs: use BERT's defaults.
                for attr, value in BERT_SPECIAL_TOKENS.items():
                    special.setdefault(attr, value)
        elif vocab_file.is_file():
            for attr, value in BERT_SPECIAL_TOKENS.items():
                special.setdefault(attr, value)
            backend = _build_bert_backend(_read_vocab_txt(vocab_file), config, special)
        else:
            raise ValueError(f"no {TOKENIZER_FILE} or {VOCAB_FILE} in tokenizer folder {folder}")

        model_max_length = config.get("model_max_length")
        optional = {k: config[k] for k in ("model_input_names", "chat_template") if config.get(k) is not None}
        return cls(
            backend,
            special_tokens=special,
            additional_special_tokens=extra_tokens,
            model_max_length=DEFAULT_MODEL_MAX_LENGTH if model_max_length is None else int(model_max_length),
            padding_side=config.get("padding_side", "right"),
            truncation_side=config.get("truncation_side", "right"),
            clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
            name_or_path=str(folder),
            **optional,
        )

    # ------------------------------------------------------------------ special tokens

    def _special_id(self, attr: str) -> int | None:
        token = self._special[attr]
        return None if token is None else self.backend.token_to_id(token)

    bos_token = property(lambda self: self._special["bos_token"])
    eos_token = property(lambda self: self._special["eos_token"])
    unk_token = property(lambda self: self._special["unk_token"])
    sep_token = property(lambda self: self._special["sep_token"])
    pad_token = property(lambda self: self._special["pad_token"])
    cls_token = property(lambda self: self._special["cls_token"])
    mask_token = property(lambda self: self._special["mask_token"])
    bos_token_id = property(lambda self: self._special_id("bos_token"))
    eos_token_id = property(lambda self: self._special_id("eos_token"))
    unk_token_id = property(lambda self: self._special_id("unk_token"))
    sep_token_id = property(lambda self: self._special_id("sep_token"))
    pad_token_id = property(lambda self: self._special_id("pad_token"))
    cls_token_id = property(lambda self: self._special_id("cls_token"))
    mask_token_id = property(lambda self: self._special_id("mask_token"))

    @property
    def special_tokens_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in self._special.items() if v is not None}
        if self.additional_special_tokens:
            out["additional_special_tokens"] = list(self.additional_special_tokens)
        return out

    @property
    def all_special_tokens(self) -> list[str]:
        seen: list[str] = []
        for token in [*(self._special[a] for a in SPECIAL_TOKEN_ATTRIBUTES), *self.additional_special_tokens]:
            if token is not None and token not in seen:
                seen.append(token)
        return seen

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    # ------------------------------------------------------------------ vocabulary

    @property
    def vocab_size(self) -> int:
        """Size of the model vocabulary without added tokens (as transformers defines it)."""
        return self.backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> Any:
        """Token(s) to id(s); unknown tokens map to `unk_token_id` (None when there is no unk token)."""
        if isinstance(tokens, str):
            index = self.backend.token_to_id(tokens)
            return self.unk_token_id if index is None else index
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False) -> Any:
        if isinstance(ids, (int, np.integer)):
            return self.backend.id_to_token(int(ids))
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self.backend.id_to_token(int(i)) for i in _to_id_list(ids) if int(i) not in skip]

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        decoder = self.backend.decoder
        return decoder.decode(list(tokens)) if decoder is not None else " ".join(tokens)

    # ------------------------------------------------------------------ encoding

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool = True,
        return_offsets_mapping: bool = False,
        return_special_tokens_mask: bool = False,
        add_special_tokens: bool = True,
    ) -> BatchEncoding:
        """Encode one text, a pair, or a batch (list) of texts/pairs, like transformers' fast tokenizers.

        A single (non-list) input returns flat lists, or (1, T) tensors with `return_tensors`.
        `truncation=True` without `max_length` truncates to `model_max_length`; `max_length` alone
        (padding and truncation unset) also turns on longest-first truncation, as in transformers.
        """
        padding_strategy, truncation_strategy, max_length = self._strategies(padding, truncation, max_length)
        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be None, 'pt' or 'np', got {return_tensors!r}")

        is_batched = isinstance(text, (list, tuple))
        if is_batched:
            if isinstance(text_pair, str):
                raise TypeError("when text is a batch (list), text_pair must be a list of the same length")
            if text_pair is not None and len(text_pair) != len(text):
                raise ValueError(f"batch length of text ({len(text)}) does not match text_pair ({len(text_pair)})")
            inputs: list[Any] = list(zip(text, text_pair)) if text_pair is not None else list(text)
        elif isinstance(text, str):
            # transformers treats an empty-string pair as "no pair" (`if text_pair`); we match it.
            inputs = [(text, text_pair)] if text_pair else [text]
        else:
            raise TypeError(f"text must be a str or a list of str, got {type(text).__name__}")
        for item in inputs:
            for part in item if isinstance(item, tuple) else (item,):
                if not isinstance(part, str):
                    raise TypeError(f"every text must be a str, got {type(part).__name__}")

        encodings = self._encode_batch(inputs, add_special_tokens, padding_strategy, truncation_strategy,
                                       max_length, pad_to_multiple_of)

        # Key order matches transformers' `_convert_encoding`.
        data: dict[str, list[Any]] = {"input_ids": [e.ids for e in encodings]}
        if return_token_type_ids:
            data["token_type_ids"] = [e.type_ids for e in encodings]
        if return_attention_mask:
            data["attention_mask"] = [e.attention_mask for e in encodings]
        if return_special_tokens_mask:
            data["special_tokens_mask"] = [e.special_tokens_mask for e in encodings]
        if return_offsets_mapping:
            data["offset_mapping"] = [e.offsets for e in encodings]

        if return_tensors is not None:
            return BatchEncoding({k: _as_tensor(k, v, return_tensors) for k, v in data.items()}, encodings)
        if not is_batched:
            return BatchEncoding({k: v[0] for k, v in data.items()}, encodings)
        return BatchEncoding(data, encodings)

    def _strategies(
        self, padding: bool | str, truncation: bool | str | None, max_length: int | None
    ) -> tuple[str, str, int | None]:
        """Resolve padding/truncation arguments exactly as transformers' `_get_padding_truncation_strategies`."""
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"
        if padding is True:
            padding_strategy = "longest"
        elif padding is False or padding is None:
            padding_strategy = "do_not_pad"
        elif padding in PADDING_STRATEGIES:
            padding_strategy = str(padding)
        else:
            raise ValueError(f"padding must be a bool or one of {PADDING_STRATEGIES}, got {padding!r}")
        if truncation is True:
            truncation_strategy = "longest_first"
        elif truncation is False or truncation is None:
            truncation_strategy = "do_not_truncate"
        elif truncation in TRUNCATION_STRATEGIES:
            truncation_strategy = str(truncation)
        else:
            raise ValueError(f"truncation must be a bool or one of {TRUNCATION_STRATEGIES}, got {truncation!r}")

        if max_length is None:
            # A "no limit" model_max_length (transformers' 1e30 sentinel) disables the default
            # truncation/padding length instead of using an absurd number.
            if padding_strategy == "max_length":
                if self.model_max_length > LARGE_INTEGER:
                    padding_strategy = "do_not_pad"
                else:
                    max_length = self.model_max_length
            if truncation_strategy != "do_not_truncate":
                if self.model_max_length > LARGE_INTEGER:
                    truncation_strategy = "do_not_truncate"
                else:
                    max_length = self.model_max_length
        if padding_strategy != "do_not_pad" and self.pad_token_id is None:
            raise ValueError("padding was requested but the tokenizer has no pad token (pad_token)")
        return padding_strategy, truncation_strategy, max_length

    def _encode_batch(
        self,
        inputs: list[Any],
        add_special_tokens: bool,
        padding_strategy: str,
        truncation_strategy: str,
        max_length: int | None,
        pad_to_multiple_of: int | None,
    ) -> list[Any]:
        if not inputs:
            return []
        # Truncation/padding live inside the Rust object, so set them for this call only and always
        # restore the previous state; the lock keeps concurrent callers from seeing each other's settings.
        with self._lock:
            saved_truncation = self.backend.truncation
            saved_padding = self.backend.padding
            try:
                if truncation_strategy == "do_not_truncate":
                    self.backend.no_truncation()
                else:
                    self.backend.enable_truncation(
                        max_length, stride=0, strategy=truncation_strategy, direction=self.truncation_side
                    )
                if padding_strategy == "do_not_pad":
                    self.backend.no_padding()
                else:
                    self.backend.enable_padding(
                        direction=self.padding_side,
                        pad_id=self.pad_token_id,
                        pad_type_id=self.pad_token_type_id,
                        pad_token=self.pad_token,
                        length=max_length if padding_strategy == "max_length" else None,
                        pad_to_multiple_of=pad_to_multiple_of,
                    )
                try:
                    return self.backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
                except Exception as err:  # the Rust side raises a bare Exception (e.g. truncation errors)
                    raise ValueError(str(err)) from err
            finally:
                if saved_truncation is None:
                    self.backend.no_truncation()
                else:
                    self.backend.enable_truncation(**saved_truncation)
                if saved_padding is None:
                    self.backend.no_padding()
                else:
                    self.backend.enable_padding(**saved_padding)

    def encode(
        self,
        text: str,
        text_pair: str | None = None,
        add_special_tokens: bool = True,
        *,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
    ) -> list[int]:
        """Ids of one text (or pair), as transformers' `encode`."""
        out = self(text, text_pair, add_special_tokens=add_special_tokens, padding=padding,
                   truncation=truncation, max_length=max_length,
                   return_token_type_ids=False, return_attention_mask=False)
        return out["input_ids"]

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False) -> list[str]:
        """Token strings of `text` (no special tokens by default, as transformers)."""
        inputs: Any = (text, pair) if pair else text
        return self.backend.encode(inputs, add_special_tokens=add_special_tokens).tokens

    # ------------------------------------------------------------------ decoding

    def decode(
        self,
        token_ids: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str:
        """Text of `token_ids` (list, tensor, array or int), matching transformers' `decode`."""
        ids = [int(token_ids)] if isinstance(token_ids, (int, np.integer)) else _to_id_list(token_ids)
        text = self.backend.decode(ids, skip_special_tokens=skip_special_tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        # transformers skips this clean-up for BPE: it was written for WordPiece and deletes real
        # spaces before punctuation in byte-level output.
        if clean_up_tokenization_spaces and self.backend.model.__class__.__name__ != "BPE":
            text = clean_up_tokenization(text)
        return text

    def batch_decode(
        self,
        sequences: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> list[str]:
        rows = sequences.tolist() if isinstance(sequences, (torch.Tensor, np.ndarray)) else sequences
        return [self.decode(row, skip_special_tokens, clean_up_tokenization_spaces) for row in rows]

    # ------------------------------------------------------------------ saving

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> tuple[str, ...]:
        """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json (+ vocab.txt for WordPiece).

        The folder loads in lmforge and in `transformers.AutoTokenizer` with identical encodings.
        """
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        written = [folder / TOKENIZER_FILE, folder / TOKENIZER_CONFIG_FILE, folder / SPECIAL_TOKENS_MAP_FILE]
        self.backend.save(str(folder / TOKENIZER_FILE))

        state = _backend_json(self.backend)
        normalizer = state.get("normalizer") or {}
        is_wordpiece = state.get("model", {}).get("type") == "WordPiece"
        # transformers' BertTokenizer rebuilds its normaliser, pre-tokeniser and decoder from the config
        # flags below, so only claim that class when tokenizer.json really is that BERT pipeline;
        # anything else is loaded verbatim from tokenizer.json by PreTrainedTokenizerFast.
        is_bert = (is_wordpiece and normalizer.get("type") == "BertNormalizer"
                   and (state.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer")

        config: dict[str, Any] = {
            "tokenizer_class": "BertTokenizer" if is_bert else "PreTrainedTokenizerFast",
            "model_max_length": self.model_max_length,
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "model_input_names": list(self.model_input_names),
        }
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        if is_bert:
            config.update(
                do_lower_case=normalizer.get("lowercase", True),
                strip_accents=normalizer.get("strip_accents"),
                tokenize_chinese_chars=normalizer.get("handle_chinese_chars", True),
                clean_text=normalizer.get("clean_text", True),
            )
        config.update(self.special_tokens_map)
        # transformers' BertTokenizer rebuilds the backend from the vocabulary alone, so added tokens
        # must also be listed here to survive (same format transformers writes).
        config["added_tokens_decoder"] = {
            str(index): {
                "content": str(tok.content),
                "lstrip": tok.lstrip,
                "normalized": tok.normalized,
                "rstrip": tok.rstrip,
                "single_word": tok.single_word,
                "special": tok.special,
            }
            for index, tok in sorted(self.backend.get_added_tokens_decoder().items())
        }
        _write_json(folder / TOKENIZER_CONFIG_FILE, config)
        _write_json(folder / SPECIAL_TOKENS_MAP_FILE, self.special_tokens_map)

        if is_wordpiece:
            vocab = self.backend.get_vocab(with_added_tokens=False)
            with open(folder / VOCAB_FILE, "w", encoding="utf-8") as f:
                f.writelines(token + "\n" for token, _ in sorted(vocab.items(), key=lambda kv: kv[1]))
            written.append(folder / VOCAB_FILE)
        return tuple(str(p) for p in written)

    # ------------------------------------------------------------------ misc

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_lock")  # locks cannot be pickled (DataLoader workers pickle the tokenizer)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"Tokenizer(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
                f"model={self.backend.model.__class__.__name__}, model_max_length={self.model_max_length})")


class AutoTokenizer:
    """`AutoTokenizer.from_pretrained(folder)`: the HF entry point; every lmforge tokenizer is a `Tokenizer`."""

    def __init__(self) -> None:
        raise TypeError("use AutoTokenizer.from_pretrained(path)")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], gguf_file: str | os.PathLike[str] | None = None,
                        **overrides: Any) -> Tokenizer:
        """A tokenizer folder, or with `gguf_file` the tokenizer stored in a llama.cpp GGUF file (in the
        folder `path`, or a path of its own)."""
        if gguf_file is not None:
            from .gguf import load_gguf_tokenizer

            return load_gguf_tokenizer(path, gguf_file)
        return Tokenizer.from_pretrained(path, **overrides)


# ---------------------------------------------------------------------- helpers


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization`: drop spaces before punctuation and English contractions."""
    return (
        text.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
        .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
        .replace(" 've", "'ve").replace(" 're", "'re")
    )


def _to_id_list(ids: Any) -> list[int]:
    if isinstance(ids, (torch.Tensor, np.ndarray)):
        ids = ids.tolist()  # a 0-d tensor (e.g. logits.argmax()) gives an int, decoded as one id (as in HF)
    return [int(ids)] if isinstance(ids, int) else [int(i) for i in ids]


def _as_tensor(key: str, rows: list[Any], kind: str) -> Any:
    lengths = {len(r) for r in rows}
    if len(lengths) > 1:
        raise ValueError(f"cannot make a tensor of `{key}`: sequences have different lengths {sorted(lengths)}; "
                         "use padding=True (and truncation=True) for batched tensors")
    if kind == "pt":
        return torch.tensor(rows, dtype=torch.long)
    return np.array(rows, dtype=np.int64)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _sync_bert_normalizer(backend: BackendTokenizer, config: dict[str, Any]) -> None:
    """Apply tokenizer_config's BERT flags to a tokenizer.json BertNormalizer, as transformers does.

    transformers' BertTokenizer builds its normaliser from `do_lower_case` / `strip_accents` /
    `tokenize_chinese_chars`, so when the config states them they beat tokenizer.json. Flags the config
    does not state keep tokenizer.json's value (transformers would use its defaults, which can silently
    lowercase a cased model).
    """
    normalizer = _backend_json(backend).get("normalizer") or {}
    keys = ("do_lower_case", "strip_accents", "tokenize_chinese_chars")
    if normalizer.get("type") != "BertNormalizer" or not any(k in config for k in keys):
        return
    backend.normalizer = _bert_normalizer(
        lowercase=bool(config.get("do_lower_case", normalizer.get("lowercase", True))),
        strip_accents=config.get("strip_accents", normalizer.get("strip_accents")),
        tokenize_chinese_chars=bool(config.get("tokenize_chinese_chars", normalizer.get("handle_chinese_chars", True))),
        clean_text=bool(normalizer.get("clean_text", True)),
    )


def _build_bert_backend(
    vocab: dict[str, int], config: dict[str, Any], special: dict[str, str | None]
) -> BackendTokenizer:
    """The BERT WordPiece pipeline for a folder that has only vocab.txt (what transformers builds)."""
    unk, cls_token, sep = special["unk_token"], special["cls_token"], special["sep_token"]
    assert unk is not None and cls_token is not None and sep is not None
    backend = BackendTokenizer(WordPiece(vocab, unk_token=unk, continuing_subword_prefix="##",
                                         max_input_chars_per_word=100))
    backend.normalizer = _bert_normalizer(
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
    backend.post_processor = _bert_template(cls_token, sep, cls_id, sep_id)
    return backend


# ---------------------------------------------------------------------- training


def train_tokenizer(
    texts: Iterable[str],
    output_dir: str | os.PathLike[str],
    *,
    kind: str = "wordpiece",
    vocab_size: int = 30522,
    min_frequency: int = 2,
    lowercase: bool = True,
    strip_accents: bool | None = None,
    tokenize_chinese_chars: bool = True,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
    length: int | None = None,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a WordPiece (BERT) or byte-level BPE tokenizer on a stream of texts, save it, return it.

    `texts` is consumed once, lazily (never materialised); `length` (or `len(texts)` when it has one)
    only feeds the progress bar. Both kinds reserve ids 0-4 for `[PAD] [UNK] [CLS] [SEP] [MASK]` and use
    BERT's `[CLS] A [SEP] B [SEP]` template. `strip_accents=None` follows `lowercase`.
    `tokenize_chinese_chars` makes every CJK ideograph its own word (so it becomes a single token).
    """
    if kind not in ("wordpiece", "bpe"):
        raise ValueError(f"kind must be 'wordpiece' or 'bpe', got {kind!r}")
    special = list(TRAINED_SPECIAL_TOKENS)
    if vocab_size <= len(special):
        raise ValueError(f"vocab_size must exceed the {len(special)} special tokens, got {vocab_size}")
    pad, unk, cls_token, sep, mask = special

    if length is None and hasattr(texts, "__len__"):
        length = len(texts)  # type: ignore[arg-type]
    backend: BackendTokenizer
    if kind == "wordpiece":
        normalizer = _bert_normalizer(lowercase, strip_accents, tokenize_chinese_chars)
        vocab = _train_wordpiece_vocab(_iter_texts(texts), normalizer, vocab_size=vocab_size,
                                       min_frequency=min_frequency, special=special, show_progress=show_progress,
                                       length=length)
        config = {"do_lower_case": lowercase, "strip_accents": strip_accents,
                  "tokenize_chinese_chars": tokenize_chinese_chars}
        backend = _build_bert_backend(vocab, config, {"unk_token": unk, "sep_token": sep, "pad_token": pad,
                                                      "cls_token": cls_token, "mask_token": mask})
    else:
        # Byte-level BPE never needs [UNK] (every byte is in the alphabet); [UNK] still gets id 1 so the
        # special-token layout is the same for both kinds. Every symbol is in the trainer's alphabet from
        # the start (the 256 byte characters, sorted), so its tie-breaking by symbol id is the same in
        # every process (see _train_wordpiece_vocab for the case where it is not).
        backend = BackendTokenizer(BPE())
        steps: list[normalizers.Normalizer] = []
        if strip_accents or (strip_accents is None and lowercase):
            # NFC afterwards recomposes what StripAccents leaves decomposed (e.g. Hangul).
            steps += [normalizers.NFD(), normalizers.StripAccents(), normalizers.NFC()]
        if lowercase:
            steps.append(normalizers.Lowercase())
        if steps:
            backend.normalizer = normalizers.Sequence(steps)
        # Isolating CJK ideographs keeps each one a single token without inserting spaces, so
        # decoding stays an exact round trip (BertNormalizer's padding spaces would show up in BPE).
        pre: list[pre_tokenizers.PreTokenizer] = []
        if tokenize_chinese_chars:
            pre.append(pre_tokenizers.Split(Regex(_CJK_PATTERN), behavior="isolated"))
        pre.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
        backend.pre_tokenizer = pre_tokenizers.Sequence(pre)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=show_progress)
        backend.train_from_iterator(_iter_texts(texts), trainer=trainer, length=length)

    ids = [backend.token_to_id(t) for t in special]
    if ids != list(range(len(special))):
        raise RuntimeError(f"special tokens did not get ids 0-4 after training: {dict(zip(special, ids))}")
    template = _bert_template(cls_token, sep, ids[2], ids[3])
    if kind == "bpe":
        # ByteLevel post-processing trims the leading-space byte from offsets; the template adds BERT's
        # special tokens.
        backend.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=True), template])
    else:
        backend.post_processor = template

    tokenizer = Tokenizer(
        backend,
        special_tokens={"unk_token": unk, "sep_token": sep, "pad_token": pad, "cls_token": cls_token,
                        "mask_token": mask},
        model_max_length=model_max_length,
        # WordPiece's decoder already joins "##" pieces; transformers' extra clean-up would change text.
        clean_up_tokenization_spaces=False,
    )
    tokenizer.save_pretrained(output_dir)
    # Reload so the returned object is exactly what later runs (and transformers) will see.
    return Tokenizer.from_pretrained(output_dir)


def _iter_texts(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"train_tokenizer expects str texts, got {type(text).__name__}")
        yield text


# Stand-in characters for training (_train_wordpiece_vocab): Unicode's supplementary private-use planes.
_STAND_IN_CODES = (range(0xF0000, 0xFFFFE), range(0x100000, 0x10FFFE))


class _StandIns:
    """Names every character of the training words with a private-use stand-in, a different one for its
    word-initial and its continuing ("##") occurrences, numbered in order of first appearance."""

    def __init__(self) -> None:
        self._codes = itertools.chain(*_STAND_IN_CODES)
        self.initial: dict[str, str] = {}
        self.continuing: dict[str, str] = {}
        self._words: dict[str, str] = {}  # word -> its stand-in spelling (each word is spelled once)

    def _name(self, table: dict[str, str], char: str) -> str:
        if char not in table:
            code = next(self._codes, None)
            if code is None:
                raise ValueError("the corpus has more distinct characters than WordPiece training can name")
            table[char] = chr(code)
        return table[char]

    def spell(self, word: str) -> str:
        spelled = self._words.get(word)
        if spelled is None:
            spelled = self._name(self.initial, word[0]) + "".join(self._name(self.continuing, c) for c in word[1:])
            self._words[word] = spelled
        return spelled

    def restore(self, tokens: Iterable[str]) -> list[str]:
        """The WordPiece tokens that learned stand-in tokens stand for ("##" marks a continuing piece)."""
        initial = {v: k for k, v in self.initial.items()}
        continuing = {v: k for k, v in self.continuing.items()}
        restored = []
        for token in tokens:
            rest = "".join(continuing[c] for c in token[1:])  # only a word's first symbol is initial
            head = initial.get(token[0])
            restored.append(head + rest if head is not None else "##" + continuing[token[0]] + rest)
        return restored


def _train_wordpiece_vocab(
    texts: Iterator[str],
    normalizer: normalizers.Normalizer,
    *,
    vocab_size: int,
    min_frequency: int,
    special: list[str],
    show_progress: bool,
    length: int | None,
) -> dict[str, int]:
    """A WordPiece vocabulary learned as `tokenizers`' WordPieceTrainer does, but the same in every process.

    WordPieceTrainer is a BPE trainer with a "##" prefix. Among pairs of equal count it merges the one
    with the smallest symbol ids; the characters of its alphabet get ids in sorted order, but each "##c"
    gets the next free id when first met while walking the corpus's word counts, a hash map whose order
    changes from process to process (Rust's random hash seeds; neither PYTHONHASHSEED nor
    RAYON_RS_NUM_THREADS / TOKENIZERS_PARALLELISM fix it). So two runs on the same corpus tie-break
    differently and learn different vocabularies. Here every character of the normalised, BERT-split
    words is renamed to a private-use stand-in (word-initial and continuing occurrences to different ones,
    numbered in order of first appearance in the stream), and plain BPE, with no prefix, learns on those
    words: every symbol is then in the sorted alphabet before the first merge, so ids and ties are the
    same in every process. The merges are the ones WordPieceTrainer makes, up to the order of ties.
    """
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    stand_ins = _StandIns()

    def spelled_texts() -> Iterator[str]:
        for text in texts:
            words = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
            yield " ".join(stand_ins.spell(word) for word, _ in words if word)

    learner = BackendTokenizer(BPE())
    learner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # stand-ins are never whitespace
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special,
                                  show_progress=show_progress)
    learner.train_from_iterator(spelled_texts(), trainer=trainer, length=length)

    learned = [t for t, _ in sorted(learner.get_vocab().items(), key=lambda item: item[1]) if t not in special]
    characters = sorted(stand_ins.restore(t for t in learned if len(t) == 1))
    merged = stand_ins.restore(t for t in learned if len(t) > 1)  # in the order learned
    # BERT's layout: special tokens, characters, "##" characters, then the merges.
    tokens = special + sorted(characters, key=lambda t: t.startswith("##")) + merged
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise RuntimeError("WordPiece training produced the same token twice")
    return vocab
