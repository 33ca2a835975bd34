"""Metrics against hand-computed values (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmforge.eval.metrics import (
    accuracy,
    compute_metrics,
    entity_f1,
    get_entities,
    macro_f1,
    matthews_corrcoef,
    multilabel_f1,
    pearson,
    roc_auc,
    spearman,
)


def test_accuracy():
    # 3 of 4 equal -> 0.75; works for string labels too
    assert accuracy([0, 1, 1, 2], [0, 1, 2, 2]) == 0.75
    assert accuracy(["a", "b"], ["a", "a"]) == 0.5
    with pytest.raises(ValueError):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError):
        accuracy([], [])


def test_macro_f1_with_missing_class():
    refs = [0, 0, 1, 1, 2]
    preds = [0, 0, 1, 0, 1]  # class 2 is never predicted
    # class 0: TP=2 FP=1 (idx 3) FN=0 -> F1 = 2*2/(2*2+1+0) = 4/5
    # class 1: TP=1 FP=1 (idx 4) FN=1 (idx 3) -> F1 = 2/(2+1+1) = 1/2
    # class 2: TP=0 FP=0 FN=1 -> F1 = 0
    # macro = (0.8 + 0.5 + 0) / 3 = 1.3/3
    assert macro_f1(preds, refs) == pytest.approx(1.3 / 3)
    # A label given explicitly but absent from both counts as 0: (0.8 + 0.5 + 0 + 0) / 4
    assert macro_f1(preds, refs, labels=[0, 1, 2, 3]) == pytest.approx(1.3 / 4)
    # A class only predicted (never true) also scores 0:
    # class a: TP=1 FP=0 FN=1 -> 2/3; class b: TP=0 FP=1 FN=0 -> 0; macro = 1/3
    assert macro_f1(["a", "b"], ["a", "a"]) == pytest.approx(1 / 3)


def test_mcc_binary():
    refs = [1, 1, 1, 0, 0, 0, 0, 0]
    preds = [1, 1, 0, 0, 0, 0, 1, 0]
    # TP=2 FN=1 FP=1 TN=4
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (8-1)/sqrt(3*3*5*5) = 7/15
    assert matthews_corrcoef(preds, refs) == pytest.approx(7 / 15)
    assert matthews_corrcoef(refs, refs) == pytest.approx(1.0)
    assert matthews_corrcoef([1 - x for x in refs], refs) == pytest.approx(-1.0)
    # constant prediction -> denominator 0 -> 0
    assert matthews_corrcoef([0] * 8, refs) == 0.0


def test_mcc_multiclass():
    refs = [0, 0, 1, 1, 2, 2]
    preds = [0, 1, 1, 1, 2, 0]
    # confusion C[true, pred] = [[1,1,0],[0,2,0],[1,0,1]]
    # c = trace = 4, s = 6, t (true counts) = [2,2,2], p (pred counts) = [2,3,1]
    # t.p = 4+6+2 = 12 ; p.p = 4+9+1 = 14 ; t.t = 12
    # MCC = (4*6 - 12) / sqrt((36-14)*(36-12)) = 12 / sqrt(22*24) = 12/sqrt(528)
    assert matthews_corrcoef(preds, refs) == pytest.approx(12 / math.sqrt(528))
    # string labels give the same value
    names = np.array(["x", "y", "z"])
    assert matthews_corrcoef(names[preds], names[refs]) == pytest.approx(12 / math.sqrt(528))


def test_pearson():
    x = [1, 2, 3, 4]
    y = [2, 4, 5, 9]
    # mean x = 2.5 -> dx = [-1.5,-.5,.5,1.5]; mean y = 5 -> dy = [-3,-1,0,4]
    # sum dx*dy = 4.5+0.5+0+6 = 11 ; sum dx^2 = 5 ; sum dy^2 = 9+1+0+16 = 26
    # r = 11 / sqrt(5*26) = 11/sqrt(130)
    assert pearson(x, y) == pytest.approx(11 / math.sqrt(130))
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_spearman_with_ties():
    x = [1, 2, 2, 3]
    y = [1, 3, 2, 4]
    # ranks x (ties averaged): [1, 2.5, 2.5, 4]; ranks y: [1, 3, 2, 4]
    # dx = [-1.5, 0, 0, 1.5] ; dy = [-1.5, .5, -.5, 1.5]
    # sum dx*dy = 2.25+0+0+2.25 = 4.5 ; sum dx^2 = 4.5 ; sum dy^2 = 2.25+.25+.25+2.25 = 5
    # rho = 4.5 / sqrt(4.5*5) = 4.5/sqrt(22.5)
    assert spearman(x, y) == pytest.approx(4.5 / math.sqrt(22.5))
    # three-way tie: ranks of [5,5,5,1] = [3,3,3,1]; monotone transform -> 1
    assert spearman([5, 5, 5, 1], [7, 7, 7, 0]) == pytest.approx(1.0)
    assert spearman([10, 20, 30], [3, 2, 1]) == pytest.approx(-1.0)


def test_roc_auc_counts_ordered_pairs_and_half_ties():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)  # 3 of 4 (pos, neg) pairs
    assert roc_auc([1.0, 1.0, 0.0], [1, 0, 0]) == pytest.approx(0.75)  # one tie: counts 1/2
    assert roc_auc([3, 2, 1], [True, True, False]) == 1.0
    assert math.isnan(roc_auc([0.2, 0.3], [1, 1]))


def test_multilabel_f1():
    refs = [["a", "b"], ["a"], []]
    preds = [["a"], ["a", "c"], ["b"]]
    # label a: TP=2 FP=0 FN=0 -> F1 1 ; b: TP=0 FP=1 FN=1 -> 0 ; c: TP=0 FP=1 FN=0 -> 0
    # micro: TP=2 FP=2 FN=1 -> 2*2/(4+2+1) = 4/7 ; macro: (1+0+0)/3 = 1/3
    assert multilabel_f1(preds, refs, "micro") == pytest.approx(4 / 7)
    assert multilabel_f1(preds, refs, "macro") == pytest.approx(1 / 3)
    # the same as 0/1 matrices over [a, b, c]
    ref_m = [[1, 1, 0], [1, 0, 0], [0, 0, 0]]
    pred_m = [[1, 0, 0], [1, 0, 1], [0, 1, 0]]
    assert multilabel_f1(pred_m, ref_m, "micro") == pytest.approx(4 / 7)
    assert multilabel_f1(np.array(pred_m), np.array(ref_m), "macro") == pytest.approx(1 / 3)


def test_get_entities_conlleval_rules():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG", "O"]
    # B-PER I-PER -> PER(0,1); stray I-LOC after O starts LOC(3,4); B-LOC starts LOC(5,5);
    # I-ORG after LOC (type change) starts ORG(6,6)
    assert get_entities(tags) == [("PER", 0, 1), ("LOC", 3, 4), ("LOC", 5, 5), ("ORG", 6, 6)]
    # IOBES
    assert get_entities(["S-X", "B-Y", "E-Y", "O"]) == [("X", 0, 0), ("Y", 1, 2)]


def test_entity_f1_partial_matches_and_stray_i():
    true = [
        ["B-PER", "I-PER", "O", "B-LOC"],  # PER(0,1), LOC(3,3)
        ["B-ORG", "I-ORG", "I-ORG", "O"],  # ORG(0,2)
    ]
    pred = [
        ["B-PER", "O", "O", "I-LOC"],  # PER(0,0) (partial, wrong end), stray I-LOC -> LOC(3,3) correct
        ["B-ORG", "I-ORG", "I-ORG", "I-MISC"],  # ORG(0,2) correct, stray I-MISC -> MISC(3,3) wrong
    ]
    # true entities 3, predicted 4, correct 2 (LOC(3,3) and ORG(0,2))
    # precision = 2/4 = .5, recall = 2/3, f1 = 2*.5*(2/3)/(.5+2/3) = (2/3)/(7/6) = 4/7
    scores = entity_f1(true, pred)
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(4 / 7)
    per = entity_f1(true, pred, per_type=True)
    # PER: 0 correct of 1 true / 1 pred ; MISC: only predicted -> precision 0, recall 0 (no true)
    assert per["PER_f1"] == 0.0 and per["LOC_f1"] == 1.0 and per["ORG_f1"] == 1.0
    assert per["MISC_precision"] == 0.0 and per["MISC_recall"] == 0.0
    with pytest.raises(ValueError):
        entity_f1([["O"]], [["O", "O"]])


def test_compute_metrics():
    m = compute_metrics("single_label", [0, 1, 1, 0], [0, 1, 0, 0])
    # acc 3/4; class 0: TP2 FP0 FN1 -> 4/5 ; class 1: TP1 FP1 FN0 -> 2/3 ; macro (0.8+2/3)/2
    # MCC: TP=1 TN=2 FP=1 FN=0 -> (2-0)/sqrt(2*1*3*2) = 2/sqrt(12)
    assert m == pytest.approx({"accuracy": 0.75, "macro_f1": (0.8 + 2 / 3) / 2, "mcc": 2 / math.sqrt(12)})
    r = compute_metrics("regression", [1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    # mse = (0+0+1)/3 ; ranks identical -> spearman 1
    assert r["mse"] == pytest.approx(1 / 3) and r["spearman"] == pytest.approx(1.0)
    ml = compute_metrics("multi_label", [["a"], ["b"]], [["a"], ["a", "b"]])
    # micro: TP=2 FP=0 FN=1 -> 4/5 ; subset accuracy 1/2
    assert ml["micro_f1"] == pytest.approx(0.8) and ml["subset_accuracy"] == 0.5
    tc = compute_metrics("token_classification", [["B-X", "O"]], [["B-X", "I-X"]])
    # true X(0,1), pred X(0,0) -> 0 correct; token accuracy 1/2
    assert tc["f1"] == 0.0 and tc["accuracy"] == 0.5
    with pytest.raises(ValueError):
        compute_metrics("nope", [1], [1])
