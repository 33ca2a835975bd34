"""The decoding loops over a step function (`steps.py`): greedy / sampling, and beam search.

Both follow `transformers`' `_sample` and `_beam_search` step for step (the order of logit processors, which
rows count as finished, how beams are scored, kept and returned, its early-stopping heuristic), so their
tokens are identical to `transformers.generate` on the same weights. Shapes: B prompts, K beams per prompt
(R = B * K rows in the model), L tokens so far, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .config import GenerationConfig
from .logits import Processor, apply_processors
from .stopping import Stopping

NEG = -1.0e9  # transformers' "never" score for beams (finite, so sums stay ordered)


def sample_steps(steps, input_ids: Tensor, config: GenerationConfig, processors: list[Processor],
                 stopping: Stopping, pad_id: int, generator: torch.Generator | None) -> Iterator[Tensor]:
    """Greedy (argmax) or sampled decoding, one token per row and step: yields the (B,) new tokens after each
    step; the last yield is followed by StopIteration. A finished row receives `pad_id` from then on, and
    the loop ends when every row is finished or the length limit is reached."""
    ids, logits = steps.start(input_ids)
    unfinished = torch.ones(ids.size(0), dtype=torch.bool, device=ids.device)
    while True:
        scores = apply_processors(processors, ids, logits)  # (B, V)
        if config.do_sample:
            tokens = torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)  # (B,)
        else:
            tokens = scores.argmax(-1)  # (B,)
        tokens = torch.where(unfinished, tokens, pad_id)
        ids = torch.cat([ids, tokens[:, None]], dim=1)  # (B, L + 1)
        unfinished &= ~stopping(ids)
        yield tokens
        if not bool(unfinished.any()):
            return
        logits = steps.step(tokens)


def beam_search(steps, input_ids: Tensor, config: GenerationConfig, processors: list[Processor],
                stopping: Stopping, fill_id: int, generator: torch.Generator | None) -> Tensor:
    """Beam search (optionally sampled), as transformers' vectorised `_beam_search`. Returns the
    `num_return_sequences` best finished hypotheses of every prompt, (B * num_return_sequences, L_out), best
    first, padded with `fill_id` to the longest one.

    Each step scores every continuation of the K running beams by its summed log-probability, keeps the
    top 2K (more with several EOS ids, so K beams can continue even when the best ones just finished),
    moves those that finished among the K best into the finished set (scored with the length penalty:
    sum / new_tokens ** length_penalty) and continues with the K best unfinished ones.
    """
    K, lp, early = config.num_beams, config.length_penalty, config.early_stopping
    max_length = stopping.max_length
    keep = max(2, 1 + len(config.eos_ids)) * K  # candidates kept per prompt and step
    device = input_ids.device

    # The prompt runs once, then is copied to its K beams. What the beams extend is what `start` returns: the
    # prompt itself, or an encoder-decoder's decoder start tokens.
    prompt, logits = steps.start(input_ids)  # (B, L0), (B, V)
    B, prompt_length = prompt.shape
    expand = torch.arange(B, device=device).repeat_interleave(K)  # (B * K,)
    steps.reorder(expand)
    logits = logits.index_select(0, expand)  # (B * K, V)

    running = torch.full((B, K, max_length), fill_id, dtype=torch.long, device=device)
    running[:, :, :prompt_length] = prompt[:, None, :]
    finished = running.clone()  # (B, K, max_length): the best finished hypotheses so far
    running_scores = torch.zeros(B, K, device=device)
    running_scores[:, 1:] = NEG  # all beams start equal: only beam 0 may extend the prompt at the first step
    finished_scores = torch.full((B, K), NEG, device=device)
    finished_new = torch.zeros(B, K, dtype=torch.long, device=device)  # new tokens of each finished hypothesis
    is_finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)  # can a running beam still beat one?
    top_k_mask = torch.arange(keep, device=device) < K  # (keep,): the K best candidates
    batch_offset = torch.arange(B, device=device)[:, None] * K  # (B, 1)
    length = prompt_length

    while True:
        flat_ids = running[:, :, :length].reshape(B * K, length)  # (B*K, L)
        log_probs = apply_processors(processors, flat_ids, logits.log_softmax(-1))  # (B*K, V)
        V = log_probs.size(-1)
        totals = (log_probs.view(B, K, V) + running_scores[:, :, None]).view(B, K * V)  # (B, K*V)

        if config.do_sample:  # draw `keep` continuations without replacement, best first
            picked = torch.multinomial(totals.softmax(-1), keep, generator=generator)  # (B, keep)
            cand_scores, order = totals.gather(1, picked).sort(-1, descending=True)
            picked = picked.gather(1, order)
        else:
            cand_scores, picked = totals.topk(keep)  # (B, keep)
        parent, token = picked // V, picked % V  # (B, keep)
        candidates = running.gather(1, parent[:, :, None].expand(B, keep, max_length)).clone()  # (B, keep, max_len)
        candidates[:, :, length] = token
        hits = stopping(candidates[:, :, :length + 1].reshape(B * keep, length + 1)).view(B, keep)

        # The K best candidates that did not stop continue.
        alive_scores = cand_scores + hits.float() * NEG
        chosen = alive_scores.topk(K).indices  # (B, K)
        running = candidates.gather(1, chosen[:, :, None].expand(B, K, max_length))
        running_scores = alive_scores.gather(1, chosen)
        beam_parent = (parent.gather(1, chosen) + batch_offset).view(B * K)  # row of each new beam's parent

        # Candidates among the K best that stopped compete with the finished set.
        just_finished = hits & top_k_mask[None, :]
        scores = cand_scores / ((length + 1 - prompt_length) ** lp)
        scores = scores + (is_finished.all(-1, keepdim=True) & (early is True)).float() * NEG
        scores = scores + (~improvable).float() * NEG
        scores = scores + (~just_finished) * NEG
        merged_scores = torch.cat([finished_scores, scores], dim=1)  # (B, K + keep)
        best = merged_scores.topk(K).indices  # (B, K)
        finished = torch.cat([finished, candidates], dim=1).gather(1, best[:, :, None].expand(B, K, max_length))
        finished_scores = merged_scores.gather(1, best)
        is_finished = torch.cat([is_finished, just_finished], dim=1).gather(1, best)
        new_tokens = torch.full((B, keep), length + 1 - prompt_length, dtype=torch.long, device=device)
        finished_new = torch.cat([finished_new, new_tokens], dim=1).gather(1, best)

        length += 1
        improvable = improvable & can_improve(running_scores, finished_scores, is_finished, length, prompt_length,
                                              max_length, early, lp)
        done = (not bool(improvable.any())) or (bool(is_finished.all()) and early is True) or bool(hits.all())
        if done:
            break
        steps.reorder(beam_parent)
        logits = steps.step(running[:, :, length - 1].reshape(B * K))

    n = config.num_return_sequences
    out_length = prompt_length + int(finished_new[:, :n].max())
    return finished[:, :n, :out_length].reshape(B * n, out_length)


def can_improve(running_scores: Tensor, finished_scores: Tensor, is_finished: Tensor, length: int,
                prompt_length: int, max_length: int, early: bool | str, lp: float) -> Tensor:
    """(B, 1) bool: could the best running beam still beat the worst finished hypothesis? transformers'
    heuristic: the best running score divided by its length penalty at the current length (or at max_length
    when early_stopping="never" and longer is rewarded)."""
    best_length = max_length - prompt_length if early == "never" and lp > 0.0 else length - prompt_length
    best_running = running_scores[:, :1] / (best_length ** lp)  # (B, 1)
    worst_finished = torch.where(is_finished, finished_scores.min(1, keepdim=True).values, NEG)  # (B, K)
    return (best_running > worst_finished).any(-1, keepdim=True)
