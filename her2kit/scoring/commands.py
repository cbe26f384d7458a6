"""``her2kit score``, ``her2kit segment`` and ``her2kit demo`` for images.

Per input: open it, find its resolution (the file's, else ``--mpp``),
resample to the segmenter's resolution, predict membrane and nucleus
probabilities, find and categorise cells, score the tumour cells, map
labels and coordinates back to the input's full resolution, and write
DIR/<stem>/score.json, cells.csv, cells.geojson, labels.zarr, overlay.png
and report.html. Large images (over :data:`WHOLE_LIMIT` pixels a side) and
multi-level slides go to the whole-slide pipeline when it is available.

One bad input gets a one-line error on stderr; the others go on, and the
exit status is 1 at the end. An image without tissue or without tumour
cells gets score null with a note (the ASCO/CAP score is undefined without
tumour cells), not an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from her2kit import __version__
from her2kit.errors import Her2kitError, InputError, SetupError

#: Longest side (pixels) processed as one image; larger ones go block by block.
WHOLE_LIMIT = 4096
#: Longest side processed whole when the whole-slide pipeline is missing.
FALLBACK_LIMIT = 16384
# Coarser than 4 um/px (a 2.5x scan) a cell is ~3 px: nothing to score, and
# bringing it to the model's 0.5 um/px would upsample 8x or more (QA: --mpp 20,
# meant as "20x", upsampled a 512^2 image 40x and ran out of memory).
# Finer than 0.05 um/px is beyond any light microscope's resolution: such a
# value is a mistake, and would shrink the image to a few pixels (QA: --mpp
# 0.011 gave "no tumour cells found", exit 0).
MPP_RANGE = (0.05, 4.0)
#: Tissue: pixels whose summed optical density (log10) exceeds this; below
#: ``MIN_TISSUE`` of the image, no cells are looked for.
TISSUE_OD = 0.15
MIN_TISSUE = 0.002
OUTPUTS = ("score.json", "cells.csv", "cells.geojson", "labels.zarr", "overlay.png", "report.html")


def usable_mpp(mpp: float) -> bool:
    return bool(np.isfinite(mpp)) and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]


def check_mpp(mpp: float | None, path: str) -> float:
    """A usable microns-per-pixel or an InputError naming ``path``."""
    if mpp is None:
        raise InputError(path, "resolution unknown: the file carries no microns per pixel; "
                               "give it with --mpp (e.g. --mpp 0.5 for 20x)")
    if not usable_mpp(mpp):
        raise InputError(path, f"implausible resolution {mpp} microns per pixel "
                               f"(expected {MPP_RANGE[0]} to {MPP_RANGE[1]}; 20x is about 0.5)")
    return float(mpp)


def file_resolution(file_mpp: float | None, arg_mpp: float | None) -> float | None:
    """The file's microns per pixel, which wins over ``--mpp``, or None when the
    file has none, or has one no scan can be scored at while ``--mpp`` is given
    (a JPEG saved at 2540 dpi says 10 um/px): then ``--mpp`` is used."""
    if not file_mpp or (arg_mpp is not None and not usable_mpp(file_mpp)):
        return None
    return file_mpp


def resolution_from_file(file_mpp: float | None, arg_mpp: float | None, path: str) -> float | None:
    """:func:`file_resolution`, saying on stderr when the file and ``--mpp`` disagree."""
    chosen = file_resolution(file_mpp, arg_mpp)
    if file_mpp and arg_mpp is not None and abs(file_mpp - arg_mpp) > 0.02 * file_mpp:
        why = "--mpp {:g} ignored" if chosen else "which cannot be scored; using --mpp {:g}"
        print(f"her2kit: note: {path}: the file says {file_mpp:.4g} um/px; " + why.format(arg_mpp),
              file=sys.stderr)
    return chosen


IMAGE_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".png", ".jpeg", ".jpg",
                  ".zarr", ".svs", ".ndpi", ".btf", ".mrxs", ".scn")


def stem_of(path: str) -> str:
    """Output folder name of an input: its file name without image suffixes (or,
    for a plugin reader's own format, without its last extension)."""
    name = os.path.basename(os.fspath(path).rstrip("/")) or "input"
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)] or "input"
    stem, ext = os.path.splitext(name)
    return stem if stem and ext else name


def input_bytes(path: str) -> int | None:
    """Size of an input file in bytes (None for folders such as Zarr stores, and URLs):
    recorded with the outputs, it tells two inputs of one file name apart."""
    try:
        return os.path.getsize(path) if os.path.isfile(path) else None
    except OSError:
        return None


def tissue_fraction(rgb: np.ndarray) -> float:
    """Share of pixels darker than glass (summed OD above :data:`TISSUE_OD`), on a subsample."""
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 1e6)))
    sub = rgb[::step, ::step].astype(np.float32)
    od = -np.log10((sub + 1.0) / 256.0).sum(axis=-1)
    return float((od > TISSUE_OD).mean()) if od.size else 0.0


def resample(rgb: np.ndarray, factor: float) -> np.ndarray:
    """RGB uint8 scaled by ``factor`` (output pixels per input pixel); no-op within 1%."""
    if abs(factor - 1.0) < 0.01:
        return rgb
    from skimage.transform import rescale

    out = rescale(rgb, factor, order=1, channel_axis=-1, anti_aliasing=factor < 1,
                  preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_shape(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image to ``shape`` (labels are never interpolated)."""
    if labels.shape == tuple(shape):
        return labels
    yi = np.minimum(((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(np.int64),
                    labels.shape[0] - 1)
    xi = np.minimum(((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(np.int64),
                    labels.shape[1] - 1)
    return labels[yi][:, xi]


def _scorer(name: str):
    from her2kit.plugins import registry

    return registry().get("scorer", name).factory()


def scorer_value(name: str, table: dict) -> Any:
    """Scorer plugin ``name``'s value for a cell table, checked before anything is
    written: one that fails, or gives what score.json cannot hold, is a
    PluginError naming it (QA: a set replaced a good score.json by a traceback)."""
    from her2kit.errors import PluginError
    from her2kit.evaluation.metrics import json_safe
    from her2kit.readers.pixels import one_line

    try:
        value = _scorer(name)(table)
    except Her2kitError:
        raise
    except Exception as exc:
        raise PluginError(f"scorer {name!r} failed: {one_line(exc)}") from None
    try:
        json.dumps(json_safe(value), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PluginError(f"scorer {name!r} returned a {type(value).__name__}, which score.json cannot "
                          f"hold ({one_line(exc)}); return numbers, strings, lists or dicts") from None
    return value


SCORING = "ASCO/CAP 2018 (reaffirmed 2023), tumour cells only"
#: score.json's fields that are the score (not written by `segment`)
SCORE_FIELDS = {"score", "subcategory", "cells_total", "percent", "counts", "h_score",
                "percent_complete", "scoring", "note", "scorer"}


def summarise(result, mpp: float, model: str, scorer_name: str = "asco-cap-2018",
              extra: dict | None = None) -> dict:
    """score.json content for a :class:`CellResult` (tumour cells only)."""
    from her2kit.scoring.rules import asco_cap_score, count_complete

    score = asco_cap_score(result.tumour_categories(), count_complete(result))
    summary = {
        "score": score.score,
        "subcategory": score.subcategory,
        "cells_total": score.cells_total,
        "percent": score.percent,
        "counts": score.counts,
        "h_score": score.h_score,
        "percent_complete": score.percent_complete,
        "cells_detected": len(result),
        "model": model,
        "her2kit_version": __version__,
        "mpp": mpp,
        "scoring": SCORING,
        "note": score.note,
    }
    if scorer_name not in ("asco-cap-2018", "her2net-pattern"):
        summary["scorer"] = {"name": scorer_name, "value": scorer_value(scorer_name, result.table)}
    summary.update(extra or {})
    return summary


def analyse_image(rgb: np.ndarray, mpp: float, segmenter: Any, params=None,
                  roi: list | None = None, classes_only: bool = False) -> tuple[Any, dict]:
    """Cells of an RGB image at full resolution, and timings.

    The image is resampled to ``segmenter.mpp``, segmented and analysed
    there; the returned :class:`CellResult` has labels at the input's size and
    y, x in input pixels (areas stay in square microns). ``roi`` polygons
    (see :mod:`her2kit.scoring.roi`) drop cells whose centroid lies outside.
    ``classes_only``: the pixel classes alone, no cells.
    """
    from her2kit.scoring.cells import CellResult, empty_table, find_cells
    from her2kit.scoring.cells import classes_only as only_classes

    timings = {}
    t = time.perf_counter()
    model_mpp = float(getattr(segmenter, "mpp", mpp) or mpp)
    small = resample(rgb, mpp / model_mpp)
    timings["resample_s"] = time.perf_counter() - t
    h, w = rgb.shape[:2]
    if tissue_fraction(small) < MIN_TISSUE:
        empty = np.zeros((h, w), dtype=np.uint32)
        result = CellResult(empty_table(), empty, empty.copy(), np.zeros((h, w), np.uint8), mpp=mpp)
        timings["note"] = "no tissue found"
        return result, timings
    t = time.perf_counter()
    # the tiles a slide's block of this size gets, so an image scores the same
    # as a one-block slide of the same pixels (and in fewer, larger passes)
    from her2kit.wsi.worker import _predict, block_segmenter

    probs = _predict(block_segmenter(segmenter, small.shape[:2]), small)  # (halves a GPU batch on OOM)
    timings["predict_s"] = time.perf_counter() - t
    t = time.perf_counter()
    cells = (only_classes if classes_only else find_cells)(small, probs, model_mpp, params)
    timings["cells_s"] = time.perf_counter() - t
    fy, fx = h / small.shape[0], w / small.shape[1]
    table = dict(cells.table)
    table["y"] = (table["y"] + 0.5) * fy - 0.5
    table["x"] = (table["x"] + 0.5) * fx - 0.5
    result = CellResult(table, to_shape(cells.cell_labels, (h, w)),
                        to_shape(cells.nucleus_labels, (h, w)), to_shape(cells.semantic, (h, w)),
                        mpp=mpp, sector_od=cells.sector_od)
    result.model_labels = (cells.cell_labels, cells.nucleus_labels, (fy, fx))
    if roi:
        from her2kit.scoring.roi import inside

        keep = inside(roi, result.table["x"] + 0.5, result.table["y"] + 0.5)
        model_labels = result.model_labels
        result = result.select(keep)
        lut = np.zeros(int(max(model_labels[0].max(initial=0), 0)) + 1, dtype=np.uint32)
        kept = result.table["id"]
        lut[kept[kept < lut.size]] = kept[kept < lut.size]
        result.model_labels = (lut[model_labels[0]], lut[model_labels[1]], model_labels[2])
    return result, timings


def write_outputs(out_dir: Path, rgb: np.ndarray, result, summary: dict,
                  segment_only: bool = False) -> None:
    """All output files of one image; score.json last (it marks the folder complete)."""
    from her2kit.scoring import exports

    out_dir.mkdir(parents=True, exist_ok=True)
    # an older run's marker first: a kill midway leaves no old/new mix
    (out_dir / "score.json").unlink(missing_ok=True)
    # `segment` scores nothing: its labels do not carry a score (QA: --classes-only's
    # said "no tumour cells found", H-score 0 when cells were never looked for)
    # (nor a cell count: a slide's segment writes none either)
    left_out = {"percent", "counts"} | (SCORE_FIELDS | {"cells_detected"} if segment_only else set())
    exports.write_labels_zarr(out_dir / "labels.zarr", result.semantic, result.cell_labels,
                              summary.get("mpp"), about={k: v for k, v in summary.items()
                                                         if k not in left_out})
    if segment_only:  # the rest of a score made from the labels just replaced
        for name in OUTPUTS:
            if name != "labels.zarr":
                (out_dir / name).unlink(missing_ok=True)
        return
    exports.write_cells_csv(out_dir / "cells.csv", result.table)
    cell_l, nuc_l, scale = getattr(result, "model_labels", (result.cell_labels,
                                                             result.nucleus_labels, (1.0, 1.0)))
    polygons = exports.cell_polygons(cell_l, nuc_l, result.table["id"], scale=scale)
    exports.write_cells_geojson(out_dir / "cells.geojson", exports.cell_features(result.table, polygons))
    overlay = exports.overlay_image(rgb, result.cell_labels, result.table)
    exports.write_overlay_png(out_dir / "overlay.png", overlay)
    exports.write_report_html(out_dir / "report.html", rgb, overlay, summary, result.table)
    exports.write_score_json(out_dir / "score.json", summary)


def complete(out_dir: Path, segment_only: bool) -> bool:
    """Whether a previous run left every output of this input in place."""
    names = ("labels.zarr",) if segment_only else OUTPUTS
    return all((out_dir / n).exists() for n in names)


def _made_differently(out_dir: Path, path: str, roi: list | None, get_segmenter,
                      args: argparse.Namespace | None = None) -> dict:
    """What differs between the finished outputs in ``out_dir`` and this run:
    ``{"other": what}`` ("for another --roi (or none)", "made at another --mpp (0.5)",
    "made with another --scorer (h-score)", "made with another model (NAME DIGEST)"), else ``{}``.
    Outputs of another input (same stem, another file name or file size) are an InputError."""
    from her2kit.inference import model_fingerprint
    from her2kit.scoring.cells import CellParams
    from her2kit.scoring.roi import roi_fingerprint

    try:
        done = json.loads((out_dir / "score.json").read_text())
    except (OSError, ValueError):
        try:  # `segment` writes labels.zarr alone: the summary is in its attributes
            done = json.loads((out_dir / "labels.zarr" / ".zattrs").read_text()).get("her2kit")
        except (OSError, ValueError, AttributeError):
            return {}
    if not isinstance(done, dict):
        return {}
    before = str(done.get("input") or "")
    size, size_before = input_bytes(path), done.get("input_bytes")
    other_name = before and os.path.basename(before.rstrip("/\\")) != os.path.basename(os.fspath(path).rstrip("/\\"))
    other_size = size is not None and isinstance(size_before, int) and size != size_before
    if other_name or other_size:
        what = f"{before}, {size_before} bytes; this one has {size}" if other_size and not other_name else before
        raise InputError(path, f"{out_dir} holds the outputs of another input ({what}); "
                               "give this one its own --out (or --force to replace them)")
    other = []  # every difference, not only the first: the user redoes it once
    if "roi_fingerprint" in done and done["roi_fingerprint"] != roi_fingerprint(roi):
        other.append("for another --roi (or none)")
    mpp = getattr(args, "mpp", None)
    if (done.get("mpp_from") == "--mpp" and mpp is not None and isinstance(done.get("mpp"), (int, float))
            and abs(done["mpp"] - mpp) > 0.02 * mpp):
        other.append(f"made at another --mpp ({done['mpp']:g})")
    if bool(done.get("classes_only")) != bool(getattr(args, "classes_only", False)):
        other.append("made " + ("with --classes-only" if done.get("classes_only") else "with cells"))
    scorer = getattr(args, "scorer", None) or "asco-cap-2018"
    scorer_before = (done.get("scorer") or {}).get("name", "asco-cap-2018")
    if "score" in done and scorer_before != scorer:
        other.append(f"made with another --scorer ({scorer_before})")
    recorded = done.get("model_fingerprint")
    if recorded is not None and recorded != model_fingerprint(get_segmenter()):
        other.append(f"made with another model ({done.get('model')} {recorded})")
    looked_for_cells = not done.get("classes_only") and done.get("model_fingerprint") is not None
    if looked_for_cells and done.get("cell_params_fingerprint") != CellParams().fingerprint():
        other.append("made with other cell-finding thresholds (an earlier her2kit?)")
    if (out_dir / ".her2kit-work").is_dir():  # a --force run interrupted, or one killed while tidying up
        other.append("an unfinished run's blocks are in .her2kit-work (--force resumes them)")
    return {"other": "; ".join(other)} if other else {}


def check_out_dir(path: str, out_dir: Path) -> None:
    """Refuse an output folder that is the input or lies inside it (QA: ``her2kit
    score slide --out .`` wrote score.json and cells.csv into the Zarr store
    ``slide``, replacing its own cells.csv), or that is a file."""
    if "://" not in path:
        source, target = Path(path).resolve(), out_dir.resolve()
        if target == source or source in target.parents:
            raise InputError(path, f"its outputs would go to {out_dir}, inside the input itself; "
                                   "give another --out")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(path, f"its output folder {out_dir} is a file")


LOCK = ".her2kit-lock"


class OutputBusy(Her2kitError):
    """Another run holds this input's output folder: not this run's failure."""


@contextlib.contextmanager
def output_lock(out_dir: Path, path: str) -> Iterator[None]:
    """Hold ``out_dir`` for this run: another her2kit run (another job of a batch
    on the same list, on this machine or one sharing the folder) that reaches
    the same input is told so and goes on with its next input (QA: two runs of
    one slide wrote one work folder and one of them failed half-way). The lock
    (flock) goes with the process, even on kill -9. A folder made only for
    the lock is removed again when nothing was written."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    made = not out_dir.exists()
    lock = out_dir / LOCK
    while True:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            continue  # another run removed the empty folder just now: make it again
        except OSError:  # a read-only folder: no lock to take; writing will say what is wrong
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusy(f"{path}: another her2kit run is writing its outputs to {out_dir} now; "
                             "skipped here") from None
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the lock file its last holder removed: take the new one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # while still held: a run waiting on the old file sees it gone
        os.close(fd)
        if made:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only if empty


def process_input(path: str, out_root: Path, get_segmenter, args: argparse.Namespace,
                  roi: list | None, segment_only: bool = False) -> dict:
    """Score (or segment) one input into ``out_root/<stem>``; returns its summary."""
    out_dir = out_root / stem_of(path)
    check_out_dir(path, out_dir)

    def skipped() -> dict | None:
        if getattr(args, "force", False) or not complete(out_dir, segment_only):
            return None
        return {"input": path, "skipped": True, "out": str(out_dir),
                **_made_differently(out_dir, path, roi, get_segmenter, args)}

    # before the lock (a finished folder may be read-only: archived results),
    # and again under it (another job may have just finished it)
    done = skipped()
    if done is not None:
        return done
    with output_lock(out_dir, path):
        return skipped() or _process_input(path, out_dir, get_segmenter, args, roi, segment_only)


def _process_input(path: str, out_dir: Path, get_segmenter, args: argparse.Namespace,
                   roi: list | None, segment_only: bool) -> dict:
    from her2kit.readers import open_slide
    from her2kit.scoring.roi import roi_fingerprint

    if out_dir.is_dir() and not os.access(out_dir, os.W_OK | os.X_OK):
        raise InputError(path, f"cannot write its outputs to {out_dir} (permission denied)")
    t0 = time.perf_counter()
    with open_slide(path) as slide:
        file_mpp = resolution_from_file(slide.mpp, args.mpp, path)
        mpp = check_mpp(file_mpp if file_mpp is not None else args.mpp, path)
        h, w = slide.shape
        if h == 0 or w == 0:
            raise InputError(path, "empty image (0 pixels)")
        from her2kit.readers import missing_chunks_note

        storage_note = missing_chunks_note(slide)
        if roi:
            from her2kit.scoring.roi import overlaps

            if not overlaps(roi, h, w):
                raise InputError(path, f"the --roi lies outside the image ({h}x{w} pixels)")
        if storage_note and not (slide.level_count > 1 or max(h, w) > WHOLE_LIMIT):
            print(f"her2kit: note: {path}: {storage_note}", file=sys.stderr)  # (slides say it themselves)
        if slide.level_count > 1 or max(h, w) > WHOLE_LIMIT:
            summary = _run_wsi(path, out_dir, get_segmenter(), mpp, args, roi, segment_only)
            if summary is not None:
                return summary
            if max(h, w) > FALLBACK_LIMIT:
                raise InputError(path, f"{h}x{w} pixels is too large to process whole and the "
                                       "whole-slide pipeline is not available in this build")
        from her2kit.readers.pixels import checked_region, one_line

        try:
            rgb = checked_region(slide.read_region(0, 0, h, w, 0), h, w, slide, path)
        except Her2kitError:
            raise
        except Exception as exc:  # a plugin reader's own failure
            raise InputError(path, f"cannot read pixels: {one_line(exc)}") from None
    read_s = time.perf_counter() - t0
    from her2kit.scoring.cells import CellParams, CellResult, empty_table

    if tissue_fraction(rgb) < MIN_TISSUE:
        # nothing to segment: answer without loading the model
        empty = np.zeros((h, w), dtype=np.uint32)
        result = CellResult(empty_table(), empty, empty.copy(), np.zeros((h, w), np.uint8), mpp=mpp)
        timings = {"note": "no tissue found"}
        model_name = os.fspath(args.model) if args.model else "her2net"
        fingerprint = model_mpp = None
    else:
        from her2kit.inference import model_fingerprint

        segmenter = get_segmenter()
        model_name = getattr(segmenter, "name", "unknown")
        fingerprint = model_fingerprint(segmenter)
        model_mpp = float(segmenter.mpp)
        result, timings = analyse_image(rgb, mpp, segmenter, CellParams(), roi,
                                        classes_only=getattr(args, "classes_only", False))
        if getattr(args, "scorer", None) == "her2net-pattern":
            small = resample(rgb, mpp / float(segmenter.mpp))
            timings["pattern"] = _scorer("her2net-pattern")(result.table, image=small, segmenter=segmenter)
    note = timings.pop("note", None)
    pattern = timings.pop("pattern", None)
    timings = {"read_s": read_s, **timings}
    summary = summarise(result, mpp, model_name,
                        getattr(args, "scorer", "asco-cap-2018"),
                        extra={"model_fingerprint": fingerprint, "roi_fingerprint": roi_fingerprint(roi),
                               "cell_params_fingerprint": CellParams().fingerprint(),
                               "input": os.fspath(path), "input_bytes": input_bytes(path),
                               "mpp_from": "file" if file_mpp is not None else "--mpp",
                               "model_mpp": model_mpp, "shape": [h, w],
                               "roi": bool(roi), "timings": timings})
    if getattr(args, "classes_only", False):
        summary["classes_only"] = True
    if pattern is not None:
        summary["scorer"] = {"name": "her2net-pattern", "value": pattern}
    if storage_note:
        summary["storage_note"] = storage_note
    if note:
        summary["note"] = note + "; no tumour cells found"
    t = time.perf_counter()
    write_outputs(out_dir, rgb, result, summary, segment_only)
    timings["write_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    if not segment_only:
        from her2kit.scoring.exports import write_score_json

        write_score_json(out_dir / "score.json", summary)
    summary["out"] = str(out_dir)
    return summary


def _run_wsi(path, out_dir, segmenter, mpp, args, roi, segment_only) -> dict | None:
    """The whole-slide pipeline's summary, or None when it is not available."""
    try:
        from her2kit.wsi.pipeline import run_slide
    except ImportError:
        return None
    from her2kit.scoring.roi import as_rings

    try:
        summary = run_slide(path, out_dir, segmenter, mpp=mpp, workers=getattr(args, "workers", 1),
                            scheduler=getattr(args, "scheduler", None),
                            roi=as_rings(roi) if roi else None, force=getattr(args, "force", False),
                            segment_only=segment_only, device=getattr(args, "device", None),
                            scorer=getattr(args, "scorer", None),
                            classes_only=getattr(args, "classes_only", False))
    except NotImplementedError:
        return None
    summary = dict(summary or {})
    summary.setdefault("input", path)
    summary["out"] = str(out_dir)
    return summary


def _segmenter_loader(args: argparse.Namespace):
    cache: dict[str, Any] = {}

    def get():
        if "s" not in cache:
            from her2kit.inference import load_segmenter

            try:
                cache["s"] = load_segmenter(args.model, device=getattr(args, "device", None))
            except SetupError:
                raise
            except Her2kitError as exc:  # the same for every input
                raise SetupError(str(exc)) from None
        return cache["s"]

    return get


def _report(summary: dict, segment_only: bool) -> str:
    if summary.get("other"):
        return (f"{summary['input']}: complete already, {summary['other']}, "
                f"skipped (use --force to redo) -> {summary['out']}")
    if summary.get("skipped"):
        return f"{summary['input']}: complete already, skipped (use --force to redo) -> {summary['out']}"
    if segment_only:
        return f"{summary['input']}: labels -> {summary['out']}/labels.zarr"
    score = summary.get("score")
    if score is None:
        what = f"no score ({summary.get('note', 'no tumour cells found')})"
    else:
        sub = summary.get("subcategory")
        what = f"HER2 {score}" + (f" ({sub})" if sub else "")
    return f"{summary['input']}: {what}, {summary.get('cells_total', 0)} tumour cells -> {summary['out']}"


def run(args: argparse.Namespace, segment_only: bool = False, get_segmenter=None) -> int:
    """Process every input of ``args``; returns the exit status."""
    roi = None
    if getattr(args, "roi", None):
        from her2kit.scoring.roi import load_roi

        roi = load_roi(args.roi)
    if getattr(args, "scorer", None):
        _scorer(args.scorer)  # an unknown name fails before any work
    if args.mpp is not None and not usable_mpp(args.mpp):
        raise Her2kitError(f"--mpp {args.mpp}: implausible resolution (expected {MPP_RANGE[0]} to {MPP_RANGE[1]} "
                           "microns per pixel; 20x is about 0.5)")
    workers = getattr(args, "workers", 1)
    if workers is not None and workers < 1:
        raise Her2kitError(f"--workers {workers}: give 1 or more")
    if getattr(args, "device", None) is not None:  # a device this machine lacks: one line, before any work
        from her2kit.inference import check_device

        check_device(args.device)
    if getattr(args, "model", None):  # an unknown name fails before --out is made
        from her2kit.inference import is_model_name

        is_model_name(args.model)
    if not str(args.out).strip():
        raise Her2kitError("--out: give a folder name")
    out_root = Path(args.out)
    try:
        out_root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise Her2kitError(f"--out {out_root}: is a file, not a folder") from None
    except OSError as exc:
        raise Her2kitError(f"--out {out_root}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(out_root, os.W_OK | os.X_OK):
        raise Her2kitError(f"--out {out_root}: cannot write there (permission denied)")
    get_segmenter = get_segmenter or _segmenter_loader(args)
    failed = 0
    owner: dict[str, int] = {}  # output folder -> the input it belongs to
    for n, path in enumerate(args.inputs):
        k = owner.setdefault(stem_of(path), n)
        if k != n:
            first = args.inputs[k]
            if os.path.abspath(first) == os.path.abspath(path):
                print(f"her2kit: note: {path}: given twice, processed once", file=sys.stderr)
            else:
                print(f"her2kit: error: {path}: its outputs would go to {out_root / stem_of(path)}, "
                      f"as those of {first} (inputs with one name); give it its own --out", file=sys.stderr)
                failed += 1
            continue
        try:
            summary = process_input(path, out_root, get_segmenter, args, roi, segment_only)
        except SetupError:
            raise  # the same for every input: stop at once
        except OutputBusy as exc:  # jobs of one batch sharing a list: the other run does it
            print(f"her2kit: note: {exc}", file=sys.stderr)
            continue
        except InputError as exc:
            print(f"her2kit: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        except Her2kitError as exc:
            print(f"her2kit: error: {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        except OSError as exc:  # the file system said no (full disk, a name taken): the others go on
            where = f" ({exc.filename})" if exc.filename else ""
            print(f"her2kit: error: {path}: {exc.strerror or exc}{where}", file=sys.stderr)
            failed += 1
            continue
        print(_report(summary, segment_only))
        if summary.get("score", "") is None and not segment_only:
            print(f"her2kit: note: {path}: {summary.get('note', 'no tumour cells found')}; "
                  "score is undefined", file=sys.stderr)
    if failed:
        print(f"her2kit: {failed} of {len(args.inputs)} inputs failed", file=sys.stderr)
        return 1
    return 0


def score(args: argparse.Namespace) -> int:
    """``her2kit score INPUT... --out DIR``."""
    return run(args, segment_only=False)


def segment(args: argparse.Namespace) -> int:
    """``her2kit segment INPUT... --out DIR``: labels.zarr only."""
    return run(args, segment_only=True)


def demo(args: argparse.Namespace) -> int:
    """``her2kit demo``: a 768 x 768 synthetic 2+ image, scored with the shipped model."""
    from PIL import Image

    from her2kit.inference import load_segmenter
    from her2kit.synth.images import make_patch

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise Her2kitError(f"--out {out}: is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    segmenter = load_segmenter(None)  # fails early, with advice, if no shipped weights
    patch = make_patch(20260, 768, "2+", mpp=0.5)
    image = out / "demo-2plus.png"
    tmp = out / ".demo-2plus.png.tmp"
    Image.fromarray(patch.region.rgb).save(tmp, format="PNG", dpi=(25400 / 0.5, 25400 / 0.5))
    os.replace(tmp, image)
    ns = argparse.Namespace(inputs=[str(image)], out=str(out), model=None, mpp=0.5, force=True,
                            roi=None, scorer="asco-cap-2018", device=None, workers=1, scheduler=None)
    status = run(ns, get_segmenter=lambda: segmenter)
    truth = patch.score + (f" ({patch.subcategory})" if patch.subcategory else "")
    print(f"truth: HER2 {truth} ({int(patch.counts.sum())} tumour cells: "
          f"{', '.join(f'{k}: {v}' for k, v in zip(('0', '1+', '2+', '3+'), patch.counts, strict=True))})")
    print(f"open {out / stem_of(str(image)) / 'report.html'} to see the cells behind the score")
    return status
