"""Segmentation and scoring metrics, written once and used by training and evaluation.

Pixel metrics are computed one class against the rest from counts of true
and false positives/negatives (TP, FP, FN, TN), pooled over all pixels
given (micro average). Definitions:

- dice = 2 TP / (2 TP + FP + FN) = 2|A n B| / (|A| + |B|). (The Her2Net
  paper's eq. 13 omits the factor 2, which caps its Dice at 0.5; we use the
  standard definition.) On binary masks this equals the F-score.
- cc: Pearson correlation between the binary predicted and true masks, which
  for 0/1 variables is the Matthews/phi coefficient
  (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)).
- sa: segmentation accuracy as in the PASCAL VOC segmentation challenge,
  TP / (TP + FP + FN) (intersection over union): our reading of the paper's
  "segmentation accuracy", which it lists beside Dice without a formula we
  could use.
- precision TP/(TP+FP), recall TP/(TP+FN), f_score (F1), npv TN/(TN+FN),
  accuracy (TP+TN)/N, fpr FP/(FP+TN).

Undefined ratios (0/0) are reported as NaN -> ``None`` in JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CLASS_NAMES = ("background", "membrane", "nucleus")
SCORE_NAMES = ("0", "1+", "2+", "3+")
METRIC_KEYS = ("dice", "cc", "sa", "precision", "recall", "f_score", "npv", "accuracy", "fpr")


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes) int64 counts; rows = true class, columns = predicted class.

    Labels outside [0, classes) in ``truth`` are ignored.
    """
    t = np.asarray(truth).ravel().astype(np.int64)
    p = np.asarray(pred).ravel().astype(np.int64)
    if t.shape != p.shape:
        raise ValueError(f"truth and prediction differ in size: {t.shape} vs {p.shape}")
    keep = (t >= 0) & (t < classes) & (p >= 0) & (p < classes)
    return np.bincount(t[keep] * classes + p[keep], minlength=classes * classes).reshape(classes, classes)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def binary_metrics(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """All pixel metrics of one class from its counts (see the module docstring)."""
    tp, fp, fn, tn = (int(v) for v in (tp, fp, fn, tn))
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    den = math.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "cc": _ratio(float(tp) * tn - float(fp) * fn, den),
        "sa": _ratio(tp, tp + fp + fn),
        "precision": precision,
        "recall": recall,
        "f_score": _ratio(2 * tp, 2 * tp + fp + fn),
        "npv": _ratio(tn, tn + fn),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "fpr": _ratio(fp, fp + tn),
    }


def class_counts(cm: np.ndarray, c: int) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) of class ``c`` against the rest, from a confusion matrix."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = int(cm[c, c])
    fp = int(cm[:, c].sum() - tp)
    fn = int(cm[c, :].sum() - tp)
    tn = int(cm.sum() - tp - fp - fn)
    return tp, fp, fn, tn


def pixel_metrics(cm: np.ndarray, names: Sequence[str] = CLASS_NAMES) -> dict[str, dict[str, float]]:
    """Per-class metrics {name: {dice, cc, sa, ...}} from a pixel confusion matrix."""
    return {name: binary_metrics(*class_counts(cm, c)) for c, name in enumerate(names)}


def roc_curve(truth: np.ndarray, score: np.ndarray,
              weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """ROC of binary ``truth`` (bool) against ``score`` (higher = positive).

    Returns (fpr, tpr, auc); ties in score are one threshold, so the curve
    and AUC (trapezoidal) match scikit-learn's roc_curve/roc_auc_score
    (``weight``: their ``sample_weight``, e.g. the pixels each sampled pixel
    stands for). AUC is NaN when only one class is present. NaN scores are a
    ValueError (sklearn's too; QA: they gave a number).
    """
    y = np.asarray(truth).ravel().astype(bool)
    s = np.asarray(score).ravel().astype(np.float64)
    if np.isnan(s).any():
        raise ValueError("roc_curve: the scores contain NaN")
    w = np.ones(y.size) if weight is None else np.asarray(weight, dtype=np.float64).ravel()
    if w.shape != y.shape or (w < 0).any():
        raise ValueError("roc_curve: weight must be one non-negative value per score")
    pos, neg = float(w[y].sum()), float(w[~y].sum())
    if pos == 0 or neg == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0]), float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y, w = s[order], y[order], w[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(w * y)[last_of_tie]
    fps = np.cumsum(w * ~y)[last_of_tie]
    tpr = np.r_[0.0, tps / pos]
    fpr = np.r_[0.0, fps / neg]
    return fpr, tpr, float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)


def quadratic_kappa(cm: np.ndarray) -> float:
    """Cohen's kappa with quadratic weights from a (k, k) confusion matrix (rows = truth)."""
    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[0]
    n = cm.sum()
    if n == 0:
        return float("nan")
    i, j = np.indices((k, k))
    weights = (i - j) ** 2 / max((k - 1) ** 2, 1)
    expected = np.outer(cm.sum(1), cm.sum(0)) / n
    den = (weights * expected).sum()
    return float(1 - (weights * cm).sum() / den) if den else float("nan")


def score_metrics(truth: Sequence[int], pred: Sequence[int], classes: int = len(SCORE_NAMES)) -> dict:
    """Image-level score agreement: accuracy, quadratic-weighted kappa, confusion (rows = truth)."""
    cm = confusion_matrix(np.asarray(truth), np.asarray(pred), classes)
    n = int(cm.sum())
    return {
        "accuracy": _ratio(np.trace(cm), n),
        "qwk": quadratic_kappa(cm),
        "confusion": cm.tolist(),
        "labels": list(SCORE_NAMES[:classes]),
        "n": n,
    }


def score_index(score: str | int | None) -> int | None:
    """"0", "1+", "2+", "3+" (or 0..3) -> 0..3; anything else -> None."""
    if score is None:
        return None
    text = str(score).strip()
    if text in SCORE_NAMES:
        return SCORE_NAMES.index(text)
    if text.isdigit() and 0 <= int(text) <= 3:
        return int(text)
    return None


def json_safe(value):
    """``value`` for strict JSON, recursively: NaN/inf floats as None, numpy
    scalars and arrays as Python numbers and lists, dict keys as strings."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value
