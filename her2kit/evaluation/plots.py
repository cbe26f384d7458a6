"""Pictures of evaluation results: ROC curves, confusion matrices, uncertainty vs error."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def plot_roc(curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray, float]]], path: Path) -> None:
    """One panel per pixel class, one curve per model; ``curves[model][class] = (fpr, tpr, auc)``."""
    plt = _figure()
    classes = list(next(iter(curves.values())).keys())
    fig, axes = plt.subplots(1, len(classes), figsize=(4.2 * len(classes), 4), squeeze=False)
    for ax, cls in zip(axes[0], classes, strict=True):
        for model, per_class in curves.items():
            fpr, tpr, auc = per_class[cls]
            ax.plot(fpr, tpr, label=f"{model} (AUC {auc:.3f})")
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        ax.set(title=f"{cls}: ROC", xlabel="false positive rate", ylabel="true positive rate",
               xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_confusions(matrices: dict[str, np.ndarray], labels: list[str], title: str, path: Path) -> None:
    """Row-normalised confusion matrices (rows = truth), one panel per model, counts annotated."""
    plt = _figure()
    n = len(matrices)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False)
    for ax, (model, cm) in zip(axes[0], matrices.items(), strict=True):
        cm = np.asarray(cm, dtype=np.float64)
        rows = cm.sum(1, keepdims=True)
        norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, f"{norm[i, j]:.2f}\n{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set(xlabel="predicted", ylabel="true", title=f"{model}\n{title}")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_uncertainty(entropy: np.ndarray, wrong: np.ndarray, model: str, path: Path) -> None:
    """Entropy histograms of right and wrong pixels, and accuracy when the most uncertain are dropped."""
    plt = _figure()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    bins = np.linspace(0, np.log(3), 40)
    a.hist(entropy[~wrong], bins=bins, density=True, alpha=0.6, label="correct pixels")
    a.hist(entropy[wrong], bins=bins, density=True, alpha=0.6, label="wrong pixels")
    a.set(xlabel="predictive entropy (nats)", ylabel="density", title=f"{model}: uncertainty")
    a.legend(fontsize=8)
    order = np.argsort(entropy)
    kept = np.arange(1, len(order) + 1)
    acc = np.cumsum(~wrong[order]) / kept
    frac = kept / len(order)
    b.plot(frac, acc)
    b.set(xlabel="fraction of pixels kept (most certain first)", ylabel="pixel accuracy",
          title="accuracy vs retained pixels")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
