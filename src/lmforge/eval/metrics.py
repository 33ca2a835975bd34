"""Evaluation metrics in plain numpy (no scikit-learn / scipy / seqeval).

Conventions follow scikit-learn where it has the metric: an undefined precision, recall or F1
(zero denominator) counts as 0, and the classes of macro averages are the union of the labels in
references and predictions unless ``labels`` is given. Labels may be ints or strings.

* :func:`accuracy`, :func:`macro_f1`, :func:`matthews_corrcoef` (multi-class general form, 0 when
  undefined) for single-label classification;
* :func:`pearson`, :func:`spearman` (average ranks for ties; ``nan`` for constant input) for regression;
* :func:`roc_auc` (Mann-Whitney: ties count one half; ``nan`` with one class only) for binary scores;
* :func:`multilabel_f1` (micro / macro) for multi-label classification;
* :func:`entity_f1` for BIO / IOB2 (and IOB1 / IOBES) tag sequences, with conlleval's chunk rules;
* :func:`compute_metrics` picks the set for a task type and returns a flat ``dict[str, float]``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np

from ..data.labels import TASKS

__all__ = [
    "accuracy",
    "compute_metrics",
    "entity_f1",
    "get_entities",
    "macro_f1",
    "matthews_corrcoef",
    "multilabel_f1",
    "pearson",
    "roc_auc",
    "spearman",
]



def _pair(predictions: Any, references: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predictions)
    r = np.asarray(references)
    if p.shape != r.shape:
        raise ValueError(f"predictions {p.shape} and references {r.shape} differ in shape")
    if p.size == 0:
        raise ValueError("no predictions to score")
    return p, r


def _safe_div(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def accuracy(predictions: Sequence[Any], references: Sequence[Any]) -> float:
    """Fraction of predictions equal to their reference."""
    p, r = _pair(predictions, references)
    return float(np.mean(p == r))


def _confusion(p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confusion matrix ``C[true, pred]`` over the classes seen in either array."""
    classes = np.unique(np.concatenate([r.ravel(), p.ravel()]))
    index = {c: i for i, c in enumerate(classes.tolist())}
    k = len(classes)
    cm = np.zeros((k, k), dtype=np.int64)
    for t, q in zip(r.ravel().tolist(), p.ravel().tolist()):
        cm[index[t], index[q]] += 1
    return cm, classes


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    # F1 = 2TP / (2TP + FP + FN), which equals 2PR/(P+R) and is 0 when undefined.
    den = 2 * tp + fp + fn
    return np.divide(2 * tp, den, out=np.zeros(tp.shape, dtype=np.float64), where=den > 0)


def macro_f1(
    predictions: Sequence[Any], references: Sequence[Any], labels: Sequence[Any] | None = None
) -> float:
    """Unweighted mean of per-class F1 over ``labels`` (default: every class in refs or preds).

    A class never predicted (or never true) has F1 = 0 and still counts in the mean.
    """
    p, r = _pair(predictions, references)
    if labels is None:
        classes = np.unique(np.concatenate([r.ravel(), p.ravel()]))
    else:
        classes = np.asarray(labels)
    tp = np.array([np.sum((p == c) & (r == c)) for c in classes], dtype=np.float64)
    fp = np.array([np.sum((p == c) & (r != c)) for c in classes], dtype=np.float64)
    fn = np.array([np.sum((p != c) & (r == c)) for c in classes], dtype=np.float64)
    return float(np.mean(_f1_from_counts(tp, fp, fn))) if len(classes) else 0.0


def matthews_corrcoef(predictions: Sequence[Any], references: Sequence[Any]) -> float:
    """Matthews correlation coefficient, multi-class (Gorodkin's R_K) form.

    With confusion matrix ``C``, ``c = trace(C)``, ``s = sum(C)``, ``t_k`` true counts and ``p_k``
    predicted counts: ``(c*s - t.p) / sqrt((s^2 - p.p) * (s^2 - t.t))``; 0 when the denominator is 0
    (e.g. every prediction is the same class). Equals the phi coefficient for two classes.
    """
    p, r = _pair(predictions, references)
    cm, _ = _confusion(p, r)
    cm = cm.astype(np.float64)
    t = cm.sum(axis=1)
    q = cm.sum(axis=0)
    c = np.trace(cm)
    s = cm.sum()
    num = c * s - t @ q
    den = np.sqrt((s * s - q @ q) * (s * s - t @ t))
    return float(num / den) if den > 0 else 0.0


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; ``nan`` when either input is constant."""
    a, b = _pair(x, y)
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a @ a) * (b @ b))
    if den == 0:
        return float("nan")
    return float(np.clip((a @ b) / den, -1.0, 1.0))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span (scipy's ``rankdata`` 'average')."""
    sorter = np.argsort(x, kind="mergesort")
    inv = np.empty(sorter.size, dtype=np.intp)
    inv[sorter] = np.arange(sorter.size)
    xs = x[sorter]
    new_group = np.r_[True, xs[1:] != xs[:-1]]
    dense = new_group.cumsum()[inv]  # 1-based group id of each element
    bounds = np.r_[np.nonzero(new_group)[0], len(new_group)]  # group g spans [bounds[g-1], bounds[g])
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def roc_auc(scores: Sequence[float], labels: Sequence[Any]) -> float:
    """Area under the ROC curve of `scores` for binary `labels` (truthy = positive): the probability that a
    random positive scores above a random negative (ties count one half), from the rank sum."""
    s, y = _pair(scores, labels)
    s, y = s.astype(np.float64).ravel(), y.astype(bool).ravel()
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    rank_sum = _average_ranks(s)[y].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation: Pearson on average ranks (ties share their mean rank)."""
    a, b = _pair(x, y)
    return pearson(_average_ranks(a.astype(np.float64).ravel()), _average_ranks(b.astype(np.float64).ravel()))


def _multi_hot(
    predictions: Any, references: Any, labels: Sequence[Hashable] | None
) -> tuple[np.ndarray, ...]:
    """Accept 0/1 matrices or sequences of label collections; return two bool arrays [n, k].

    A 2-D array, or a list of equal-length, non-empty rows holding only 0/1 numbers, is a matrix;
    anything else is a sequence of label collections (pass sets or label names to be unambiguous).
    """

    def is_matrix(x: Any) -> bool:
        if isinstance(x, np.ndarray):
            return x.ndim == 2
        rows = list(x)
        return (
            bool(rows)
            and all(isinstance(row, (list, tuple, np.ndarray)) for row in rows)
            and len({len(row) for row in rows}) == 1
            and len(rows[0]) > 0
            and all(
                isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and v in (0, 1)
                for row in rows
                for v in row
            )
        )

    if is_matrix(predictions) and is_matrix(references):
        p = np.asarray(predictions) > 0.5
        r = np.asarray(references) > 0.5
        if p.shape != r.shape:
            raise ValueError(f"predictions {p.shape} and references {r.shape} differ in shape")
        return p, r
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if labels is None:
        labels = sorted({lab for row in (*predictions, *references) for lab in row})
    index = {lab: i for i, lab in enumerate(labels)}
    p = np.zeros((len(predictions), len(index)), dtype=bool)
    r = np.zeros_like(p)
    for out, rows in ((p, predictions), (r, references)):
        for i, row in enumerate(rows):
            for lab in row:
                if lab in index:
                    out[i, index[lab]] = True
    return p, r


def multilabel_f1(
    predictions: Any,
    references: Any,
    average: str = "micro",
    labels: Sequence[Hashable] | None = None,
) -> float:
    """Multi-label F1. Inputs: 0/1 matrices ``[n, num_labels]`` or per-example label collections.

    ``average="micro"`` pools TP/FP/FN over all labels; ``"macro"`` averages per-label F1 (a label
    with no true and no predicted positives scores 0).
    """
    if average not in ("micro", "macro"):
        raise ValueError(f"average must be 'micro' or 'macro', got {average!r}")
    p, r = _multi_hot(predictions, references, labels)
    if p.shape[0] == 0:
        raise ValueError("no predictions to score")
    tp = (p & r).sum(axis=0).astype(np.float64)
    fp = (p & ~r).sum(axis=0).astype(np.float64)
    fn = (~p & r).sum(axis=0).astype(np.float64)
    if average == "micro":
        return float(_f1_from_counts(tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True))[0])
    return float(np.mean(_f1_from_counts(tp, fp, fn))) if p.shape[1] else 0.0


# ----------------------------------------------------------------------------------- entity F1


def _split_tag(tag: str) -> tuple[str, str]:
    if tag in ("O", "", "."):
        return "O", ""
    if "-" in tag:
        prefix, _, kind = tag.partition("-")
        return prefix, kind
    return tag, ""


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    # conlleval's endOfChunk
    if prev_tag in ("E", "S", "L", "U"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O", "U"):
        return True
    return prev_tag != "O" and prev_type != type_


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    # conlleval's startOfChunk
    if tag in ("B", "S", "U"):
        return True
    if prev_tag in ("E", "S", "O", "L", "U") and tag in ("E", "I", "L"):
        return True
    return tag != "O" and prev_type != type_


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Chunks ``(type, start, end_inclusive)`` of one tag sequence, by conlleval's rules.

    ``B-X`` starts a chunk; ``I-X`` continues one of type ``X`` and otherwise (after ``O`` or a
    different type) starts a new chunk, as conlleval does. IOBES / BILOU prefixes also work.
    """
    chunks: list[tuple[str, int, int]] = []
    prev_tag, prev_type = "O", ""
    start = -1
    for i, tag in enumerate([*tags, "O"]):
        cur_tag, cur_type = _split_tag(tag)
        if start >= 0 and _end_of_chunk(prev_tag, cur_tag, prev_type, cur_type):
            chunks.append((prev_type, start, i - 1))
            start = -1
        if _start_of_chunk(prev_tag, cur_tag, prev_type, cur_type):
            start = i
        prev_tag, prev_type = cur_tag, cur_type
    return chunks


def entity_f1(
    true_tag_seqs: Sequence[Sequence[str]],
    pred_tag_seqs: Sequence[Sequence[str]],
    per_type: bool = False,
) -> dict[str, float]:
    """Entity-level precision / recall / F1 (micro over all entities), as conlleval / seqeval report.

    A predicted entity counts only if its type, start and end all match a true entity.
    Returns ``{"precision", "recall", "f1"}``; with ``per_type=True`` also ``"<TYPE>_precision"``,
    ``"<TYPE>_recall"``, ``"<TYPE>_f1"`` for every entity type seen.
    """
    if len(true_tag_seqs) != len(pred_tag_seqs):
        raise ValueError(f"{len(true_tag_seqs)} true sequences but {len(pred_tag_seqs)} predicted")
    true_set: set[tuple[int, str, int, int]] = set()
    pred_set: set[tuple[int, str, int, int]] = set()
    for n, (t, p) in enumerate(zip(true_tag_seqs, pred_tag_seqs)):
        if len(t) != len(p):
            raise ValueError(f"sequence {n}: {len(t)} true tags but {len(p)} predicted")
        true_set.update((n, *e) for e in get_entities(t))
        pred_set.update((n, *e) for e in get_entities(p))

    def prf(ts: set, ps: set) -> tuple[float, float, float]:
        correct = len(ts & ps)
        precision = _safe_div(correct, len(ps))
        recall = _safe_div(correct, len(ts))
        return precision, recall, _safe_div(2 * precision * recall, precision + recall)

    precision, recall, f1 = prf(true_set, pred_set)
    out = {"precision": precision, "recall": recall, "f1": f1}
    if per_type:
        for kind in sorted({e[1] for e in true_set | pred_set}):
            pt, rt, ft = prf({e for e in true_set if e[1] == kind}, {e for e in pred_set if e[1] == kind})
            out.update({f"{kind}_precision": pt, f"{kind}_recall": rt, f"{kind}_f1": ft})
    return out


# ----------------------------------------------------------------------------------- by task


def _flatten(seqs: Iterable[Iterable[Any]]) -> list[Any]:
    return [x for s in seqs for x in s]


def compute_metrics(task: str, predictions: Any, references: Any) -> dict[str, float]:
    """The standard metrics of a task type, as a flat dict of floats.

    * ``single_label``: ``accuracy``, ``macro_f1``, ``mcc``
    * ``regression``: ``pearson``, ``spearman``, ``mse``
    * ``multi_label`` (0/1 matrices or label collections): ``micro_f1``, ``macro_f1``,
      ``subset_accuracy`` (exact match of the whole label set)
    * ``token_classification`` (tag sequences): entity ``precision``, ``recall``, ``f1`` and
      token-level ``accuracy``
    """
    if task == "single_label":
        return {
            "accuracy": accuracy(predictions, references),
            "macro_f1": macro_f1(predictions, references),
            "mcc": matthews_corrcoef(predictions, references),
        }
    if task == "regression":
        p, r = _pair(predictions, references)
        return {
            "pearson": pearson(p, r),
            "spearman": spearman(p, r),
            "mse": float(np.mean((p.astype(np.float64) - r.astype(np.float64)) ** 2)),
        }
    if task == "multi_label":
        p, r = _multi_hot(predictions, references, None)
        return {
            "micro_f1": multilabel_f1(p, r, "micro"),
            "macro_f1": multilabel_f1(p, r, "macro"),
            "subset_accuracy": float(np.mean(np.all(p == r, axis=1))) if len(p) else 0.0,
        }
    if task == "token_classification":
        out = entity_f1(references, predictions)
        out["accuracy"] = accuracy(_flatten(predictions), _flatten(references))
        return out
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
