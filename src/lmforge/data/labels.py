"""Task names, the problem types they map to in a model config, and `LabelMap` (label names <->
ids, round-tripping through a config's id2label / label2id)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .labelled import DataError, Example, TaggedSentence

# The one task enum: fine-tuning, data loading and metrics take these names.
TASKS = ("single_label", "multi_label", "regression", "token_classification")


PROBLEM_TYPES = {
    "single_label": "single_label_classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
    "token_classification": None,
}


class LabelMap:
    """Label names <-> ids. Ids follow the order given (``from_examples`` sorts the names)."""

    def __init__(self, names: Iterable[str]):
        self.names: list[str] = list(names)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate label names: {self.names}")
        self.label2id: dict[str, int] = {n: i for i, n in enumerate(self.names)}

    @classmethod
    def from_examples(cls, examples: Iterable[Example | TaggedSentence]) -> LabelMap:
        """Collect the labels of training examples (str, list[str], or a sentence's tags), sorted."""
        seen: set[str] = set()
        for ex in examples:
            if isinstance(ex, TaggedSentence):
                seen.update(ex.tags)
            elif isinstance(ex.label, str):
                seen.add(ex.label)
            elif isinstance(ex.label, list):
                seen.update(ex.label)
            elif ex.label is not None:
                raise DataError(f"{ex.source}: label {ex.label!r} is not a class label")
        if not seen:
            raise DataError("no class labels found in the training examples")
        return cls(sorted(seen))

    @classmethod
    def from_config(cls, id2label: Mapping[Any, str], label2id: Mapping[str, Any] | None = None) -> LabelMap:
        """Rebuild from a config's ``id2label`` (keys may be JSON strings such as ``"0"``)."""
        items = sorted((int(k), v) for k, v in id2label.items())
        if [k for k, _ in items] != list(range(len(items))):
            raise ValueError(f"id2label ids must be 0..{len(items) - 1}, got {[k for k, _ in items]}")
        lm = cls(v for _, v in items)
        if label2id is not None and {k: int(v) for k, v in label2id.items()} != lm.label2id:
            raise ValueError(f"label2id {dict(label2id)} does not match id2label {dict(id2label)}")
        return lm

    def to_config(self) -> tuple[dict[int, str], dict[str, int]]:
        """``(id2label, label2id)`` for a model config."""
        return dict(enumerate(self.names)), dict(self.label2id)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, label: object) -> bool:
        return label in self.label2id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelMap) and self.names == other.names

    def __repr__(self) -> str:
        return f"LabelMap({self.names!r})"

    def encode(self, label: str, source: str | None = None) -> int:
        """Id of ``label``; :class:`DataError` naming ``source`` and the known labels if unseen."""
        try:
            return self.label2id[label]
        except (KeyError, TypeError):
            where = f"{source}: " if source else ""
            raise DataError(
                f"{where}label {label!r} was not seen in the training data; "
                f"known labels: {', '.join(map(repr, self.names))}"
            ) from None

    def encode_multi(self, labels: Iterable[str], source: str | None = None) -> list[float]:
        """Multi-hot vector (floats, for ``BCEWithLogitsLoss``) of a multi-label example."""
        vec = [0.0] * len(self.names)
        for label in labels:
            vec[self.encode(label, source)] = 1.0
        return vec

    def decode(self, idx: int) -> str:
        return self.names[int(idx)]


def build_label_map(task: str, train: Sequence[Any]):
    """LabelMap of the training split (sorted label names); None for regression."""
    return None if task == "regression" else LabelMap.from_examples(train)
