"""T5's span corruption (Raffel et al. 2020, §3.1.4; `random_spans_noise_mask` in its preprocessors).

Of n tokens, round(n * noise_density) (15%) are noise, in round(noise / mean_span_length) spans (mean 3); the
noise and the kept tokens are each cut into that many parts of >= 1 token, uniformly over such cuts, and
interleaved starting with kept tokens. The encoder's input is the kept tokens with span i replaced by sentinel
i, the target is every sentinel followed by its span; both end with EOS:

    tokens   a b c d e f g h </s>      noise: c d, g
    input    a b <extra_id_0> e f <extra_id_1> h </s>
    target   <extra_id_0> c d <extra_id_1> g </s>

Sentinel i is the tokenizer's `<extra_id_i>` (T5's layout: `<extra_id_0>` has the highest id, the next ones
count down). T5 sizes its raw inputs so the corrupted ones are exactly 512 long; here each cached sequence is
corrupted as it is, so inputs come out ~13% shorter than `max_seq_length`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .denoising import numpy_rng, pad_seq2seq

Span = tuple[int, int]  # (start, length)


def random_segmentation(n_items: int, n_segments: int, rng: np.random.Generator) -> np.ndarray:
    """(n_segments,) positive lengths summing to n_items, uniform over all such compositions."""
    cuts = np.sort(rng.choice(np.arange(1, n_items), n_segments - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [n_items]]))


def noise_spans(n: int, rng: np.random.Generator, noise_density: float = 0.15,
                mean_span_length: float = 3.0) -> list[Span]:
    """The noise spans of `n` tokens, in order, as T5's `random_spans_noise_mask` draws them (none when n < 2)."""
    if n < 2:
        return []
    n_noise = min(max(round(n * noise_density), 1), n - 1)
    n_keep = n - n_noise
    k = min(max(round(n_noise / mean_span_length), 1), n_keep)
    noise_lengths = random_segmentation(n_noise, k, rng)
    keep_lengths = random_segmentation(n_keep, k, rng)
    spans, position = [], 0
    for keep, noise in zip(keep_lengths.tolist(), noise_lengths.tolist(), strict=True):
        position += keep
        spans.append((position, noise))
        position += noise
    return spans


def corrupt(ids: np.ndarray, spans: Sequence[Span], sentinel_ids: Sequence[int], eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input, target) for the tokens `ids` (no EOS) and their noise spans; both end with `eos_id`."""
    if len(spans) > len(sentinel_ids):
        raise ValueError(f"{len(spans)} noise spans need as many sentinel tokens, the tokenizer has "
                         f"{len(sentinel_ids)}: lower --max-seq-length or train it with more --extra-ids")
    source, target, previous = [], [], 0
    for (start, length), sentinel in zip(spans, sentinel_ids, strict=False):
        source += [ids[previous:start], [sentinel]]
        target += [[sentinel], ids[start:start + length]]
        previous = start + length
    source += [ids[previous:], [eos_id]]
    target.append([eos_id])
    return np.concatenate(source).astype(np.int64), np.concatenate(target).astype(np.int64)


def uncorrupt(source: np.ndarray, target: np.ndarray, sentinel_ids: Sequence[int], eos_id: int) -> np.ndarray:
    """The original tokens (no EOS) from an (input, target) pair: each sentinel in the input replaced by what
    follows the same sentinel in the target."""
    sentinels = {int(s): i for i, s in enumerate(sentinel_ids)}
    filled: dict[int, list[int]] = {}
    current = None
    for token in target.tolist():
        if token in sentinels:
            current = sentinels[token]
            filled[current] = []
        elif token != eos_id and current is not None:
            filled[current].append(token)
    out: list[int] = []
    for token in source.tolist():
        if token in sentinels:
            out += filled[sentinels[token]]
        elif token != eos_id:
            out.append(token)
    return np.asarray(out, dtype=np.int64)


class SpanCorruptionCollator:
    """Sequences `tokens </s>` (`sequences.SequenceDataset` items) -> a batch of (corrupted input, sentinel
    target), the noise drawn from the batch's generator (never the global RNG)."""

    def __init__(self, sentinel_ids: Sequence[int], eos_id: int, pad_id: int, *, noise_density: float = 0.15,
                 mean_span_length: float = 3.0):
        if not 0.0 < noise_density < 1.0:
            raise ValueError(f"noise_density must be in (0, 1), got {noise_density}")
        if mean_span_length < 1:
            raise ValueError(f"mean_span_length must be >= 1, got {mean_span_length}")
        if not sentinel_ids:
            raise ValueError("span corruption needs sentinel tokens (<extra_id_0>, ...): train the tokenizer with "
                             "--extra-ids")
        self.sentinel_ids, self.eos_id, self.pad_id = list(sentinel_ids), eos_id, pad_id
        self.noise_density, self.mean_span_length = noise_density, mean_span_length

    def __call__(self, instances: Sequence[Mapping[str, np.ndarray]], generator: torch.Generator) -> dict[str, torch.Tensor]:
        rng = numpy_rng(generator)
        sources, targets = [], []
        for item in instances:
            body = np.asarray(item["input_ids"])[:-1]  # without the final EOS
            spans = noise_spans(len(body), rng, self.noise_density, self.mean_span_length)
            source, target = corrupt(body, spans, self.sentinel_ids, self.eos_id)
            sources.append(source)
            targets.append(target)
        return pad_seq2seq(sources, targets, self.pad_id)


def sentinel_ids(tokenizer) -> list[int]:
    """The ids of `<extra_id_0>`, `<extra_id_1>`, ... that the tokenizer has, in sentinel order."""
    vocab = tokenizer.get_vocab()
    ids = []
    while f"<extra_id_{len(ids)}>" in vocab:
        ids.append(vocab[f"<extra_id_{len(ids)}>"])
    return ids
