"""Collators: examples -> feature dicts (tokenized, labels aligned to sub-tokens), padding them into batches,
BERT's masked-LM corruption (`MaskingCollator`) and causal-LM blocks (`causal_lm_collate`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..nn.heads import IGNORE_INDEX
from ..tokenizers.tokenizer import plain_backend
from .labelled import DataError, Example, TaggedSentence
from .labels import LabelMap
from .pretraining.documents import TokenizerLike


def align_labels_to_subtokens(
    word_ids: Sequence[int | None],
    word_labels: Sequence[str | int],
    label2id: Mapping[str, int] | LabelMap | None = None,
    source: str | None = None,
) -> list[int]:
    """Per-token labels from per-word labels.

    ``word_ids`` is what a fast tokenizer's ``word_ids()`` gives: the word index of each token, or
    ``None`` for special tokens. The first sub-token of each word gets the word's label id; later
    sub-tokens of the same word and special tokens get ``-100`` (ignored by the loss).
    ``word_labels`` are names mapped through ``label2id`` (a dict or :class:`LabelMap`), or ids
    already when ``label2id`` is ``None``.
    """
    out: list[int] = []
    prev: int | None = None
    for wid in word_ids:
        if wid is None or wid == prev:
            out.append(IGNORE_INDEX)
        else:
            label = word_labels[wid]
            if label2id is None:
                out.append(int(label))
            elif isinstance(label2id, LabelMap):
                out.append(label2id.encode(label, source))
            elif label in label2id:
                out.append(int(label2id[label]))
            else:
                where = f"{source}: " if source else ""
                raise DataError(
                    f"{where}label {label!r} was not seen in the training data; "
                    f"known labels: {', '.join(map(repr, label2id))}"
                )
        prev = wid
    return out


def encode_classification(
    examples: Sequence[Example],
    tokenizer: Any,
    label_map: LabelMap | None,
    max_length: int,
    batch_size: int = 1024,
) -> list[dict[str, Any]]:
    """Tokenize examples into feature dicts (``input_ids``, ``attention_mask``, ``token_type_ids``
    when the tokenizer gives them, and ``labels``).

    ``tokenizer(texts, pairs, truncation=True, max_length=max_length)`` must return a mapping of
    lists (HF-compatible). Labels: ``str`` -> class id (``int``) through ``label_map``;
    ``list[str]`` -> multi-hot floats; ``float`` -> itself (regression); ``None`` -> no ``labels``.
    An unseen label raises :class:`DataError` naming the example's file and line.
    """
    if not examples:
        return []
    has_pair = [ex.text_pair is not None for ex in examples]
    if any(has_pair) and not all(has_pair):
        bad = examples[has_pair.index(not has_pair[0])]
        raise DataError(f"{bad.source}: some examples have a text pair and others do not")
    features: list[dict[str, Any]] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        texts = [ex.text for ex in chunk]
        pairs = [ex.text_pair for ex in chunk] if has_pair[0] else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
        for i, ex in enumerate(chunk):
            feat = {k: list(enc[k][i]) for k in keys}
            label = _encode_label(ex, label_map)
            if label is not None:
                feat["labels"] = label
            features.append(feat)
    return features


def _encode_label(ex: Example, label_map: LabelMap | None) -> int | float | list[float] | None:
    if ex.label is None:
        return None
    if isinstance(ex.label, float):
        return ex.label
    if label_map is None:
        raise DataError(f"{ex.source}: class label {ex.label!r} needs a label map")
    if isinstance(ex.label, str):
        return label_map.encode(ex.label, ex.source)
    return label_map.encode_multi(ex.label, ex.source)


def encode_token_classification(
    sentences: Sequence[TaggedSentence],
    tokenizer: Any,
    label_map: LabelMap | None,
    max_length: int,
) -> list[dict[str, Any]]:
    """Tokenize pre-split words and align tags to sub-tokens (see :func:`align_labels_to_subtokens`).

    Uses the tokenizer's ``tokenizers.Tokenizer`` backend (``.backend`` for lmforge tokenizers,
    ``.backend_tokenizer`` for HF fast ones); words past ``max_length`` (special tokens included)
    are cut. ``label_map=None`` gives features without ``labels``. Each feature also carries
    ``word_ids`` (a list, ``None`` for special tokens) for mapping predictions back to words;
    :func:`pad_collate` ignores it.
    """
    backend = plain_backend(tokenizer)
    n_special = backend.post_processor.num_special_tokens_to_add(False) if backend.post_processor else 0
    if max_length <= n_special:
        raise ValueError(f"max_length={max_length} leaves no room next to {n_special} special tokens")
    words = [s.tokens for s in sentences]
    encodings = backend.encode_batch(words, is_pretokenized=True, add_special_tokens=False)
    features = []
    for sent, enc in zip(sentences, encodings):
        enc.truncate(max_length - n_special)
        enc = backend.post_process(enc, None, True)
        word_ids = list(enc.word_ids)
        feat: dict[str, Any] = {
            "input_ids": list(enc.ids),
            "token_type_ids": list(enc.type_ids),
            "attention_mask": list(enc.attention_mask),
            "word_ids": word_ids,
        }
        if label_map is not None:
            feat["labels"] = align_labels_to_subtokens(word_ids, sent.tags, label_map, sent.source)
        features.append(feat)
    return features


def pad_collate(
    features: Sequence[Mapping[str, Any]],
    pad_token_id: int,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Stack feature dicts into a batch, padding sequences on the right to the batch's longest.

    ``input_ids`` pad with ``pad_token_id``, token-level ``labels`` with ``-100``, every other
    sequence (``attention_mask``, ``token_type_ids``, ...) with 0. Sequences become int64 tensors
    ``[batch, length]``. ``labels`` that are one int per example become int64 ``[batch]``; float
    labels (regression ``[batch]``, multi-hot ``[batch, num_labels]``) become float32. Keys whose
    values are not numbers or lists of numbers (``word_ids``) are left out.
    """
    if not features:
        raise ValueError("pad_collate needs at least one feature")
    keys = list(features[0])
    batch: dict[str, torch.Tensor] = {}
    for key in keys:
        if key == "word_ids":
            continue
        values = [f[key] for f in features]
        first = values[0]
        if isinstance(first, (list, tuple)):
            is_float = any(isinstance(v, float) for seq in values for v in seq)
            if key == "labels" and is_float:
                batch[key] = torch.tensor(values, dtype=torch.float32)  # multi-hot
                continue
            pad = pad_token_id if key == "input_ids" else IGNORE_INDEX if key == "labels" else 0
            length = max(len(v) for v in values)
            if pad_to_multiple_of:
                length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
            out = torch.full((len(values), length), pad, dtype=torch.int64)
            for i, v in enumerate(values):
                if v:
                    out[i, : len(v)] = torch.tensor(v, dtype=torch.int64)
            batch[key] = out
        elif isinstance(first, float):
            batch[key] = torch.tensor(values, dtype=torch.float32)
        elif isinstance(first, int):
            batch[key] = torch.tensor(values, dtype=torch.int64)
    return batch


def _as_generator(generator: torch.Generator | int) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (int, np.integer)):
        return torch.Generator().manual_seed(int(generator))
    raise TypeError("pass a torch.Generator or an int seed: masking never uses the global RNG")


def causal_lm_collate(
    instances: Sequence[Mapping[str, np.ndarray]], generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Equal-length blocks -> {"input_ids": (B, T), "labels": (B, T)}: no padding and no attention mask (the
    model then runs causal attention without a mask); labels are the inputs, shifted by the loss. `generator`
    is unused (nothing is random), and only there so batch sources can call every collator alike."""
    input_ids = torch.from_numpy(np.stack([np.asarray(i["input_ids"]) for i in instances])).long()  # (B, T)
    return {"input_ids": input_ids, "labels": input_ids.clone()}


class MaskingCollator:
    """Pad instances to the batch's longest and apply BERT's masked-LM corruption.

    Per sequence, `round(length * mlm_probability)` tokens (at least 1, at most
    `max_predictions_per_seq`; length counts [CLS]/[SEP], as Google does) are chosen among
    non-special tokens; of those `mask_replace_prob` (80%) become [MASK], `random_replace_prob` (10%) a
    random non-special token, and the rest (10%) stay. ELECTRA masks with [MASK] only (1.0, 0.0).
    With `whole_word_mask`, whole words are chosen and all their pieces are masked together (a word
    that would overflow the budget is skipped, as in Google's code).

    Call it as `collator(instances, generator)`; `generator` is a `torch.Generator` or an int seed.
    It is required so that masking is reproducible and independent of the global RNG.

    Returns int64 tensors: `input_ids`, `attention_mask`, `token_type_ids` [batch, seq] and
    `labels` [batch, seq] (original id where predicted, -100 elsewhere), plus
    `next_sentence_label` [batch] when the instances carry it (NSP objective).
    """

    def __init__(
        self,
        tokenizer: TokenizerLike,
        mlm_probability: float = 0.15,
        max_predictions_per_seq: int = 20,
        whole_word_mask: bool = False,
        pad_to_multiple_of: int | None = None,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
    ) -> None:
        if not 0.0 <= mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must be in [0, 1], got {mlm_probability}")
        if min(mask_replace_prob, random_replace_prob) < 0.0 or mask_replace_prob + random_replace_prob > 1.0:
            raise ValueError(f"mask_replace_prob ({mask_replace_prob}) and random_replace_prob ({random_replace_prob}) "
                             "must be >= 0 with a sum <= 1")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        self.mlm_probability = mlm_probability
        self.max_predictions_per_seq = max_predictions_per_seq
        self.whole_word_mask = whole_word_mask
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pad_token_id = tokenizer.pad_token_id
        self.mask_token_id = tokenizer.mask_token_id
        special = {
            int(i)
            for i in [
                *tokenizer.all_special_ids,
                tokenizer.pad_token_id,
                tokenizer.cls_token_id,
                tokenizer.sep_token_id,
                tokenizer.mask_token_id,
                tokenizer.unk_token_id,
            ]
            if i is not None
        }
        size = max(tokenizer.vocab_size, max(special, default=-1) + 1)
        self._is_special = np.zeros(size, dtype=bool)  # bool [vocab]
        self._is_special[sorted(special)] = True
        # int64 [n_replacements]: random replacements never produce a special token
        self._replacement_ids = torch.from_numpy(np.flatnonzero(~self._is_special[: tokenizer.vocab_size]))
        if len(self._replacement_ids) == 0:
            raise ValueError("the vocabulary has no non-special token to use as a random replacement")

    def __call__(
        self, instances: Sequence[Mapping[str, Any]], generator: torch.Generator | int
    ) -> dict[str, torch.Tensor]:
        if not instances:
            raise ValueError("cannot collate an empty list of instances")
        gen = _as_generator(generator)
        lengths = [len(x["input_ids"]) for x in instances]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(instances)
        input_ids = np.full((batch, width), self.pad_token_id, dtype=np.int64)  # [batch, seq]
        token_type_ids = np.zeros((batch, width), dtype=np.int64)  # [batch, seq]
        attention_mask = np.zeros((batch, width), dtype=np.int64)  # [batch, seq]
        labels = np.full((batch, width), IGNORE_INDEX, dtype=np.int64)  # [batch, seq]
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        for row, (instance, length) in enumerate(zip(instances, lengths)):
            ids = np.asarray(instance["input_ids"], dtype=np.int64)
            input_ids[row, :length] = ids
            attention_mask[row, :length] = 1
            if "token_type_ids" in instance:
                token_type_ids[row, :length] = instance["token_type_ids"]
            word_starts = instance.get("word_starts")
            chosen = self._choose_positions(
                ids, None if word_starts is None else np.asarray(word_starts), gen
            )
            rows.append(np.full(len(chosen), row))
            cols.append(chosen)
        row_index, col_index = np.concatenate(rows), np.concatenate(cols)
        labels[row_index, col_index] = input_ids[row_index, col_index]
        # 80% [MASK], 10% random token, 10% unchanged (by default). Draw for every chosen position, in one
        # go, so the generator's stream does not depend on which branch each position takes.
        n = len(row_index)
        action = torch.rand(n, generator=gen).numpy()  # float32 [n]
        random_ids = self._replacement_ids[
            torch.randint(len(self._replacement_ids), (n,), generator=gen)
        ].numpy()  # int64 [n]
        masked = action < self.mask_replace_prob
        replaced = action >= 1.0 - self.random_replace_prob
        input_ids[row_index[masked], col_index[masked]] = self.mask_token_id
        input_ids[row_index[replaced], col_index[replaced]] = random_ids[replaced]
        out = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "token_type_ids": torch.from_numpy(token_type_ids),
            "labels": torch.from_numpy(labels),
        }
        if all("next_sentence_label" in x for x in instances):
            out["next_sentence_label"] = torch.tensor(
                [int(x["next_sentence_label"]) for x in instances], dtype=torch.int64
            )  # [batch]
        return out

    def _choose_positions(
        self, ids: np.ndarray, word_starts: np.ndarray | None, gen: torch.Generator
    ) -> np.ndarray:
        """Positions (int64 [k]) of one unpadded sequence to predict."""
        known = ids < len(self._is_special)
        candidate = np.ones(len(ids), dtype=bool)
        candidate[known] = ~self._is_special[ids[known]]
        positions = np.flatnonzero(candidate)  # int64 [n_candidates]
        budget = round(len(ids) * self.mlm_probability)
        if self.mlm_probability > 0:
            budget = max(1, budget)
        budget = min(budget, self.max_predictions_per_seq, len(positions))
        if budget <= 0:
            return np.zeros(0, dtype=np.int64)
        if not self.whole_word_mask or word_starts is None:
            order = torch.randperm(len(positions), generator=gen).numpy()
            return np.sort(positions[order[:budget]])
        # Words: a candidate starts a new word when flagged so, or when the previous position is
        # not a candidate (e.g. a "##" piece right after [CLS] because the front was truncated).
        new_word = word_starts[positions].astype(bool)
        new_word[1:] |= positions[1:] != positions[:-1] + 1
        new_word[0] = True
        # word w is positions[bounds[w] : bounds[w + 1]]
        bounds = np.append(np.flatnonzero(new_word), len(positions))
        chosen: list[np.ndarray] = []
        count = 0
        for word in torch.randperm(len(bounds) - 1, generator=gen).tolist():
            if count >= budget:
                break
            size = int(bounds[word + 1] - bounds[word])
            if count + size > budget:
                continue
            chosen.append(positions[bounds[word] : bounds[word + 1]])
            count += size
        return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def _check_tags(sentences: Sequence[Any], label_map) -> None:
    """Name the exact file:line of a tag the label map does not know (a sentence's lines are consecutive)."""
    for sent in sentences:
        for i, tag in enumerate(sent.tags):
            if tag not in label_map:
                path, _, line = sent.source.rpartition(":")
                where = f"{path}:{int(line) + i}" if line.isdigit() else sent.source
                raise DataError(f"{where}: label {tag!r} was not seen in the training data; "
                                f"known labels: {', '.join(map(repr, label_map.names))}")


def encode(task: str, items: Sequence[Any], tokenizer, label_map, max_length: int) -> list[dict[str, Any]]:
    """Feature dicts of a task's examples (input_ids, attention_mask, token_type_ids, labels[, word_ids]); a tag
    the label map does not know raises DataError naming its file and line."""
    if task == "token_classification":
        if label_map is not None:
            _check_tags(items, label_map)
        return encode_token_classification(items, tokenizer, label_map, max_length)
    return encode_classification(items, tokenizer, label_map, max_length)
