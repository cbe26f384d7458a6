"""Fit the staining thresholds of :class:`CellParams` on synthetic ground truth.

    python -m her2kit.scoring.calibrate --data TRAIN_DIR [--check TEST_DIR] [--out params.json]

Cells are found with ground-truth probabilities (:mod:`her2kit.scoring.validate`),
matched to true cells at IoU > 0.5, and their per-sector DAB OD kept. The
thresholds are then chosen on the true tumour cells by coordinate ascent
over grids: ``stain_od`` (re-deriving completeness and intensity from the
stored sector values), then ``any_fraction``, ``complete_fraction``,
``weak_od``, ``moderate_od`` and ``intense_od``. The objective is the mean of
accuracy and balanced accuracy (so that the rare categories, which decide
the >10% rules, weigh as much as the common unstained cells). ``--check``
evaluates the fitted parameters on other seeds.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from her2kit.scoring.cells import CellParams, categorise


def staining_from_sectors(sector_od: np.ndarray, stain_od: float) -> tuple[np.ndarray, np.ndarray]:
    """(completeness, intensity) of cells from their sector DAB OD (n, k)."""
    stained = sector_od >= stain_od
    completeness = stained.mean(axis=1)
    intensity = np.where(stained, sector_od, 0.0).sum(axis=1) / np.maximum(stained.sum(axis=1), 1)
    return completeness, intensity


def objective(truth: np.ndarray, pred: np.ndarray) -> float:
    """Mean of accuracy and balanced accuracy over categories present in ``truth``."""
    acc = float((truth == pred).mean())
    recalls = [float((pred[truth == c] == c).mean()) for c in range(4) if (truth == c).any()]
    return 0.5 * (acc + float(np.mean(recalls)))


GRIDS = {
    "stain_od": np.round(np.arange(0.03, 0.40, 0.01), 3),
    "any_fraction": np.round(np.arange(0.0, 0.7, 0.03125), 5),
    "complete_fraction": np.round(np.arange(0.5, 1.001, 0.03125), 5),
    "weak_od": np.round(np.arange(0.0, 0.6, 0.01), 3),
    "moderate_od": np.round(np.arange(0.05, 1.2, 0.01), 3),
    "intense_od": np.round(np.arange(0.1, 1.5, 0.01), 3),
}


def fit_thresholds(sector_od: np.ndarray, truth: np.ndarray, params: CellParams,
                   rounds: int = 4) -> tuple[CellParams, float]:
    """Thresholds maximising :func:`objective` on cells with true categories ``truth``."""
    best = params
    comp, inten = staining_from_sectors(sector_od, best.stain_od)
    score = objective(truth, categorise(comp, inten, best))
    for _ in range(rounds):
        improved = False
        for name, grid in GRIDS.items():
            for value in grid:
                trial = best.with_(**{name: float(value)})
                if name == "stain_od":
                    c, i = staining_from_sectors(sector_od, trial.stain_od)
                else:
                    c, i = comp, inten
                s = objective(truth, categorise(c, i, trial))
                if s > score + 1e-9:
                    best, score, improved = trial, s, True
                    if name == "stain_od":
                        comp, inten = c, i
        if not improved:
            break
    return best, score


def collect(data: str, params: CellParams, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sector DAB OD and true category of matched true tumour cells of a synthetic folder."""
    from her2kit.scoring.validate import evaluate_folder

    _, records = evaluate_folder(data, params, limit=limit)
    sec = np.concatenate([r["sector_od"][r["true_tumour"]] for r in records])
    cat = np.concatenate([r["true_cat"][r["true_tumour"]] for r in records])
    return sec, cat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m her2kit.scoring.calibrate", description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="training folder from `her2kit synth images`")
    ap.add_argument("--check", default=None, help="held-out folder to evaluate the fitted parameters on")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the fitted CellParams JSON here")
    args = ap.parse_args(argv)
    params = CellParams()
    sec, cat = collect(args.data, params, args.limit)
    fitted, score = fit_thresholds(sec, cat, params)
    names = list(GRIDS)
    print(json.dumps({"fitted": {k: getattr(fitted, k) for k in names}, "objective": score,
                      "cells": int(len(cat))}, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(fitted.to_dict(), f, indent=2)
    if args.check:
        from her2kit.scoring.validate import evaluate_folder

        summary, _ = evaluate_folder(args.check, fitted)
        summary.pop("wrong_images", None)
        print(json.dumps(summary, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
