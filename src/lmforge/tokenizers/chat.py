"""Chat templates: the Jinja source a model ships (tokenizer_config.json's `chat_template`, or GGUF metadata
`tokenizer.chat_template`) rendered as transformers renders it, so the prompt text is the same string.

transformers' environment: a sandbox, `trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension, a
`tojson` filter that keeps non-ASCII and does not escape HTML, `raise_exception(message)` and
`strftime_now(format)`; the template sees `messages`, `add_generation_prompt` and the special tokens by name
(`bos_token`, `eos_token`, ...). jinja2 is imported on first use (`pip install 'lmforge[chat]'`).
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=8)
def compile_template(source: str):
    try:
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:  # pragma: no cover - optional dependency
        raise ImportError("chat templates need jinja2: pip install 'lmforge[chat]'") from e

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
    return env.from_string(source)


def render_chat(source: str, messages: list[dict[str, Any]], add_generation_prompt: bool,
                special_tokens: dict[str, Any]) -> str:
    """The prompt text of `messages` (dicts with "role" and "content"); the caller's list is not modified."""
    if not messages:
        raise ValueError("apply_chat_template: the conversation is empty")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError(f"apply_chat_template: message {i} must be a dict with 'role' and 'content', "
                             f"got {message!r}")
    plain = [{k: v for k, v in m.items() if v is not None} for m in messages]
    return compile_template(source).render(messages=plain, add_generation_prompt=add_generation_prompt,
                                           **special_tokens)
