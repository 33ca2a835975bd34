"""`ServeOptions`: everything `lmforge serve` takes, checked once when built."""

from __future__ import annotations

import os
from dataclasses import dataclass

API_KEY_ENV = "LMFORGE_API_KEY"


@dataclass
class ServeOptions:
    model: str  # HF-format model folder (config.json + weights + tokenizer)
    host: str = "127.0.0.1"
    port: int = 8000
    task: str | None = None  # pipeline task; None: from the folder's architectures (see kinds.py)
    max_batch_size: int = 32  # inputs coalesced into one forward pass
    max_wait_ms: float = 5.0  # how long the first queued request waits for others to join its batch
    max_queue: int = 256  # inputs waiting for the model; beyond it requests get 503 + Retry-After
    max_inputs: int = 64  # inputs in one request (413 beyond)
    max_body_bytes: int = 1 << 20  # request body size (413 beyond)
    max_tokens: int | None = None  # tokens per input (422 beyond); None: the model's maximum length
    max_new_tokens: int = 256  # generation: the most tokens one completion may ask for
    timeout: float = 30.0  # seconds a request may take, queueing included (504 beyond)
    api_key: str | None = None  # when set, /v1/* need "Authorization: Bearer KEY"; None: env LMFORGE_API_KEY
    threads: int | None = None  # torch intra-op threads; None: torch's default

    def __post_init__(self):
        for name in ("max_batch_size", "max_queue", "max_inputs", "max_body_bytes", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve: --{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"serve: --max-tokens must be >= 1, got {self.max_tokens}")
        if self.max_wait_ms < 0 or self.timeout <= 0:
            raise ValueError("serve: --max-wait-ms must be >= 0 and --timeout > 0")
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
