"""`Tokenizer`: an HF-compatible wrapper over the `tokenizers` library; `BatchEncoding`; `AutoTokenizer`.

`Tokenizer` behaves like `transformers`' fast tokenizers (`BertTokenizerFast`, which is `BertTokenizer` in
transformers 5, and the byte-level BPE decoders'): same ids, token type ids, attention masks, offsets and
decoded text. All the real work (normalisation, WordPiece/BPE, truncation, padding, batching) is done by the
Rust `tokenizers.Tokenizer` held in `.backend`, which data pipelines may also call directly for fast
batch encoding; `.backend` never carries truncation or padding settings between calls. Folders are read and
written by `loading.py`; `model_input_names` (what `__call__` returns) comes from tokenizer_config.json, else
the family template (templates.py).

`transformers` is never imported here; the tests compare against it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import AddedToken
from tokenizers import Tokenizer as BackendTokenizer

from ..files import atomic_write_json
from .loading import (
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    VOCAB_FILE,
    backend_json,
    build_bert_backend,
    read_json,
    read_vocab_txt,
    sync_bert_normalizer,
    token_content,
)
from .templates import BERT_SPECIAL_TOKENS, SPECIAL_TOKEN_ATTRIBUTES, TEMPLATES

logger = logging.getLogger(__name__)


DEFAULT_MODEL_MAX_LENGTH = 512
# transformers stores "no limit" as int(1e30); anything above 1e20 means "do not truncate/pad to it".
LARGE_INTEGER = int(1e20)

PADDING_STRATEGIES = ("longest", "max_length", "do_not_pad")
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second", "do_not_truncate")


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
        model_input_names: Sequence[str] = TEMPLATES["bert"].model_input_names,
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
        config = read_json(folder / TOKENIZER_CONFIG_FILE)
        special_map = read_json(folder / SPECIAL_TOKENS_MAP_FILE)
        config.update(overrides)

        # tokenizer_config.json wins over special_tokens_map.json where both name a token.
        special: dict[str, str | None] = {}
        for attr in SPECIAL_TOKEN_ATTRIBUTES:
            value = token_content(config.get(attr, special_map.get(attr)))
            if value is not None:
                special[attr] = value
        extra = config.get("additional_special_tokens") or config.get("extra_special_tokens") \
            or special_map.get("additional_special_tokens") or []
        extra_tokens = [t for t in (token_content(v) for v in extra) if t is not None]

        tokenizer_file = folder / TOKENIZER_FILE
        vocab_file = folder / VOCAB_FILE
        if tokenizer_file.is_file():
            backend = BackendTokenizer.from_file(str(tokenizer_file))
            sync_bert_normalizer(backend, config)
            if backend.model.__class__.__name__ == "WordPiece":
                # A BERT tokenizer.json may name no tokens in the JSON configs: use BERT's defaults.
                for attr, value in BERT_SPECIAL_TOKENS.items():
                    special.setdefault(attr, value)
        elif vocab_file.is_file():
            for attr, value in BERT_SPECIAL_TOKENS.items():
                special.setdefault(attr, value)
            backend = build_bert_backend(read_vocab_txt(vocab_file), config, special)
        else:
            raise ValueError(f"no {TOKENIZER_FILE} or {VOCAB_FILE} in tokenizer folder {folder}")

        model_max_length = config.get("model_max_length")
        optional = {k: config[k] for k in ("model_input_names", "chat_template") if config.get(k) is not None}
        if "model_input_names" not in optional:
            # As HF's per-family tokenizer classes: the model folder's family decides (decoders take no
            # token_type_ids); a folder without a config.json gets BERT's.
            family = read_json(folder / "config.json").get("model_type")
            if family in TEMPLATES:
                optional["model_input_names"] = TEMPLATES[family].model_input_names
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
        padding_strategy = _strategy("padding", padding, "longest", "do_not_pad", PADDING_STRATEGIES)
        truncation_strategy = _strategy("truncation", truncation, "longest_first", "do_not_truncate",
                                        TRUNCATION_STRATEGIES)

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

    # ------------------------------------------------------------------ chat

    def apply_chat_template(
        self,
        conversation: list[dict[str, Any]],
        add_generation_prompt: bool = False,
        tokenize: bool = True,
        return_tensors: str | None = None,
        return_dict: bool = True,
        chat_template: str | None = None,
    ) -> Any:
        """The conversation (messages {"role", "content"}) rendered with the chat template, as transformers 5:
        the text (`tokenize=False`), else its encoding without added special tokens (a BatchEncoding, or the
        ids with `return_dict=False`). `add_generation_prompt` appends the assistant's turn header."""
        from .chat import render_chat

        source = chat_template or self.chat_template
        if source is None:
            raise ValueError(f"tokenizer {self.name_or_path or ''!s} has no chat template (tokenizer_config.json "
                             "'chat_template' or GGUF 'tokenizer.chat_template'); pass chat_template=...")
        text = render_chat(source, conversation, add_generation_prompt, self.special_tokens_map)
        if not tokenize:
            return text
        encoded = self(text, add_special_tokens=False, return_tensors=return_tensors)
        return encoded if return_dict else encoded["input_ids"]

    # ------------------------------------------------------------------ saving

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> tuple[str, ...]:
        """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json (+ vocab.txt for WordPiece).

        The folder loads in lmforge and in `transformers.AutoTokenizer` with identical encodings.
        """
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        written = [folder / TOKENIZER_FILE, folder / TOKENIZER_CONFIG_FILE, folder / SPECIAL_TOKENS_MAP_FILE]
        self.backend.save(str(folder / TOKENIZER_FILE))

        state = backend_json(self.backend)
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
        atomic_write_json(folder / TOKENIZER_CONFIG_FILE, config)
        atomic_write_json(folder / SPECIAL_TOKENS_MAP_FILE, self.special_tokens_map)

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
            from ..gguf import load_gguf_tokenizer

            return load_gguf_tokenizer(path, gguf_file)
        return Tokenizer.from_pretrained(path, **overrides)


# ---------------------------------------------------------------------- helpers


def plain_backend(tokenizer: Any) -> BackendTokenizer:
    """A copy of a tokenizer's `tokenizers.Tokenizer` backend (`.backend` for lmforge tokenizers,
    `.backend_tokenizer` for HF fast ones, or a backend itself) with padding and truncation off: a copy,
    because the backend object is shared with the caller, whose settings must not leak in (or out)."""
    backend = None
    for candidate in (getattr(tokenizer, "backend", None), getattr(tokenizer, "backend_tokenizer", None), tokenizer):
        if candidate is not None and hasattr(candidate, "encode_batch"):
            backend = candidate
            break
    if backend is None:
        raise TypeError("needs a fast tokenizer (with a `tokenizers.Tokenizer` backend)")
    backend = BackendTokenizer.from_str(backend.to_str())
    backend.no_padding()
    backend.no_truncation()
    return backend


def _strategy(name: str, value: bool | str | None, on: str, off: str, choices: Sequence[str]) -> str:
    """A padding/truncation argument as a strategy name: True -> `on`, False/None -> `off`, or a name."""
    if value is True:
        return on
    if value is False or value is None:
        return off
    if value in choices:
        return str(value)
    raise ValueError(f"{name} must be a bool or one of {tuple(choices)}, got {value!r}")


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


# ---------------------------------------------------------------------- training










