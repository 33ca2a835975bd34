"""Per-row stopping: a row stops when its newest token is an EOS id, or when a stop string appears in its
generated text, also when the string is split across several tokens (" Obs" + "erv" + "ation:")."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class StopStrings:
    """Finds stop strings in the generated part of each row.

    Each check decodes only a window of the row's newest tokens: a byte-level token holds at least one
    byte, so a string of n UTF-8 bytes lies within the last n + 1 tokens when its end falls in the newest one.
    Rows that already stopped are never checked again, so "the string is in the window" means "it just
    appeared". Only generated tokens are searched, not the prompt.
    """

    def __init__(self, tokenizer, strings: Sequence[str], prompt_length: int):
        if tokenizer is None:
            raise ValueError("generate: stop_strings need the tokenizer (pass tokenizer=...)")
        self.tokenizer = tokenizer
        self.strings = list(strings)
        self.window = max(len(s.encode("utf-8")) for s in self.strings) + 1
        self.prompt_length = prompt_length

    def __call__(self, ids: Tensor) -> Tensor:
        """ids (R, L) -> (R,) bool: rows whose generated text now contains a stop string."""
        rows = ids[:, self.prompt_length:][:, -self.window:].tolist()
        hits = [any(s in self.tokenizer.decode(row) for s in self.strings) for row in rows]
        return torch.tensor(hits, dtype=torch.bool, device=ids.device)


class Stopping:
    """EOS ids, stop strings and the length limit, checked on the newest token of every row."""

    def __init__(self, eos_ids: Sequence[int], stop_strings: StopStrings | None, max_length: int,
                 device: torch.device):
        self.eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device) if eos_ids else None
        self.stop_strings = stop_strings
        self.max_length = max_length

    def __call__(self, ids: Tensor) -> Tensor:
        """ids (R, L), newest token last -> (R,) bool: the row is done."""
        done = torch.full((ids.size(0),), ids.size(1) >= self.max_length, dtype=torch.bool, device=ids.device)
        if self.eos is not None:
            done |= torch.isin(ids[:, -1], self.eos)
        if self.stop_strings is not None:
            done |= self.stop_strings(ids)
        return done
