"""Batch sources and orders: length-grouped / length-sorted orders, and the resumable batch iterables the
training loop takes (iterables with state_dict / load_state_dict)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .collators import MaskingCollator, pad_collate


def length_grouped_order(
    lengths: Sequence[int],
    batch_size: int,
    seed: int = 0,
    mega_batch_mult: int = 50,
) -> list[int]:
    """A permutation of ``range(len(lengths))`` in which consecutive ``batch_size`` chunks hold similar
    lengths, so dynamic padding wastes little.

    Indices are shuffled with ``seed``, cut into mega-batches of ``mega_batch_mult * batch_size``,
    sorted by length (longest first) inside each, cut into batches, and the batch order shuffled.
    A short batch (when ``batch_size`` does not divide ``len(lengths)``) is kept last, so callers
    simply chunk the result by ``batch_size``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = random.Random(seed)
    indices = list(range(len(lengths)))
    rng.shuffle(indices)
    mega = max(1, mega_batch_mult) * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(indices), mega):
        group = sorted(indices[start : start + mega], key=lambda i: -lengths[i])
        batches.extend(group[j : j + batch_size] for j in range(0, len(group), batch_size))
    short = batches.pop() if batches and len(batches[-1]) < batch_size else None
    rng.shuffle(batches)
    if short is not None:
        batches.append(short)
    return [i for b in batches for i in b]


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so OOM shows up at once)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class TaskBatches:
    """The training batch source: epoch-based, seeded, length-grouped shuffled batches of feature dicts,
    padded per batch (`pad_collate`). Epoch `e` uses the order `length_grouped_order(seed + e)`.

    Resumable: `state_dict()` is `{"epoch", "position"}` (batches handed out in that epoch); once an
    epoch is used up, the next iteration starts the following one.

    Distributed: `batch_size` is the *global* batch size; rank `r` of `world_size` takes every
    `world_size`-th example of each batch from the `r`-th (similar lengths on every rank). A last batch
    with fewer examples than processes is dropped. The position is global, the same on every rank.
    """

    def __init__(self, features: Sequence[dict[str, Any]], batch_size: int, pad_token_id: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if not features:
            raise ValueError("TaskBatches needs at least one example")
        if batch_size < world_size:
            raise ValueError(f"batch_size ({batch_size}) must be at least world_size ({world_size}): it is the "
                             "global batch, split over the processes")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.features = features
        self.batch_size = batch_size
        self.pad_token_id = pad_token_id
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.lengths = [len(f["input_ids"]) for f in features]
        self.epoch = 0
        self.position = 0
        self._order: tuple[int, list[list[int]]] | None = None

    def __len__(self) -> int:
        short = len(self.features) % self.batch_size
        dropped = self.world_size > 1 and 0 < short < self.world_size
        return math.ceil(len(self.features) / self.batch_size) - dropped

    def batches_of_epoch(self, epoch: int) -> list[list[int]]:
        if self._order is None or self._order[0] != epoch:
            from .batches import length_grouped_order

            order = length_grouped_order(self.lengths, self.batch_size, seed=self.seed * 1_000_003 + epoch)
            batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
            self._order = (epoch, batches[:len(self)])
        return self._order[1]

    def __iter__(self):
        if self.position >= len(self):
            self.epoch += 1
            self.position = 0
        batches = self.batches_of_epoch(self.epoch)
        while self.position < len(batches):
            indices = batches[self.position][self.rank::self.world_size]
            self.position += 1  # counted as handed out before the caller sees it
            yield pad_collate([self.features[i] for i in indices], self.pad_token_id)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])


def _mix_seed(*parts: int) -> int:
    """A well-spread 63-bit seed from several integers (e.g. seed, batch index, rank)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 32 | int(state[1])) & ((1 << 63) - 1)


class PretrainingBatches:
    """Infinite, resumable iterator of batches over a dataset of instances (masked by a `MaskingCollator`, or
    causal-LM blocks stacked by `causal_lm_collate`).

    Epoch `e` visits the dataset in the order `numpy.random.default_rng([seed, e]).permutation(n)`
    (or in order, with `shuffle=False`), `batch_size` instances at a time; the last incomplete
    batch of an epoch is dropped so every batch (and every rank) has the same size. Batch `i` of
    epoch `e` has the global index `e * len(self) + i` and is masked from a generator seeded by
    `(seed, global index, rank)`, so a resumed run produces exactly the batches an uninterrupted
    one would.

    Distributed: `batch_size` is the *global* batch size; rank `r` of `world_size` takes the
    `r`-th of `world_size` equal, disjoint slices of every global batch.

    `state_dict()` is `{"epoch", "index", "batch_size"}` where index counts batches already yielded in the
    epoch and batch_size is the global batch; `load_state_dict` jumps there without collating anything, on
    any number of processes, provided the global batch is the same.
    """

    def __init__(
        self,
        dataset: Sequence[Mapping[str, Any]],
        collator: MaskingCollator | Callable[[list, torch.Generator], dict[str, torch.Tensor]],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(
                f"batch_size ({batch_size}) must be a positive multiple of world_size ({world_size})"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if len(dataset) < batch_size:
            raise ValueError(f"dataset has {len(dataset)} instances, fewer than one batch of {batch_size}")
        self.dataset = dataset
        self.collator = collator
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.local_batch_size = batch_size // world_size
        self.epoch = 0
        self.index = 0
        self._order_epoch = -1
        self._order = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.dataset) // self.batch_size

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "batch_size": self.batch_size}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        epoch, index = int(state["epoch"]), int(state["index"])
        saved = int(state.get("batch_size", self.batch_size))
        if saved != self.batch_size:
            raise ValueError(f"the saved batch position counts global batches of {saved} sequences, this source's "
                             f"global batch is {self.batch_size} (per-process batch x processes): keep it the same "
                             "to resume")
        if epoch < 0 or not 0 <= index <= len(self):
            raise ValueError(f"invalid batch position {dict(state)} for {len(self)} batches per epoch")
        self.epoch, self.index = epoch, index

    def order(self, epoch: int) -> np.ndarray:
        """int64 [n]: dataset indices in the order epoch `epoch` visits them."""
        if epoch != self._order_epoch:
            n = len(self.dataset)
            self._order = (
                np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            )
            self._order_epoch = epoch
        return self._order

    def indices(self, epoch: int, index: int) -> np.ndarray:
        """int64 [local_batch_size]: this rank's dataset indices for batch `index` of `epoch`."""
        start = index * self.batch_size + self.rank * self.local_batch_size
        return self.order(epoch)[start : start + self.local_batch_size]

    def __iter__(self) -> PretrainingBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.index >= len(self):
            self.epoch, self.index = self.epoch + 1, 0
        global_index = self.epoch * len(self) + self.index
        instances = [self.dataset[int(i)] for i in self.indices(self.epoch, self.index)]
        generator = torch.Generator().manual_seed(_mix_seed(self.seed, global_index, self.rank))
        batch = self.collator(instances, generator)
        self.index += 1  # counted as consumed once handed out
        return batch


class SparseMLMBatches:
    """The batch source, with `sparse_mlm=True` added to each batch: the MLM decoder then runs on
    masked positions only. Resumable like the source it wraps."""

    def __init__(self, source):
        self.source = source

    def __iter__(self):
        for batch in self.source:
            yield {**batch, "sparse_mlm": True}

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)
