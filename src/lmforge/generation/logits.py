"""Logit processors: each takes scores (R, V) of the next token (R rows: prompts, or prompts x beams) and
returns new ones; none modifies its input. Semantics and order are transformers' (`_get_logits_processor`):

    repetition penalty -> no-repeat n-gram -> [sampling only] temperature -> top-k -> top-p -> min-p

so greedy, beam and seeded sampled outputs are token-identical to `transformers.generate`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .config import GenerationConfig

Processor = Callable[[Tensor, Tensor], Tensor]  # (ids (R, L), scores (R, V)) -> scores (R, V)


def repetition_penalty(penalty: float, first_real: Tensor) -> Processor:
    """CTRL's penalty, once per distinct token of the row (prompt included, left padding not): positive
    scores are divided by `penalty`, negative ones multiplied. `first_real` (R,): index of each row's first
    non-padding token."""

    def apply(ids: Tensor, scores: Tensor) -> Tensor:
        V = scores.size(-1)
        positions = torch.arange(ids.size(1), device=ids.device)
        # Padding and ids beyond the head's vocabulary go to a spare column V, dropped at the end.
        ids = ids.masked_fill(positions[None, :] < first_real[:, None], V).clamp(max=V)  # (R, L)
        padded = torch.nn.functional.pad(scores, (0, 1))  # (R, V + 1)
        seen = padded.gather(1, ids)  # (R, L)
        seen = torch.where(seen < 0, seen * penalty, seen / penalty)
        return padded.scatter(1, ids, seen)[:, :V]

    return apply


def no_repeat_ngram(n: int) -> Processor:
    """Ban every token that would complete an n-gram already in the row (prompt and padding included, as
    transformers): the windows whose first n - 1 tokens equal the row's last n - 1 ban their last token."""

    def apply(ids: Tensor, scores: Tensor) -> Tensor:
        L, V = ids.size(1), scores.size(-1)
        if L < n:
            return scores
        suffix = ids[:, L + 1 - n:]  # (R, n - 1)
        windows = ids.unfold(1, n, 1)  # (R, L - n + 1, n)
        matches = (windows[..., :-1] == suffix[:, None, :]).all(-1)  # (R, L - n + 1)
        banned = torch.zeros(scores.size(0), V + 1, dtype=torch.bool, device=scores.device)
        # Windows that do not match write into the spare column V.
        banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=V), V), True)
        return scores.masked_fill(banned[:, :V], float("-inf"))

    return apply


def temperature(t: float) -> Processor:
    return lambda ids, scores: scores / t


def top_k(k: int, keep: int) -> Processor:
    """Keep the k highest scores (ties with the k-th kept too)."""
    k = max(k, keep)

    def apply(ids: Tensor, scores: Tensor) -> Tensor:
        kth = torch.topk(scores, min(k, scores.size(-1)))[0][..., -1:]  # (R, 1)
        return scores.masked_fill(scores < kth, float("-inf"))

    return apply


def top_p(p: float, keep: int) -> Processor:
    """Nucleus: keep the smallest set of most likely tokens whose probability reaches p."""

    def apply(ids: Tensor, scores: Tensor) -> Tensor:
        ascending, order = torch.sort(scores, descending=False)
        cumulative = ascending.softmax(-1).cumsum(-1)  # (R, V)
        remove = cumulative <= 1 - p
        remove[..., -keep:] = False
        return scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))

    return apply


def min_p(p: float, keep: int) -> Processor:
    """Drop tokens less likely than p times the most likely one (applied after temperature)."""

    def apply(ids: Tensor, scores: Tensor) -> Tensor:
        probs = scores.softmax(-1)
        remove = probs < p * probs.amax(-1, keepdim=True)
        remove.scatter_(-1, torch.topk(probs, min(keep, probs.size(-1)), dim=-1).indices, False)
        return scores.masked_fill(remove, float("-inf"))

    return apply


def build_processors(config: GenerationConfig, first_real: Tensor) -> list[Processor]:
    """The processors `config` asks for, in transformers' order. `first_real` (R,): each row's first
    non-padding index (the repetition penalty skips left padding)."""
    processors: list[Processor] = []
    if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
        processors.append(repetition_penalty(config.repetition_penalty, first_real))
    if config.no_repeat_ngram_size:
        processors.append(no_repeat_ngram(config.no_repeat_ngram_size))
    if config.do_sample:
        # Beam sampling keeps one token more than there are EOS ids, so a beam can always go on.
        keep = len(config.eos_ids) + 1 if config.num_beams > 1 and config.eos_ids else (2 if config.num_beams > 1 else 1)
        if config.temperature != 1.0:
            processors.append(temperature(config.temperature))
        if config.top_k:
            processors.append(top_k(config.top_k, keep))
        if config.top_p is not None and config.top_p < 1.0:
            processors.append(top_p(config.top_p, keep))
        if config.min_p is not None:
            processors.append(min_p(config.min_p, keep))
    return processors


def apply_processors(processors: list[Processor], ids: Tensor, scores: Tensor) -> Tensor:
    for process in processors:
        scores = process(ids, scores)
    return scores
