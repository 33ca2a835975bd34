"""BART's denoising objective (Lewis et al. 2020, §2.2): text infilling, optionally after sentence permutation.

Text infilling: span lengths are drawn from Poisson(lambda = 3) until they cover `mask_ratio` (30%) of the
tokens (the last one cut to fit); each span is replaced by ONE `<mask>`, so the model must also learn how many
tokens are missing; a span of length 0 inserts a `<mask>` where nothing is missing. The spans are placed at
random, in the order drawn, with at least one kept token between two of them (fairseq's
`DenoisingDataset.add_whole_word_mask` picks starts at random and lets spans touch; separated spans keep every
mask meaning one span). Units are tokens, not words, as in Hugging Face's Flax BART example: Chinese text has no
spaces to cut words at. fairseq also swaps 10% of the masks for random tokens; not done here.

Sentence permutation (`permute_sentences`): the sentences of the sequence (`sentence_starts`) are shuffled
before the masking, as fairseq does. The labels are always the original sequence: the decoder reconstructs it
(its input is the labels shifted right, which the models do from `labels`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ...nn.heads import IGNORE_INDEX

Span = tuple[int, int]  # (start, length) in the sequence's tokens; length 0: a mask inserted before `start`


def numpy_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy generator drawn from the batch's torch generator (the batch sources seed one per batch)."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))


def infilling_spans(n: int, rng: np.random.Generator, mask_ratio: float = 0.3, poisson_lambda: float = 3.0) -> list[Span]:
    """The spans of `n` tokens to replace by one mask each, in order: lengths ~ Poisson(poisson_lambda) summing
    to round(n * mask_ratio), separated by >= 1 kept token (a sequence too short for that many spans has its
    last spans merged)."""
    n_noise = round(n * mask_ratio)
    if n_noise == 0:
        return []
    lengths: list[int] = []
    covered = 0
    while covered < n_noise:
        length = min(int(rng.poisson(poisson_lambda)), n_noise - covered)
        lengths.append(length)
        covered += length
    n_keep = n - n_noise
    while len(lengths) > n_keep + 1:  # k spans need k - 1 kept tokens between them
        lengths[-2] += lengths.pop()
    k = len(lengths)
    # Kept tokens before, between and after the spans: a random composition of n_keep into k + 1 parts, the
    # k - 1 inner parts >= 1.
    free = n_keep - (k - 1)
    cuts = np.sort(rng.integers(0, free + 1, size=k))
    gaps = np.diff(np.concatenate([[0], cuts, [free]]))  # (k + 1,)
    gaps[1:k] += 1
    spans, position = [], int(gaps[0])
    for i, length in enumerate(lengths):
        spans.append((position, length))
        position += length + int(gaps[i + 1])
    return spans


def apply_infilling(ids: np.ndarray, spans: Sequence[Span], mask_id: int) -> np.ndarray:
    """`ids` with each span replaced by one `mask_id` (a length-0 span inserts one)."""
    pieces, previous = [], 0
    mask = np.array([mask_id], dtype=ids.dtype)
    for start, length in spans:
        pieces += [ids[previous:start], mask]
        previous = start + length
    pieces.append(ids[previous:])
    return np.concatenate(pieces)


def permute_sentences(ids: np.ndarray, sentence_starts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The sentences of `ids` (each starts where `sentence_starts` is True; the first token always does) in a
    random order."""
    bounds = np.concatenate([np.flatnonzero(sentence_starts), [len(ids)]])
    if bounds[0] != 0:
        bounds = np.concatenate([[0], bounds])
    sentences = [ids[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return np.concatenate([sentences[i] for i in rng.permutation(len(sentences))])


def pad_seq2seq(sources: Sequence[np.ndarray], targets: Sequence[np.ndarray], pad_id: int) -> dict[str, torch.Tensor]:
    """{"input_ids", "attention_mask"}: (B, S) sources right-padded with `pad_id`; "labels": (B, T) targets
    right-padded with -100 (no loss there; the models shift them right into the decoder's inputs)."""
    S, T = max(len(s) for s in sources), max(len(t) for t in targets)
    input_ids = torch.full((len(sources), S), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sources), S), dtype=torch.long)
    labels = torch.full((len(targets), T), IGNORE_INDEX, dtype=torch.long)
    for i, (source, target) in enumerate(zip(sources, targets, strict=True)):
        input_ids[i, : len(source)] = torch.from_numpy(source.astype(np.int64))
        attention_mask[i, : len(source)] = 1
        labels[i, : len(target)] = torch.from_numpy(target.astype(np.int64))
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class DenoisingCollator:
    """Sequences `tokens </s>` (`sequences.SequenceDataset` items) -> a batch of (noised source, original
    labels), the noise drawn from the batch's generator (never the global RNG)."""

    def __init__(self, mask_id: int, eos_id: int, pad_id: int, *, mask_ratio: float = 0.3,
                 poisson_lambda: float = 3.0, permute_sentences: bool = False):
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if poisson_lambda <= 0:
            raise ValueError(f"poisson_lambda (the mean span length) must be > 0, got {poisson_lambda}")
        self.mask_id, self.eos_id, self.pad_id = mask_id, eos_id, pad_id
        self.mask_ratio, self.poisson_lambda = mask_ratio, poisson_lambda
        self.permute = permute_sentences

    def noise(self, ids: np.ndarray, sentence_starts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The source for one sequence (EOS last, kept in place)."""
        body = ids[:-1]  # the tokens without the final EOS
        if self.permute:
            body = permute_sentences(body, sentence_starts[:-1], rng)
        spans = infilling_spans(len(body), rng, self.mask_ratio, self.poisson_lambda)
        return np.concatenate([apply_infilling(body, spans, self.mask_id), ids[-1:]])

    def __call__(self, instances: Sequence[Mapping[str, np.ndarray]], generator: torch.Generator) -> dict[str, torch.Tensor]:
        rng = numpy_rng(generator)
        targets = [np.asarray(item["input_ids"]) for item in instances]
        sources = [self.noise(ids, np.asarray(item["sentence_starts"]), rng) for ids, item in zip(targets, instances,
                                                                                                    strict=True)]
        return pad_seq2seq(sources, targets, self.pad_id)
