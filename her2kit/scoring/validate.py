"""Measure the cell pipeline on a labelled synthetic folder (``her2kit synth images`` output).

    python -m her2kit.scoring.validate --data DIR [--truth-masks | --model NAME|PATH] [--out FILE.json]

For every image: probabilities from the ground-truth masks (``--truth-masks``,
one-hot, blurred and noised like a network's; isolates the cell and category
logic) or from a segmentation model, then :func:`find_cells` and the
ASCO/CAP score. Reported:

- cells: detected cells matched one-to-one to true cells at IoU > 0.5
  (precision, recall, F1 over all cells the image shows);
- categories: accuracy of the category of matched true tumour cells, and the
  confusion matrix; tumour/stroma agreement of matched cells;
- tumour calls by position: every detected cell is placed on the true cell
  under its nucleus centroid (no IoU needed: a lymphocyte given a tumour
  cell's territory overlaps its true cell too little to be matched, so the
  agreement above never sees it): the share of tumour calls that lie on true
  tumour cells, and per kind of true cell the share called tumour;
- images: score accuracy, quadratic weighted kappa, the score confusion, and
  null-vs-ultralow accuracy over true score-0 images.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import dataclass

import numpy as np

from her2kit.scoring.cells import CellParams, find_cells, probabilities_from_mask
from her2kit.scoring.rules import SCORES, asco_cap_score, quadratic_weighted_kappa


@dataclass
class Case:
    """One labelled image of a synthetic folder."""

    name: str
    rgb: np.ndarray
    mask: np.ndarray
    cells: np.ndarray      # true cell instances uint32
    truth: dict            # true cell table columns
    score: str
    subcategory: str | None
    mpp: float


def read_cases(data: str, limit: int | None = None):
    """Yield :class:`Case` objects of a synthetic folder in index order."""
    import tifffile
    from PIL import Image

    rows = _index(data)
    for row in rows[:limit]:
        rgb = np.asarray(Image.open(os.path.join(data, row["image"])).convert("RGB"))
        mask = np.asarray(Image.open(os.path.join(data, row["mask"])))
        cells = tifffile.imread(os.path.join(data, row["instances_cells"]))
        with open(os.path.join(data, row["cells"]), newline="") as f:
            recs = list(csv.DictReader(f))
        truth = {
            "id": np.array([int(r["id"]) for r in recs], dtype=np.int64),
            "category": np.array([int(r["category"]) for r in recs], dtype=np.int64),
            "tumour": np.array([int(r["tumour"]) for r in recs], dtype=bool),
            # the cells the true score counts (nucleus centre in the image); older folders lack it
            "counted": np.array([int(r.get("counted") or r["tumour"]) for r in recs], dtype=bool),
            "completeness": np.array([float(r["completeness"]) for r in recs]),
            "intensity": np.array([float(r["intensity"]) for r in recs]),
            # tumour, lymphocyte, fibroblast (folders without the column: tumour or stroma)
            "type": np.array([r.get("type") or ("tumour" if int(r["tumour"]) else "stroma") for r in recs]),
        }
        yield Case(os.path.splitext(os.path.basename(row["image"]))[0], rgb, mask, cells, truth,
                   row["score"], row.get("subcategory") or None, float(row.get("mpp") or 0.5))


def match_instances(pred: np.ndarray, true: np.ndarray, threshold: float = 0.5):
    """Pairs (pred id, true id, IoU) of instances with IoU > ``threshold`` (one-to-one)."""
    p = pred.ravel().astype(np.int64)
    t = true.ravel().astype(np.int64)
    both = (p > 0) & (t > 0)
    width = int(t.max(initial=0)) + 1
    key, inter = np.unique(p[both] * width + t[both], return_counts=True)
    pi, ti = key // width, key % width
    pa = np.bincount(p, minlength=int(p.max(initial=0)) + 1)
    ta = np.bincount(t, minlength=width)
    iou = inter / (pa[pi] + ta[ti] - inter)
    good = iou > threshold
    return pi[good], ti[good], iou[good]


def evaluate_case(case: Case, params: CellParams, segmenter=None, seed: int = 0) -> dict:
    """Cells, categories and score of one case; returns numbers and per-cell pairs."""
    if segmenter is None:
        probs = probabilities_from_mask(case.mask, seed=seed)
    else:
        probs = segmenter.predict(case.rgb)
    result = find_cells(case.rgb, probs, case.mpp, params)
    pid, tid, _ = match_instances(result.cell_labels, case.cells)
    n_true = int(np.unique(case.cells[case.cells > 0]).size)
    t_row = {int(v): i for i, v in enumerate(case.truth["id"])}
    p_row = {int(v): i for i, v in enumerate(result.table["id"])}
    ti = np.array([t_row.get(int(v), -1) for v in tid], dtype=np.int64)
    pi = np.array([p_row[int(v)] for v in pid], dtype=np.int64)
    ok = ti >= 0
    ti, pi = ti[ok], pi[ok]
    score = asco_cap_score(result.tumour_categories())
    tt = case.truth
    placed = _placed_on(result, case.cells, t_row)
    return {
        "name": case.name,
        "n_pred": len(result), "n_true": n_true, "tp": int(len(pi)),
        "true_cat": tt["category"][ti], "pred_cat": result.table["category"][pi],
        "true_tumour": tt["tumour"][ti], "pred_tumour": result.table["tumour"][pi],
        "features": {k: result.table[k][pi] for k in result.table},
        "sector_od": result.sector_od[pi],
        "tumour_sector_od": result.sector_od[result.tumour],
        # every detected cell: the true row under its nucleus centroid (-1: none),
        # its tumour call, nucleus features and sectors (calibrate refits the tumour rule on them)
        "placed": placed, "placed_type": _at(tt["type"], placed, ""),
        "placed_tumour": _at(tt["tumour"], placed, False),
        "all_tumour": result.table["tumour"].astype(bool),
        "nucleus": {k: result.table[k] for k in ("nucleus_area_um2", "nucleus_elongation", "nucleus_h_od")},
        "all_sector_od": result.sector_od,
        "true_counts": np.bincount(tt["category"][tt["counted"]], minlength=4)[:4],
        "true_completeness": tt["completeness"][ti], "true_intensity": tt["intensity"][ti],
        "score_true": case.score, "sub_true": case.subcategory,
        "score_pred": score.score or "0", "sub_pred": score.subcategory,
        "percent_pred": score.percent,
    }


def _at(column: np.ndarray, rows: np.ndarray, missing):
    """``column[rows]``, ``missing`` where a row is -1 (safe on an empty column)."""
    out = np.full(rows.shape, missing, dtype=column.dtype if column.size else type(missing))
    there = rows >= 0
    out[there] = column[rows[there]]
    return out


def _placed_on(result, true_cells: np.ndarray, t_row: dict[int, int]) -> np.ndarray:
    """Row of the true cell under each detected cell's nucleus centroid (-1 where none)."""
    from her2kit.scoring.cells import _label_centroids

    ids = result.table["id"].astype(np.int64)
    if ids.size == 0:
        return np.zeros(0, np.int64)
    _, cy, cx = _label_centroids(result.nucleus_labels, int(ids.max()) + 1)
    y, x = cy[ids], cx[ids]
    there = np.isfinite(y)
    h, w = true_cells.shape
    yi = np.clip(np.rint(np.where(there, y, 0)).astype(np.int64), 0, h - 1)
    xi = np.clip(np.rint(np.where(there, x, 0)).astype(np.int64), 0, w - 1)
    true_id = np.where(there, true_cells[yi, xi], 0)
    return np.array([t_row.get(int(v), -1) if v else -1 for v in true_id], dtype=np.int64)


def tumour_calls(records: list[dict]) -> dict:
    """Tumour calls of detected cells against the true cell under their nucleus centroid."""
    if not records:
        return {"precision": float("nan"), "called": 0, "called_on_stroma": 0, "called_tumour_by_type": {}}
    placed = np.concatenate([r["placed"] for r in records])
    kind = np.concatenate([r["placed_type"] for r in records])
    called = np.concatenate([r["all_tumour"] for r in records])
    on = placed >= 0
    on_tumour = np.concatenate([r["placed_tumour"] for r in records])
    n_called = int((called & on).sum())
    by_type = {}
    for t in sorted(set(kind[on].tolist())):
        sel = on & (kind == t)
        n_t, n_called_t = int(sel.sum()), int((called & sel).sum())
        by_type[t] = {"cells": n_t, "called_tumour": n_called_t, "share": n_called_t / n_t}
    return {"precision": float((called & on_tumour).sum() / n_called) if n_called else float("nan"),
            "called": n_called, "called_on_stroma": int((called & on & ~on_tumour).sum()),
            "called_tumour_by_type": by_type}


def summarise(records: list[dict]) -> dict:
    """Aggregate figures over the per-image records of :func:`evaluate_case`."""
    tp = sum(r["tp"] for r in records)
    n_pred = sum(r["n_pred"] for r in records)
    n_true = sum(r["n_true"] for r in records)
    precision = tp / max(n_pred, 1)
    recall = tp / max(n_true, 1)
    f1 = 2 * tp / max(n_pred + n_true, 1)
    tc = np.concatenate([r["true_cat"] for r in records]) if records else np.zeros(0, int)
    pc = np.concatenate([r["pred_cat"] for r in records]) if records else np.zeros(0, int)
    tt = np.concatenate([r["true_tumour"] for r in records]) if records else np.zeros(0, bool)
    pt = np.concatenate([r["pred_tumour"] for r in records]) if records else np.zeros(0, bool)
    conf = np.zeros((4, 4), dtype=int)
    np.add.at(conf, (tc[tt], pc[tt]), 1)
    st = [r["score_true"] for r in records]
    sp = [r["score_pred"] for r in records]
    sconf = np.zeros((4, 4), dtype=int)
    for a, b in zip(st, sp, strict=True):
        sconf[SCORES.index(a), SCORES.index(b)] += 1
    zero = [r for r in records if r["score_true"] == "0"]
    sub_ok = [r["score_pred"] == "0" and r["sub_pred"] == r["sub_true"] for r in zero]
    return {
        "images": len(records),
        "cells": {"precision": precision, "recall": recall, "f1": f1, "matched": tp,
                  "predicted": n_pred, "true": n_true},
        "category_accuracy": float((tc[tt] == pc[tt]).mean()) if tt.any() else float("nan"),
        "category_confusion": conf.tolist(),
        "tumour_agreement": float((tt == pt).mean()) if tt.size else float("nan"),
        "tumour_calls": tumour_calls(records),
        "score_accuracy": float(np.mean([a == b for a, b in zip(st, sp, strict=True)])) if st else float("nan"),
        "score_qwk": quadratic_weighted_kappa(st, sp),
        "score_confusion": sconf.tolist(),
        "null_ultralow_accuracy": float(np.mean(sub_ok)) if zero else float("nan"),
        "score_zero_images": len(zero),
        "wrong_images": [
            {"name": r["name"], "true": r["score_true"], "sub_true": r["sub_true"],
             "pred": r["score_pred"], "sub_pred": r["sub_pred"],
             "percent": {k: None if v is None else round(v, 1) for k, v in r["percent_pred"].items()}}
            for r in records if (r["score_true"], r["sub_true"]) != (r["score_pred"], r["sub_pred"])
        ],
    }


def evaluate_folder(data: str, params: CellParams | None = None, segmenter=None,
                    limit: int | None = None, progress: bool = True) -> tuple[dict, list[dict]]:
    """(summary, per-image records) over a synthetic folder."""
    from tqdm import tqdm

    params = params or CellParams()
    records = []
    cases = list(read_cases(data, limit))
    for k, case in enumerate(tqdm(cases, desc="validate", unit="img", disable=not progress)):
        records.append(evaluate_case(case, params, segmenter, seed=k))
    return summarise(records), records


def check_folder(data: str) -> str:
    """A folder made like `her2kit synth images` output (with its index.csv), else an InputError."""
    from her2kit.errors import InputError

    if not os.path.isdir(data):
        raise InputError(data, "not a folder")
    if not os.path.isfile(os.path.join(data, "index.csv")):
        raise InputError(data, "holds no index.csv (expected a folder from `her2kit synth images`)")
    return data


def read_params(path: str, what: str = "--params") -> dict:
    """A CellParams JSON file's fields, else an InputError naming it."""
    from her2kit.errors import InputError

    try:
        with open(path) as f:
            fields = json.load(f)
    except OSError as exc:
        raise InputError(path, f"{what}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise InputError(path, f"{what}: not a CellParams JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(fields, dict):
        raise InputError(path, f"{what}: not a CellParams JSON object")
    unknown = sorted(set(fields) - set(CellParams.__dataclass_fields__))
    if unknown:  # a misspelt threshold would be ignored without a word
        raise InputError(path, f"{what}: unknown CellParams fields {unknown}")
    negative = sorted(k for k, v in fields.items() if k.endswith("_od") and isinstance(v, (int, float)) and v < 0)
    if negative:
        raise InputError(path, f"{what}: optical densities cannot be negative: {negative}")
    return fields


def check_options(args: argparse.Namespace) -> None:
    """--limit and --out checked before any work (QA: an --out in a missing folder
    failed once everything was computed, and the results were lost)."""
    from her2kit.errors import Her2kitError

    if args.limit is not None and args.limit < 1:
        raise Her2kitError(f"--limit {args.limit}: give 1 or more images")
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise Her2kitError(f"--out {args.out}: its folder does not exist")


def warn_if_trained_on(segmenter, data: str) -> bool:
    """Warn when the model saw images of ``data`` in training (not a held-out result)."""
    if segmenter is None:
        return False
    from her2kit.evaluation.commands import training_overlap

    names = [os.path.splitext(os.path.basename(r["image"]))[0] for r in _index(data)]
    seen = training_overlap(getattr(segmenter, "metadata", {}) or {}, data, names)
    if seen:
        print(f"her2kit: warning: {seen} of the {len(names)} images of {data} were used to train "
              f"(or choose) the model: these figures are not a held-out result", file=sys.stderr)
    return bool(seen)


def _index(data: str) -> list[dict]:
    with open(os.path.join(data, "index.csv"), newline="") as f:
        return list(csv.DictReader(f))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m her2kit.scoring.validate", description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="folder from `her2kit synth images`")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--truth-masks", action="store_true", help="probabilities from the true masks (default)")
    src.add_argument("--model", default=None, help="segmentation model name or checkpoint")
    ap.add_argument("--device", default=None)
    ap.add_argument("--params", default=None, help="CellParams JSON (e.g. from calibrate)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the summary JSON here")
    args = ap.parse_args(argv)
    check_folder(args.data)
    check_options(args)
    params = CellParams.from_dict(read_params(args.params)) if args.params else CellParams()
    segmenter = None
    if args.model:
        from her2kit.inference import load_segmenter

        segmenter = load_segmenter(args.model, device=args.device)
    trained_on = warn_if_trained_on(segmenter, args.data)
    summary, _ = evaluate_folder(args.data, params, segmenter, args.limit)
    summary["source"] = "truth-masks" if segmenter is None else getattr(segmenter, "name", args.model)
    if segmenter is not None:
        summary["model"] = os.fspath(args.model)  # which checkpoint, not only its architecture
        summary["overlaps_training"] = trained_on
    from her2kit.evaluation.metrics import json_safe

    text = json.dumps(json_safe(summary), indent=2)  # undefined figures (NaN) as null: strict JSON
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    from her2kit.cli import guarded

    sys.exit(guarded(main))
