"""Text out as it is generated: `TextStreamer` (transformers' `put`/`end` protocol, for `generate(streamer=...)`)
and `IncrementalDecoder`, which both it and `GenerationMixin.generate_stream` use.

Byte-level BPE splits a Chinese character or an emoji across tokens, and decoding a prefix that ends inside
such a character gives U+FFFD. The decoder therefore holds back a trailing U+FFFD run until the next token
completes the character; what it emits is always whole characters, and their concatenation equals the
decoded full sequence.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Token ids in, newly completed text out."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already handed out

    def add(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)
        ready = len(text.rstrip(REPLACEMENT))  # an incomplete character decodes as trailing U+FFFD
        piece = text[self.emitted:ready] if ready > self.emitted else ""
        self.emitted = max(self.emitted, ready)
        return piece

    def flush(self) -> str:
        """The rest, at the end of generation (a truly invalid byte sequence comes out as U+FFFD here)."""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)
        piece, self.emitted = text[self.emitted:], len(text)
        return piece


class TextStreamer:
    """Prints (or hands to `on_text`) the generated text as it is decoded; pass it as `generate(streamer=...)`.

    `generate` calls `put(prompt_ids)` once, then `put(new_token)` per step and `end()`, transformers'
    protocol (batch size 1). The prompt is skipped unless `skip_prompt=False`.
    """

    def __init__(self, tokenizer, on_text: Callable[[str], None] | None = None, skip_prompt: bool = True,
                 skip_special_tokens: bool = True):
        self.decoder = IncrementalDecoder(tokenizer, skip_special_tokens)
        self.on_text = on_text or (lambda text: print(text, end="", flush=True, file=sys.stdout))
        self.skip_prompt = skip_prompt
        self._prompt_seen = False

    def put(self, ids: torch.Tensor) -> None:
        if ids.dim() > 1 and ids.size(0) > 1:
            raise ValueError("TextStreamer streams one sequence: generate with batch size 1 and num_beams=1")
        if not self._prompt_seen:
            self._prompt_seen = True
            if self.skip_prompt:
                return
        piece = self.decoder.add(ids.reshape(-1).tolist())
        if piece:
            self.on_text(piece)

    def end(self) -> None:
        piece = self.decoder.flush()
        if piece:
            self.on_text(piece)
