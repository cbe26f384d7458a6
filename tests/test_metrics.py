"""Metrics against hand-computed masks and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    cohen_kappa_score,
    jaccard_score,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)
from sklearn.metrics import roc_curve as sk_roc_curve

from her2kit.evaluation.metrics import (
    binary_metrics,
    class_counts,
    confusion_matrix,
    json_safe,
    pixel_metrics,
    quadratic_kappa,
    roc_curve,
    score_index,
    score_metrics,
)

# 4 x 5 labels; counted by hand below.
TRUTH = np.array([
    [0, 0, 1, 1, 0],
    [0, 2, 2, 1, 0],
    [0, 2, 2, 1, 0],
    [0, 0, 1, 1, 0],
])
PRED = np.array([
    [0, 1, 1, 1, 0],
    [0, 2, 2, 2, 0],
    [0, 2, 0, 1, 0],
    [0, 0, 0, 1, 1],
])


def test_hand_computed_membrane_and_nucleus():
    m = pixel_metrics(confusion_matrix(TRUTH, PRED, 3))
    # membrane: truth at 6 pixels, predicted at 6; overlap (0,2),(0,3),(2,3),(3,3) = 4
    # TP 4, FP 2 ((0,1),(3,4)), FN 2 ((1,3),(3,2)), TN 12
    mem = m["membrane"]
    assert mem["dice"] == pytest.approx(2 * 4 / (6 + 6))
    assert mem["precision"] == pytest.approx(4 / 6)
    assert mem["recall"] == pytest.approx(4 / 6)
    assert mem["sa"] == pytest.approx(4 / 8)
    assert mem["npv"] == pytest.approx(12 / 14)
    assert mem["fpr"] == pytest.approx(2 / 14)
    assert mem["accuracy"] == pytest.approx(16 / 20)
    assert mem["cc"] == pytest.approx((4 * 12 - 2 * 2) / math.sqrt(6 * 6 * 14 * 14))
    # nucleus: truth 4 pixels, predicted 4 ((1,1),(1,2),(1,3),(2,1)); overlap 3
    nuc = m["nucleus"]
    assert nuc["dice"] == pytest.approx(2 * 3 / (4 + 4))
    assert nuc["f_score"] == pytest.approx(nuc["dice"])
    assert class_counts(confusion_matrix(TRUTH, PRED, 3), 2) == (3, 1, 1, 15)


def test_dice_is_not_the_paper_formula_without_two():
    same = np.array([[1, 1], [0, 0]])
    m = pixel_metrics(confusion_matrix(same, same, 3))
    assert m["membrane"]["dice"] == 1.0  # the paper's eq. 13 would give 0.5


def test_against_sklearn_on_random_labels():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 3, 5000)
    p = np.where(rng.random(5000) < 0.7, t, rng.integers(0, 3, 5000))
    m = pixel_metrics(confusion_matrix(t, p, 3))
    prec, rec, f1, _ = precision_recall_fscore_support(t, p, labels=[0, 1, 2], zero_division=0)
    for c, name in enumerate(("background", "membrane", "nucleus")):
        assert m[name]["precision"] == pytest.approx(prec[c])
        assert m[name]["recall"] == pytest.approx(rec[c])
        assert m[name]["f_score"] == pytest.approx(f1[c])
        assert m[name]["dice"] == pytest.approx(f1[c])
        assert m[name]["sa"] == pytest.approx(jaccard_score(t == c, p == c))
        assert m[name]["cc"] == pytest.approx(matthews_corrcoef(t == c, p == c))
        assert m[name]["cc"] == pytest.approx(np.corrcoef(t == c, p == c)[0, 1])
        tn = np.sum((t != c) & (p != c))
        assert m[name]["npv"] == pytest.approx(tn / np.sum(p != c))
        assert m[name]["fpr"] == pytest.approx(np.sum((t != c) & (p == c)) / np.sum(t != c))


def test_roc_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    y = rng.random(3000) < 0.3
    s = np.round(y * 0.3 + rng.random(3000), 2)  # rounding makes many ties
    fpr, tpr, auc = roc_curve(y, s)
    assert auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    sk_fpr, sk_tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert math.isnan(roc_curve(np.ones(5, bool), np.arange(5))[2])
    # weighted (each sampled pixel standing for several): sklearn's sample_weight
    w = rng.integers(1, 50, 3000).astype(float)
    fpr, tpr, auc = roc_curve(y, s, w)
    assert auc == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-12)
    sk_fpr, sk_tpr, _ = sk_roc_curve(y, s, sample_weight=w, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    with pytest.raises(ValueError, match="NaN"):  # QA: all-NaN scores gave an AUC of 0.667
        roc_curve(y, np.full(3000, np.nan))


def test_quadratic_kappa_and_score_metrics_match_sklearn():
    rng = np.random.default_rng(2)
    t = rng.integers(0, 4, 200)
    p = np.clip(t + rng.integers(-1, 2, 200), 0, 3)
    expected = cohen_kappa_score(t, p, weights="quadratic")
    assert quadratic_kappa(confusion_matrix(t, p, 4)) == pytest.approx(expected)
    s = score_metrics(t.tolist(), p.tolist())
    assert s["qwk"] == pytest.approx(expected)
    assert s["accuracy"] == pytest.approx(np.mean(t == p))
    assert np.asarray(s["confusion"]).sum() == 200
    assert np.asarray(s["confusion"])[1, 2] == np.sum((t == 1) & (p == 2))


def test_undefined_ratios_become_null():
    m = binary_metrics(tp=0, fp=0, fn=0, tn=10)
    assert math.isnan(m["dice"]) and math.isnan(m["precision"])
    assert m["accuracy"] == 1.0
    assert json_safe(m)["dice"] is None
    assert json_safe({"a": [np.float32(0.5), float("inf")]}) == {"a": [0.5, None]}


def test_confusion_ignores_out_of_range_truth_and_checks_sizes():
    cm = confusion_matrix(np.array([0, 1, 255]), np.array([0, 1, 1]), 3)
    assert cm.sum() == 2
    with pytest.raises(ValueError):
        confusion_matrix(np.zeros(3), np.zeros(4), 3)


def test_score_index():
    assert [score_index(s) for s in ("0", "1+", "2+", "3+", 3, "x", None)] == [0, 1, 2, 3, 3, None, None]
