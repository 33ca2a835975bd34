"""Splits: the file names that name a split, seeded (stratified) splits of one file, label fractions, and
`load_splits` (train / validation / test for a task from a dataset name, a file or a folder)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .labelled import DataError, load_conll, load_examples


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder rounding of ``n * fractions`` so the counts sum to ``n``."""
    raw = [n * f for f in fractions]
    counts = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def split_examples(
    examples: Sequence[Any],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    stratify: bool = False,
) -> tuple[list[Any], ...]:
    """Shuffle with ``seed`` and cut into ``len(fractions)`` parts (e.g. train / validation / test).

    Part sizes are ``len(examples) * fraction`` rounded so they sum to ``len(examples)``.
    ``stratify=True`` splits each class (``Example.label``, a ``str``) separately so every part keeps
    the class proportions; the parts are then shuffled.
    """
    if not fractions or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {tuple(fractions)}")
    rng = random.Random(seed)
    if not stratify:
        items = list(examples)
        rng.shuffle(items)
        parts, start = [], 0
        for c in _split_counts(len(items), fractions):
            parts.append(items[start : start + c])
            start += c
        return tuple(parts)
    groups: dict[str, list[Any]] = {}
    for ex in examples:
        if not isinstance(ex.label, str):
            raise TypeError(f"stratify=True needs single-label examples; {ex.source} has label {ex.label!r}")
        groups.setdefault(ex.label, []).append(ex)
    parts = [[] for _ in fractions]
    for label in sorted(groups):
        items = groups[label]
        rng.shuffle(items)
        start = 0
        for part, c in zip(parts, _split_counts(len(items), fractions)):
            part.extend(items[start : start + c])
            start += c
    for part in parts:
        rng.shuffle(part)
    return tuple(parts)


SPLIT_NAMES = ("train", "validation", "test")
# File names (before the first dot) that name a split.
SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "dev": "validation",
                 "test": "test"}  # fmt: skip


def split_files(folder: Path, suffixes: Sequence[str] | None, what: str) -> dict[str, Path]:
    """The train / validation (also dev, valid) / test files of `folder` (with one of `suffixes`, or any),
    in that order; `what` names the files in the error when there are none."""
    files: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        split = SPLIT_ALIASES.get(file.name.split(".", 1)[0].lower())
        if split is None or not file.is_file() or (suffixes is not None and file.suffix.lower() not in suffixes):
            continue
        if split in files:
            raise DataError(f"{folder}: more than one file for the {split!r} split (e.g. {file.name})")
        files[split] = file
    if not files:
        raise DataError(f"{folder}: no train/validation/test {what} in this folder")
    return {k: files[k] for k in SPLIT_NAMES if k in files}


def raw_splits(data: str, task: str, columns: dict[str, Any], seed: int) -> tuple[dict[str, list], Any]:
    """The splits `data` names as given (no splitting), and a loader for extra files."""
    from .datasets import dataset_names, resolve_task_data  # here: datasets.py imports this module

    if task == "token_classification":
        if data in dataset_names():
            raise ValueError(f"dataset {data!r} is not a token-classification dataset; pass CoNLL files")
        path = Path(data)
        if path.is_dir():
            return {k: load_conll(f) for k, f in split_files(path, None, "CoNLL files").items()}, load_conll
        if not path.is_file():
            raise DataError(f"{data}: no such file or folder")
        return {"train": load_conll(path)}, load_conll
    kwargs = dict(columns, task=task)
    if data in dataset_names():
        resolved = resolve_task_data(data, seed=seed)
        if resolved.task != task:
            raise ValueError(f"dataset {data!r} is a {resolved.task} task, not {task}")
        if columns.get("text_pair_column"):
            raise ValueError(f"dataset {data!r} has no text pairs; drop --text-pair-column")
    else:
        resolved = resolve_task_data(data, seed=seed, **kwargs)
    return dict(resolved), lambda file: load_examples(file, **kwargs)


def load_splits(
    data: str,
    task: str = "single_label",
    *,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    label_delimiter: str = "|",
    validation_file: str | None = None,
    test_file: str | None = None,
    seed: int = 0,
) -> dict[str, list]:
    """`{"train", "validation"[, "test"]}` lists of `Example` (or `TaggedSentence` for token
    classification), completed by seeded splits of the training data where the data lacks them."""
    columns = {"text_column": text_column, "text_pair_column": text_pair_column, "label_column": label_column,
               "label_delimiter": label_delimiter}
    splits, load_file = raw_splits(str(data), task, columns, seed)
    if validation_file:
        splits["validation"] = load_file(validation_file)
    if test_file:
        splits["test"] = load_file(test_file)
    if not splits.get("train"):
        raise DataError(f"{data}: no training examples")
    stratify = task == "single_label"
    if "validation" not in splits and "test" not in splits:
        train, validation, test = split_examples(splits["train"], (0.8, 0.1, 0.1), seed=seed, stratify=stratify)
        splits = {"train": train, "validation": validation, "test": test}
    elif "validation" not in splits:
        train, validation = split_examples(splits["train"], (0.9, 0.1), seed=seed, stratify=stratify)
        splits = {"train": train, "validation": validation, "test": splits["test"]}
    for name in ("train", "validation"):
        if not splits[name]:
            raise DataError(f"{data}: the {name} split is empty (too few examples to split)")
    if "test" in splits and not splits["test"]:
        del splits["test"]
    return {k: splits[k] for k in ("train", "validation", "test") if k in splits}


def subsample(examples: Sequence[Any], fraction: float, seed: int = 0, stratify: bool = False) -> list[Any]:
    """A seeded `fraction` of `examples`, in their original order. `stratify` (single-label) takes
    that fraction of every class, at least one example each."""
    if fraction >= 1.0:
        return list(examples)
    rng = random.Random(seed)
    if stratify:
        groups: dict[str, list[int]] = {}
        for i, ex in enumerate(examples):
            groups.setdefault(ex.label, []).append(i)
        keep: list[int] = []
        for label in sorted(groups):
            indices = groups[label]
            rng.shuffle(indices)
            keep.extend(indices[: max(1, round(len(indices) * fraction))])
    else:
        indices = list(range(len(examples)))
        rng.shuffle(indices)
        keep = indices[: max(1, round(len(indices) * fraction))]
    return [examples[i] for i in sorted(keep)]
