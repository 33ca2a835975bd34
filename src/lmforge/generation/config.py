"""`GenerationConfig`: every setting of `generate`, with transformers' names and defaults, checked before any work."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass
class GenerationConfig:
    """Settings of one `generate` call (transformers' names; `None` = not used).

    Length: `max_new_tokens` (wins) or `max_length` (prompt + new tokens, the padded prompt length as in
    transformers); neither given: 20 in all, transformers' default. Decoding: greedy (the default), sampling
    (`do_sample=True` with `temperature`, `top_k` (50 by default, as in transformers), `top_p`, `min_p`), beam search (`num_beams` > 1, optionally
    sampled). Logit processors: `repetition_penalty`, `no_repeat_ngram_size`. Stopping: `eos_token_id` (one id
    or a list) and `stop_strings` (text; needs the tokenizer), per row.
    """

    max_new_tokens: int | None = None
    max_length: int | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = 50  # transformers' default; applies to sampling only (0 or None: off)
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    stop_strings: list[str] = field(default_factory=list)

    def updated(self, **changes) -> GenerationConfig:
        """A copy with the given fields changed (the caller's config is never modified)."""
        return replace(self, **changes)

    @property
    def eos_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)

    def new_tokens(self, prompt_length: int) -> int:
        """How many tokens to generate after a (padded) prompt of `prompt_length` tokens."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return (self.max_length if self.max_length is not None else 20) - prompt_length

    def validate(self, prompt_length: int, context_length: int | None) -> None:
        """Raise ValueError naming the bad setting; called before the prompt runs through the model."""
        def bad(message: str) -> None:
            raise ValueError(f"generate: {message}")

        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            bad(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_new_tokens is None and self.max_length is not None and self.max_length <= prompt_length:
            bad(f"max_length={self.max_length} leaves no room after the prompt of {prompt_length} tokens; "
                "raise it or pass max_new_tokens")
        if self.temperature is None or not self.temperature > 0:
            bad(f"temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 0):
            bad(f"top_k must be an integer >= 0 (0: off), got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            bad(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            bad(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty is not None and not self.repetition_penalty > 0:
            bad(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.no_repeat_ngram_size is not None and self.no_repeat_ngram_size < 0:
            bad(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        if not isinstance(self.num_beams, int) or self.num_beams < 1:
            bad(f"num_beams must be an integer >= 1, got {self.num_beams}")
        if self.num_return_sequences < 1:
            bad(f"num_return_sequences must be >= 1, got {self.num_return_sequences}")
        if self.num_return_sequences > self.num_beams:
            bad(f"num_return_sequences ({self.num_return_sequences}) must be <= num_beams ({self.num_beams}); "
                "to draw several samples per prompt repeat the prompt")
        if self.early_stopping not in (True, False, "never"):
            bad(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if any(not isinstance(s, str) or not s for s in self.stop_strings):
            bad(f"stop_strings must be non-empty strings, got {self.stop_strings!r}")
        if context_length is not None and prompt_length + self.new_tokens(prompt_length) > context_length:
            if prompt_length >= context_length:
                bad(f"the prompt has {prompt_length} tokens, the model's context is {context_length}; "
                    "shorten the prompt")
            bad(f"{prompt_length} prompt tokens + {self.new_tokens(prompt_length)} new tokens exceed the model's "
                f"context of {context_length}; lower max_new_tokens to at most {context_length - prompt_length}")
