"""The decoder endpoints' model work: /v1/completions and /v1/chat/completions (OpenAI-compatible; app.py streams
them as server-sent events with `"stream": true`).

Non-streamed greedy requests with the same settings share one left-padded `generate` call through the
micro-batcher (batched greedy equals one at a time, tests/test_text_generation.py); a sampled or streamed request
runs alone (its own batch key), so a `seed` gives the text `generate(seed=...)` gives. A stream runs on the model
thread too, through `generate(streamer=...)`: each decoded piece goes to the event loop as it is made, and a
client that goes away stops the generation at its next token. OpenAI's `stop` strings end generation (as
`stop_strings`) and are cut from the text; a stream holds back text that could be the start of one.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch

from ..generation import GenerationConfig, IncrementalDecoder
from ..pipelines import Pipeline
from ..pipelines.text_generation import left_pad
from .errors import ApiError
from .options import ServeOptions
from .schemas import ChatRequest, CompletionRequest

_unique = itertools.count()
DEFAULT_MAX_TOKENS = 16  # OpenAI's completions default


@dataclass(frozen=True)
class Settings:
    max_tokens: int
    temperature: float  # 0: greedy
    top_p: float | None
    seed: int | None
    stop: tuple[str, ...]


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"


class Cancelled(Exception):
    """The client of a stream went away."""


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """The text before the first stop string, and whether there was one."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[:min(cuts)], True) if cuts else (text, False)


class StreamSink:
    """`generate`'s streamer (put(prompt), put(token)..., end()): decodes whole characters, holds back a possible
    stop-string start, hands text to `emit` (thread-safe, set by app.py) and counts the new tokens."""

    def __init__(self, tokenizer, emit: Callable[[str], None], stop: tuple[str, ...]):
        self.decoder = IncrementalDecoder(tokenizer)
        self.emit = emit
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.cancelled = threading.Event()
        self.pending = ""
        self.tokens: list[int] = []
        self.stopped = False
        self._prompt_seen = False

    def put(self, ids: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        if self.cancelled.is_set():
            raise Cancelled
        self.tokens += ids.reshape(-1).tolist()
        self._add(self.decoder.add(ids.reshape(-1).tolist()))

    def end(self) -> None:
        self._add(self.decoder.flush())
        if self.pending and not self.stopped:
            self.emit(self.pending)
        self.pending = ""

    def _add(self, piece: str) -> None:
        if self.stopped or not piece:
            return
        text, self.stopped = cut_at_stop(self.pending + piece, self.stop)
        ready = len(text) if self.stopped else len(text) - self.hold
        if ready > 0:
            self.emit(text[:ready])
        self.pending = "" if self.stopped else text[max(ready, 0):]


class GenerationService:
    def __init__(self, pipe: Pipeline, options: ServeOptions):
        self.pipe = pipe
        self.options = options
        self.tokenizer = pipe.tokenizer
        self.max_positions = pipe.model.config.max_position_embeddings
        self.max_prompt_tokens = min(options.max_tokens or self.max_positions, self.max_positions)
        # The model's EOS ids plus the tokenizer's: an instruct model ends its turn with the tokenizer's EOS
        # (SmolLM2: <|im_end|>), as `lmforge chat` does.
        self.eos_ids = list(pipe.model.default_generation_config().eos_ids)
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in self.eos_ids:
            self.eos_ids.append(self.tokenizer.eos_token_id)

    # ------------------------------------------------------------------------------------ checks (event loop)
    def settings(self, body: CompletionRequest | ChatRequest) -> Settings:
        if body.n != 1:
            raise ApiError(422, "n: only n=1 is supported", "n")
        max_tokens = next((m for m in (body.max_tokens, getattr(body, "max_completion_tokens", None))
                           if m is not None), DEFAULT_MAX_TOKENS)
        if max_tokens > self.options.max_new_tokens:
            raise ApiError(422, f"max_tokens: {max_tokens} is over the server's limit of "
                                f"{self.options.max_new_tokens}", "max_tokens")
        stop = () if body.stop is None else (body.stop,) if isinstance(body.stop, str) else tuple(body.stop)
        return Settings(max_tokens, body.temperature, body.top_p, body.seed, stop)

    def check_prompt(self, ids: list[int], settings: Settings, param: str) -> tuple[int, ...]:
        if not ids:
            raise ApiError(422, f"{param}: the prompt encodes to no tokens", param)
        if len(ids) > self.max_prompt_tokens:
            raise ApiError(422, f"{param}: {len(ids)} tokens; the limit is {self.max_prompt_tokens}", param)
        if len(ids) + settings.max_tokens > self.max_positions:
            raise ApiError(422, f"max_tokens: the prompt's {len(ids)} tokens + {settings.max_tokens} new ones are "
                                f"over the model's {self.max_positions} positions", "max_tokens")
        return tuple(ids)

    def completion_prompts(self, body: CompletionRequest, settings: Settings) -> list[tuple[int, ...]]:
        texts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if len(texts) > self.options.max_inputs:
            raise ApiError(413, f"prompt: {len(texts)} prompts; the limit is {self.options.max_inputs}", "prompt")
        if body.stream and len(texts) > 1:
            raise ApiError(422, "prompt: a streamed completion takes one prompt", "prompt")
        return [self.check_prompt(self.tokenizer(text)["input_ids"], settings,
                                  "prompt" if len(texts) == 1 else f"prompt[{i}]") for i, text in enumerate(texts)]

    def chat_prompt(self, body: ChatRequest, settings: Settings) -> tuple[int, ...]:
        if self.tokenizer.chat_template is None:
            raise ApiError(422, "messages: this model's tokenizer has no chat template; use /v1/completions",
                           "messages")
        try:
            ids = self.tokenizer.apply_chat_template([m.model_dump() for m in body.messages],
                                                     add_generation_prompt=True, return_dict=False)
        except (ValueError, TypeError) as e:
            raise ApiError(422, f"messages: {e}", "messages") from None
        return self.check_prompt(ids, settings, "messages")

    @staticmethod
    def batch_key(settings: Settings, stream: bool) -> Hashable:
        """Greedy, non-streamed requests with equal settings batch together; anything else runs alone."""
        alone = stream or settings.temperature != 0
        return ("stream" if stream else "generate", settings, next(_unique) if alone else 0)

    # ------------------------------------------------------------------------------------ model (model thread)
    def config(self, settings: Settings) -> GenerationConfig:
        config = self.pipe.model.default_generation_config().updated(
            max_new_tokens=settings.max_tokens, stop_strings=list(settings.stop), eos_token_id=self.eos_ids or None)
        if settings.temperature == 0:
            return config.updated(do_sample=False)
        return config.updated(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=None)

    def run(self, key: Hashable, inputs: list[Any]) -> list[Any]:
        kind, settings, _ = key
        config = self.config(settings)
        if kind == "stream":
            return [self._stream(ids, sink, config, settings.seed) for ids, sink in inputs]
        pad_id = next(i for i in (self.tokenizer.pad_token_id, config.pad_token_id, *config.eos_ids, 0)
                      if i is not None)
        ids, mask = left_pad([list(p) for p in inputs], pad_id)  # (B, T) each
        out = self.pipe.model.generate(ids.to(self.pipe.device), mask.to(self.pipe.device), config,
                                       tokenizer=self.tokenizer, seed=settings.seed)
        results = []
        for prompt, row in zip(inputs, out[:, ids.size(1):].tolist()):
            new = self._until_eos(row, config)
            text, stopped = cut_at_stop(self.tokenizer.decode(new, skip_special_tokens=True), settings.stop)
            results.append(Completion(text, len(prompt), len(new), self._finish(new, config, stopped)))
        return results

    def _stream(self, ids: tuple[int, ...], sink: StreamSink, config: GenerationConfig, seed: int | None) -> Any:
        try:
            self.pipe.model.generate(torch.tensor([list(ids)], device=self.pipe.device), None, config,
                                     tokenizer=self.tokenizer, streamer=sink, seed=seed)
        except Cancelled:
            return Completion("", len(ids), len(sink.tokens), "cancelled")
        new = self._until_eos(sink.tokens, config)
        return Completion("", len(ids), len(new), self._finish(new, config, sink.stopped))

    @staticmethod
    def _until_eos(row: list[int], config: GenerationConfig) -> list[int]:
        """The new tokens up to and with the first EOS (after it: padding of a row that stopped early)."""
        eos = set(config.eos_ids)
        for i, token in enumerate(row):
            if token in eos:
                return row[:i + 1]
        return row

    @staticmethod
    def _finish(new: list[int], config: GenerationConfig, stopped: bool) -> str:
        ended = stopped or (new and new[-1] in config.eos_ids) or len(new) < config.max_new_tokens
        return "stop" if ended else "length"
