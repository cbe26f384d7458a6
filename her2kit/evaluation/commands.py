"""``her2kit evaluate``: the paper's evaluation of one or more models on a labelled folder.

Writes into ``--out``:

- metrics.json: {"data", "images", "overlaps_training", "models": {NAME:
  {"pixel": {class: {dice, cc, sa, precision, recall, f_score, npv, accuracy,
  fpr}}, "auc": {class}, "score": {accuracy, qwk, confusion, source},
  "score_pattern_head" (Her2Net), "by_score": {score: {"pixel": ...}},
  "pixel_confusion", "uncertainty" (Bayesian SegNet), "overlaps_training",
  "training_images_evaluated", ...}}};
- comparison.md / comparison.json: one row per model (the paper's Table VI);
- by_score.md: pixel metrics per ground-truth score group (Table IV);
- roc.png (ROC curves with AUC per class), confusion_pixels.png,
  confusion_scores.png, uncertainty_<model>.png.

Pixel metrics pool all pixels of all images. AUC uses a seeded sample of
at most ``AUC_PIXELS_PER_IMAGE`` pixels per image. The image-level "score"
is the product's: cells found by :mod:`her2kit.scoring` from the model's
probabilities, categorised and scored by the ASCO/CAP 2018 rule (any model);
Her2Net's staining-pattern head (softmax averaged over the image's tiles) is
reported beside it as "score_pattern_head".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from her2kit.errors import Her2kitError
from her2kit.evaluation.metrics import (
    CLASS_NAMES,
    SCORE_NAMES,
    confusion_matrix,
    json_safe,
    pixel_metrics,
    roc_curve,
    score_metrics,
)

AUC_PIXELS_PER_IMAGE = 20_000
MC_SAMPLES = 8
TABLE_KEYS = ("dice", "cc", "sa", "precision", "recall", "f_score", "npv", "accuracy", "fpr")


def _model_name(spec: str, metadata: dict[str, Any], taken: set[str]) -> str:
    path = Path(spec)
    if not (path.suffix or "/" in spec or path.exists()):
        name = spec
    elif path.is_dir():
        name = path.name
    else:
        stem = path.name.rsplit(".", 1)[0]
        name = f"{path.parent.name}/{stem}" if stem in ("best", "last") else stem
    base, k = name, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    taken.add(name)
    return name


def _resample(rgb: np.ndarray, factor: float) -> np.ndarray:
    from skimage.transform import rescale

    out = rescale(rgb, factor, channel_axis=2, order=1, anti_aliasing=factor < 1, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def cell_level_scorer():
    """``fn(rgb, mpp, segmenter) -> score index`` from the scoring pipeline, or None if absent.

    Uses :func:`her2kit.scoring.commands.analyse_image` (segmentation, cells,
    per-cell categories) and the ASCO/CAP 2018 rule on tumour cells.
    """
    try:
        from her2kit.scoring.commands import analyse_image
        from her2kit.scoring.rules import asco_cap_score
    except ImportError:
        return None

    def score(rgb: np.ndarray, mpp: float, segmenter: Any) -> int | None:
        result, _ = analyse_image(rgb, mpp, segmenter)
        name = asco_cap_score(result.tumour_categories()).score
        return None if name is None else SCORE_NAMES.index(name)  # None: no tumour cell found

    return score


def cell_score_metrics(truth: list[int], pred: list[int | None]) -> dict[str, Any]:
    """Score agreement of the cell-level pipeline; ``None`` in ``pred``: an image
    it gave no score (no tumour cell found). Such an image counts as wrong in
    the accuracy (over all images); kappa and confusion cover the scored ones."""
    scored = [(t, p) for t, p in zip(truth, pred, strict=True) if p is not None]
    out = score_metrics([t for t, _ in scored], [p for _, p in scored])
    out["accuracy"] = float(sum(t == p for t, p in scored) / len(truth)) if truth else None
    out["unscored"] = len(truth) - len(scored)
    out["source"] = ("cell level: her2kit.scoring (cells, categories, ASCO/CAP 2018 rule); accuracy "
                     "over all images, an unscored one wrong; kappa and confusion over the scored ones")
    return out


def evaluate_model(segmenter: Any, images: list, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """All metrics of one segmenter on in-memory labelled images.

    Returns a dict with JSON-ready metrics plus private numpy arrays
    (keys starting with "_") for the plots.
    """
    import torch
    from skimage.transform import resize
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    # Monte-Carlo dropout draws from torch's generator: seed it, so identical
    # runs give identical metrics (and each model's result ignores the others)
    torch.manual_seed(seed)
    cm = np.zeros((3, 3), np.int64)
    by_score: dict[int, np.ndarray] = {}
    samples_truth, samples_prob, samples_weight = [], [], []
    score_truth, score_pred = [], []
    has_pattern = hasattr(segmenter.model, "pattern")
    bayesian = hasattr(segmenter.model, "predict_mc")
    ent_all, wrong_all = [], []
    cell_score = cell_level_scorer()
    cell_truth, cell_pred, cell_error = [], [], None
    for im in tqdm(images, desc=f"evaluate {segmenter.name}", disable=not progress, leave=False):
        rgb = im.rgb
        factor = (im.mpp / segmenter.mpp) if im.mpp else 1.0
        if abs(factor - 1) > 0.02:
            rgb = _resample(rgb, factor)
        if bayesian:
            probs, entropy = segmenter.predict_mc(rgb, MC_SAMPLES)
        else:
            probs, entropy = segmenter.predict(rgb), None
        if not np.isfinite(probs).all():  # (QA: one NaN ended every model's evaluation in a traceback)
            from her2kit.errors import SetupError

            raise SetupError(f"model {segmenter.name}: its probabilities on {im.name} "
                             "contain NaN or inf (a diverged or broken model)")
        if probs.shape[1:] != im.mask.shape:
            probs = resize(probs, (3, *im.mask.shape), order=1, anti_aliasing=False)
            if entropy is not None:
                entropy = resize(entropy, im.mask.shape, order=1, anti_aliasing=False)
        pred = probs.argmax(0)
        c = confusion_matrix(im.mask, pred, 3)
        cm += c
        if im.score is not None:
            by_score[im.score] = by_score.get(im.score, np.zeros((3, 3), np.int64)) + c
        flat = rng.choice(im.mask.size, size=min(AUC_PIXELS_PER_IMAGE, im.mask.size), replace=False)
        samples_truth.append(im.mask.ravel()[flat])
        samples_prob.append(probs.reshape(3, -1)[:, flat])
        # each sampled pixel stands for size / samples of its image: the AUC is then
        # over all pixels pooled, as the other metrics (QA: a large image weighed as a small one)
        samples_weight.append(np.full(flat.size, im.mask.size / flat.size))
        if entropy is not None:
            ent_all.append(entropy.ravel()[flat])
            wrong_all.append(pred.ravel()[flat] != im.mask.ravel()[flat])
        if has_pattern and im.score is not None:
            score_truth.append(im.score)
            score_pred.append(int(np.argmax(segmenter.predict_pattern(rgb))))
        if cell_score is not None and cell_error is None and im.score is not None:
            try:
                cell_pred.append(cell_score(im.rgb, im.mpp or segmenter.mpp, segmenter))
                cell_truth.append(im.score)
            except Exception as exc:  # the scoring pipeline is optional here; report, don't fail
                cell_error = f"{type(exc).__name__}: {exc}"
    truth = np.concatenate(samples_truth)
    prob = np.concatenate(samples_prob, axis=1)
    weight = np.concatenate(samples_weight)
    curves = {name: roc_curve(truth == c, prob[c], weight) for c, name in enumerate(CLASS_NAMES)}
    result: dict[str, Any] = {
        "pixel": pixel_metrics(cm),
        "auc": {name: curves[name][2] for name in CLASS_NAMES},
        "pixel_confusion": cm.tolist(),
        "by_score": {SCORE_NAMES[s]: {"pixel": pixel_metrics(m), "images": None}
                     for s, m in sorted(by_score.items())},
        "mpp": segmenter.mpp,
        "_curves": curves,
    }
    counts = {s: 0 for s in by_score}
    for im in images:
        if im.score is not None:
            counts[im.score] += 1
    for s, n in counts.items():
        result["by_score"][SCORE_NAMES[s]]["images"] = n
    pattern = None
    if score_truth:
        pattern = score_metrics(score_truth, score_pred)
        pattern["source"] = "staining-pattern head (image-level softmax, tiles averaged)"
        result["score_pattern_head"] = pattern
    if cell_truth and cell_error is None:
        result["score"] = cell_score_metrics(cell_truth, cell_pred)
    elif pattern is not None:
        result["score"] = dict(pattern)
    else:
        if not any(im.score is not None for im in images):
            why = "none: the data has no true scores (no index.csv with a score column)"
        elif cell_error:
            why = "none: the scoring pipeline failed (cell_level_error)"
        else:
            why = "none: no scoring pipeline and no staining-pattern head"
        result["score"] = {"accuracy": None, "qwk": None, "confusion": None, "source": why}
    if cell_error:
        result["score"]["cell_level_error"] = cell_error
    if ent_all:
        ent, wrong = np.concatenate(ent_all), np.concatenate(wrong_all)
        _, _, auc = roc_curve(wrong, ent)
        result["uncertainty"] = {
            "measure": f"predictive entropy of the mean of {MC_SAMPLES} Monte-Carlo dropout samples (nats)",
            "seed": seed,
            "error_auc": auc,
            "mean_entropy_correct": float(ent[~wrong].mean()) if (~wrong).any() else None,
            "mean_entropy_wrong": float(ent[wrong].mean()) if wrong.any() else None,
            "error_rate": float(wrong.mean()),
            "accuracy_most_certain_90pct": float(1 - wrong[np.argsort(ent)[: int(0.9 * len(ent))]].mean()),
        }
        result["_uncertainty"] = (ent, wrong)
    return result


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.4f}"


def comparison_rows(models: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per model: membrane/nucleus metrics, AUC and score agreement."""
    rows = []
    for name, m in models.items():
        row: dict[str, Any] = {"model": name}
        for cls in ("membrane", "nucleus"):
            for key in TABLE_KEYS:
                row[f"{cls}_{key}"] = m["pixel"][cls][key]
            row[f"{cls}_auc"] = m["auc"][cls]
        row["score_accuracy"] = m["score"].get("accuracy")
        row["score_qwk"] = m["score"].get("qwk")
        row["overlaps_training"] = m.get("overlaps_training", False)
        rows.append(row)
    return rows


def comparison_markdown(models: dict[str, dict[str, Any]]) -> str:
    """The four-model comparison (the paper's Table VI) as a Markdown table."""
    keys = ("dice", "cc", "sa", "precision", "recall", "npv", "accuracy", "fpr")
    lines = []
    for cls in ("membrane", "nucleus"):
        lines.append(f"### {cls}\n")
        lines.append("| model | " + " | ".join(keys) + " | AUC |")
        lines.append("|---" * (len(keys) + 2) + "|")
        for name, m in models.items():
            vals = [_fmt(m["pixel"][cls][k]) for k in keys] + [_fmt(m["auc"][cls])]
            lines.append(f"| {name} | " + " | ".join(vals) + " |")
        lines.append("")
    lines.append("### image-level score\n")
    lines.append("| model | accuracy | quadratic kappa | source |")
    lines.append("|---|---|---|---|")
    for name, m in models.items():
        s = m["score"]
        lines.append(f"| {name} | {_fmt(s.get('accuracy'))} | {_fmt(s.get('qwk'))} | {s.get('source', '')} |")
    for name, m in models.items():
        if m.get("overlaps_training"):
            lines.append(f"\n**{name} was trained (or chose its best epoch) on {m['training_images_evaluated']} of these images: "
                         "its rows are not a held-out result.**")
    return "\n".join(lines) + "\n"


def by_score_markdown(models: dict[str, dict[str, Any]]) -> str:
    """Pixel Dice/precision/recall per ground-truth score group (the paper's Table IV)."""
    lines = ["| model | score | images | membrane Dice | membrane precision | membrane recall | "
             "nucleus Dice | nucleus precision | nucleus recall |", "|---" * 9 + "|"]
    for name, m in models.items():
        for score, g in m["by_score"].items():
            p = g["pixel"]
            lines.append(
                f"| {name} | {score} | {g['images']} | {_fmt(p['membrane']['dice'])} | "
                f"{_fmt(p['membrane']['precision'])} | {_fmt(p['membrane']['recall'])} | "
                f"{_fmt(p['nucleus']['dice'])} | {_fmt(p['nucleus']['precision'])} | "
                f"{_fmt(p['nucleus']['recall'])} |")
    return "\n".join(lines) + "\n"


# What ``evaluate`` writes; --force removes the earlier ones (uncertainty_*.png by pattern).
OUTPUTS = ("metrics.json", "comparison.json", "comparison.md", "by_score.md", "roc.png",
           "confusion_pixels.png", "confusion_scores.png")


def training_overlap(metadata: dict[str, Any], data: str | Path, names: list[str]) -> int:
    """How many of ``names`` (images of the folder ``data``) the checkpoint was
    trained on or had its best epoch chosen on (its validation images).

    The folders are compared as resolved paths: synthetic image names such as
    0000 repeat across data sets. Older checkpoints kept the path as given; it is
    resolved against the current folder.
    """
    recorded = metadata.get("data") or {}
    here = Path(data).resolve()
    seen: set[str] = set()
    folder = recorded.get("train_path") or recorded.get("train")
    if folder and Path(folder).resolve() == here:  # trained on, or (a split) chose the epoch on
        seen |= set(recorded.get("train_images") or []) | set(recorded.get("val_images") or [])
    val = recorded.get("val_path")
    if val and Path(val).resolve() == here:  # --val-data: the best epoch was chosen on these (QA)
        seen |= set(recorded.get("val_images") or [])
    return len(set(names) & seen)


def evaluate(args: argparse.Namespace) -> int:
    """Evaluate every ``--model`` on ``--data``; write metrics and pictures into ``--out``."""
    from her2kit.checkpoint import write_json
    from her2kit.evaluation.plots import plot_confusions, plot_roc, plot_uncertainty
    from her2kit.inference import check_device, load_segmenter
    from her2kit.training.dataset import load_folder
    from her2kit.training.options import check_out_folder

    out = check_out_folder(args.out)
    force = args.force
    if (out / "metrics.json").is_file() and not force:
        raise Her2kitError(f"--out {out}: already holds an evaluation (metrics.json); "
                           "use --force to replace it or choose another --out")
    device = check_device(args.device)
    images = load_folder(args.data)
    names = [im.name for im in images]
    models: dict[str, dict[str, Any]] = {}
    taken: set[str] = set()
    for spec in args.model:
        segmenter = load_segmenter(spec, device=device)
        name = _model_name(spec, segmenter.metadata, taken)
        print(f"her2kit evaluate: {name} on {len(images)} images of {args.data}", file=sys.stderr)
        overlap = training_overlap(segmenter.metadata, args.data, names)
        if overlap:
            print(f"her2kit: warning: {name} was trained (or chose its best epoch) on {overlap} of the {len(images)} images of "
                  f"{args.data}; its metrics there are not a held-out result", file=sys.stderr)
        result = evaluate_model(segmenter, images)
        result["source"] = spec
        result["architecture"] = segmenter.metadata.get("architecture")
        result["options"] = segmenter.metadata.get("options")
        result["train_command"] = segmenter.metadata.get("command")
        result["overlaps_training"] = overlap > 0
        result["training_images_evaluated"] = overlap
        models[name] = result
    if not models:
        raise Her2kitError("no model to evaluate (give --model)")

    out.mkdir(parents=True, exist_ok=True)
    if force:  # only now, once the new results exist: no stale picture stays beside them
        for old in [*(out / n for n in OUTPUTS), *out.glob("uncertainty_*.png")]:
            old.unlink(missing_ok=True)
    public = {name: {k: v for k, v in m.items() if not k.startswith("_")} for name, m in models.items()}
    metrics = {"data": str(args.data), "images": len(images),
               "overlaps_training": any(m["overlaps_training"] for m in public.values()),
               "models": public}
    write_json(json_safe(metrics), out / "metrics.json")
    write_json(json_safe(comparison_rows(public)), out / "comparison.json")
    for name, text in (("comparison.md", comparison_markdown(public)), ("by_score.md", by_score_markdown(public))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out / name)
    # a model that saw these images is marked on the picture too, not only in the tables
    plot_roc({n + (" [seen in training]" if m.get("overlaps_training") else ""): m["_curves"]
              for n, m in models.items()}, out / "roc.png")
    plot_confusions({n: np.asarray(m["pixel_confusion"]) for n, m in models.items()}, list(CLASS_NAMES),
                    "pixels", out / "confusion_pixels.png")
    scored = {n: np.asarray(m["score"]["confusion"]) for n, m in models.items() if m["score"].get("confusion")}
    if scored:
        plot_confusions(scored, list(SCORE_NAMES), "image scores", out / "confusion_scores.png")
    for n, m in models.items():
        if "_uncertainty" in m:
            plot_uncertainty(*m["_uncertainty"], n, out / f"uncertainty_{n.replace('/', '_')}.png")
    print(comparison_markdown(public))
    print(f"her2kit evaluate: wrote {out / 'metrics.json'}", file=sys.stderr)
    return 0
