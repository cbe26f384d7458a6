"""Score or segment one whole-slide image block by block (contract first).

Stable entry points (used by ``her2kit score`` / ``her2kit segment``):

- :func:`run_slide` — one slide into one output folder.
- :func:`run_slides` — many slides, one output sub-folder each; a bad slide
  gets a one-line error and the others finish.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from her2kit import __version__
from her2kit.errors import Her2kitError, InputError, SetupError
from her2kit.wsi import labelstore
from her2kit.wsi.blocks import label_chunk, make_grid, select_blocks, tissue_fractions
from her2kit.wsi.resume import WORK, Ledger

SCORE_FILES = ("cells.csv", "cells.geojson", "overlay.png", "report.html", "score.json")


def _segmenter_info(segmenter: Any, device: str | None) -> tuple[Any, str, float]:
    """(segmenter or loaded one, name, mpp)."""
    if isinstance(segmenter, str):
        from her2kit.wsi.worker import worker_segmenter

        seg = worker_segmenter(segmenter, device)
        return seg, str(getattr(seg, "name", segmenter)), float(seg.mpp)
    for attr in ("mpp", "predict"):
        if not hasattr(segmenter, attr):
            raise Her2kitError(f"segmenter {segmenter!r} has no .{attr}")
    return segmenter, str(getattr(segmenter, "name", type(segmenter).__name__)), float(segmenter.mpp)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _choose_level(slide: Any, mpp0: float, target_mpp: float) -> int:
    """Coarsest level at least as fine as ``target_mpp`` (read there, then resample)."""
    level = 0
    for lv in range(slide.level_count):
        if mpp0 * slide.level_downsample(lv) <= target_mpp * 1.001:
            level = lv
    return level


def _complete(out_dir: Path, segment_only: bool) -> bool:
    if segment_only:
        return (out_dir / "labels.zarr").is_dir()
    return (out_dir / "score.json").is_file() and (out_dir / "labels.zarr").is_dir()


def _raise_task_error(path: str, r: dict) -> None:
    """A block task's error dict as an exception: the input's fault (InputError,
    naming it), the model's (SetupError: every input would meet it), or the run's."""
    if r.get("input"):
        raise InputError(path, r["error"])
    if r.get("setup"):
        raise SetupError(r["error"])
    raise Her2kitError(r["error"])


def _bar(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="block", disable=not enabled,
                file=sys.stderr, leave=False, dynamic_ncols=True)


def run_slide(
    path: str,
    out_dir: str | Path,
    segmenter: Any,
    *,
    mpp: float | None = None,
    workers: int = 1,
    scheduler: str | None = None,
    client: Any = None,
    roi: list | None = None,
    force: bool = False,
    segment_only: bool = False,
    block: int = 2048,
    halo: int = 128,
    tissue: bool | str = True,
    device: str | None = None,
    progress: bool = True,
    executor: Any = None,
    cell_params: dict | None = None,
    cell_finder: str | None = None,
    overlap: bool | None = None,
    cell_workers: int | None = None,
    scorer: str | None = None,
    classes_only: bool = False,
) -> dict:
    """Segment (and score) one slide in blocks, writing into ``out_dir``.

    Args:
        path: slide file or URL, opened with :func:`her2kit.readers.open_slide`
            (in every worker).
        out_dir: this slide's own output folder (the caller picks
            ``DIR/<input stem>``). Written: ``labels.zarr`` (NGFF 0.4 labels
            ``semantic`` uint8 and ``cells`` uint32 at level-0 resolution,
            multiscale) and, unless ``segment_only``, ``score.json``,
            ``cells.csv``, ``cells.geojson``, ``overlay.png``, ``report.html``.
        segmenter: an object with ``.mpp`` (microns/pixel it works at),
            ``.name`` and ``.predict(rgb uint8 (H, W, 3)) -> float32 (3, H, W)``
            probabilities (background, membrane, nucleus); or a model name /
            checkpoint path string, loaded once per worker process with
            :func:`her2kit.inference.load_segmenter` on ``device``.
        mpp: microns/pixel of level 0 for inputs that carry none.
        workers: local worker processes; 1 runs the block tasks in-process,
            one after another (no cluster start-up).
        scheduler: address of an existing dask.distributed scheduler
            ("tcp://host:8786"); workers must see ``path`` and ``out_dir``.
        client: an existing ``distributed.Client`` (overrides workers/scheduler).
        roi: polygons in level-0 pixels, each a list of (x, y) vertices, or a
            list of such rings (exterior, then holes; GeoJSON order); only
            cells whose centroid lies inside (outside the holes) count and
            only blocks touching a polygon's bounding box are processed.
        force: redo a slide whose outputs are complete (otherwise nothing is
            done and the existing summary is returned).
        segment_only: write ``labels.zarr`` only.
        block: block side in pixels at the segmenter's resolution.
        halo: context margin in pixels at the segmenter's resolution, on every
            side of a block (should exceed the largest cell diameter).
        tissue: process only blocks with tissue: True uses the "tissue-otsu"
            preprocessor, a string names another preprocessor plugin (stage
            "tissue"), False processes every block.
        device: torch device for string segmenters (default: cuda if available).
        progress: tqdm bar over blocks on stderr.
        executor: an executor from :func:`her2kit.wsi.cluster.make_executor`
            to share between slides (overrides workers/scheduler/client).
        cell_params: :class:`~her2kit.scoring.cells.CellParams` fields (a dict)
            passed to ``find_cells`` (``segment_only`` adds ``staining=False``:
            the same labels, without measuring each cell's staining).
        cell_finder: "module:function" used instead of ``find_cells`` (same
            signature; e.g. a cheaper one for benchmarks).
        scorer: a scorer plugin other than asco-cap-2018, run over the slide's
            cells (its value in score.json under "scorer").
        classes_only: with ``segment_only``, the network's pixel classes alone
            (no cell finding; labels/cells stays empty).
        overlap: find cells of one block in a second thread while the next
            block is predicted (see :func:`her2kit.wsi.worker.iter_blocks`);
            cluster tasks then take a few consecutive blocks each; two
            blocks' arrays are in memory at once. None (default): on when the
            segmenter runs on a GPU (the network is fast there and cell
            finding stays on the CPU), and for in-process runs (``workers=1``)
            on a machine with 2 or more cores; off for local worker processes,
            which fill the cores already.
        cell_workers: in-process runs with ``overlap``: how many blocks find
            their cells at once, in threads (None: 1 on a CPU; on a GPU one
            per spare core, within memory; see :func:`her2kit.wsi.worker.cell_workers_for`).

    Returns:
        The summary written to ``score.json`` (score, subcategory, cells_total,
        percent, h_score, percent_complete, model, her2kit_version, mpp, plus
        ``wsi``: block counts and grid, and ``run``: timings in seconds,
        blocks resumed); ``{"skipped": True, ...}`` when already complete.

    Raises:
        InputError: unreadable / corrupt / zero-size slide, missing level.
    """
    from her2kit.inference import model_fingerprint
    from her2kit.readers import open_slide
    from her2kit.wsi.cluster import SchedulerLost, make_executor

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    path = os.fspath(path)
    if cell_params is not None and hasattr(cell_params, "to_dict"):
        cell_params = cell_params.to_dict()
    from her2kit.scoring.cells import CellParams

    # every parameter in the plan, defaults too: blocks found under other
    # defaults (an upgraded her2kit resuming a run) are not mixed with new ones
    cell_params = {**CellParams().to_dict(), **(cell_params or {})}
    if segment_only:  # labels only: each cell's staining would be measured for nothing
        cell_params = {**(cell_params or {}), "staining": False}
    if classes_only:  # the network's classes alone (segment --classes-only): no cells
        if not segment_only:
            raise Her2kitError("classes_only is for segmentation alone (segment_only=True): a score needs cells")
        cell_finder = "her2kit.scoring.cells:classes_only"
    if roi:
        from her2kit.scoring.roi import as_rings

        roi = as_rings(roi)  # one form in the plan: rings of [x, y], exterior first
    out_dir = Path(out_dir)
    if _complete(out_dir, segment_only) and not force:
        summary = {}
        if (out_dir / "score.json").is_file():
            summary = json.loads((out_dir / "score.json").read_text())
        return {**summary, "input": path, "out": str(out_dir), "skipped": True}

    try:
        slide = open_slide(path)
    except Her2kitError:
        raise
    except Exception as exc:
        raise InputError(path, f"cannot open: {_one_line(exc)}") from None
    try:
        h0, w0 = slide.shape
        if h0 <= 0 or w0 <= 0:
            raise InputError(path, f"empty image ({h0}x{w0} pixels)")
        from her2kit.scoring.commands import file_resolution

        file_mpp = file_resolution(slide.mpp, mpp)
        mpp0 = file_mpp or mpp
        if mpp0 is None:
            raise InputError(path, "the file does not say its resolution; give --mpp (microns per pixel)")
        from her2kit.readers import missing_chunks_note

        storage_note = missing_chunks_note(slide)
        if storage_note:
            print(f"her2kit: note: {path}: {storage_note}", file=sys.stderr)
        seg, seg_name, seg_mpp = _segmenter_info(segmenter, device)
        level = _choose_level(slide, mpp0, seg_mpp)
        scale = seg_mpp / mpp0
        grid = make_grid((h0, w0), scale, block, halo)
        ledger = Ledger(out_dir / WORK)
        plan = {
            "path": os.path.abspath(path) if "://" not in path else path,
            # the file itself: one replaced at the same path must not reuse old blocks
            "input_stat": _input_stat(path),
            "shape": [h0, w0], "mpp": mpp0, "mpp_from": "file" if file_mpp else "--mpp", "level": level,
            "level_downsample": h0 / slide.level_shape(level)[0],
            "scale": scale, "block0": grid.block0, "halo0": grid.halo0,
            "model": seg_name, "model_fingerprint": model_fingerprint(seg),
            "model_mpp": seg_mpp, "id_stride": grid.id_stride(),
            "segment_only": bool(segment_only), "tissue": tissue, "roi": roi,
            "cell_params": cell_params, "features": not segment_only,
            "cell_finder": cell_finder,
            "work_dir": str(ledger.dir.resolve()),
            "labels_path": str(ledger.labels_path.resolve()),
            "her2kit_version": __version__,
        }
        plan["device"] = device
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            resumed = ledger.start(plan)
            if not resumed:
                labelstore.create(ledger.labels_path, (h0, w0), label_chunk(grid.block0), mpp0)
                ledger.commit_plan(plan)
        except OSError as exc:  # the output side, not the input
            raise Her2kitError(f"{out_dir}: cannot write: {_one_line(exc)}") from None
        timings["open"] = time.perf_counter() - t_start

        # tissue at low resolution (and the thumbnail for the report)
        t = time.perf_counter()
        fractions = None
        if tissue:
            from her2kit.plugins import registry
            from her2kit.preprocess.tissue import tissue_mask_of

            name = tissue if isinstance(tissue, str) else "tissue-otsu"
            detector = registry().get("preprocessor", name).factory()
            small, small_ds = _thumbnail(slide, ledger, mpp0, "tissue", target_mpp=8.0,
                                         progress=f"{Path(path).name}: tissue" if progress else None)
            mask = tissue_mask_of(small, small_ds * mpp0, detector)
            fractions = tissue_fractions(grid, mask, small_ds)
        # the report's picture: <= 1024 px on the long side
        thumb, thumb_ds = _thumbnail(slide, ledger, mpp0, "picture", target_mpp=0.0, max_side=1024,
                                     progress=f"{Path(path).name}: picture" if progress else None)
        selected = select_blocks(grid, fractions, roi=roi)
        timings["tissue"] = time.perf_counter() - t
    except Her2kitError:
        raise
    except Exception as exc:  # corrupt chunks, truncated files: one line naming the file
        if os.environ.get("HER2KIT_DEBUG"):
            raise
        raise InputError(path, f"cannot read: {_one_line(exc)}") from None
    finally:
        slide.close()

    own_executor = executor is None
    if own_executor:
        executor = make_executor(workers, scheduler, client)
    try:
        t = time.perf_counter()
        pending = [i for i in selected if not ledger.done(i)]
        seg_arg = executor.share(segmenter) if pending else None
        stem = Path(path.rstrip("/")).name
        sums: dict[str, float] = {}
        if overlap is None:
            overlap = _default_overlap(executor, segmenter, device)
        # closing: a failed block stops the run only once the block in the second
        # thread (overlap) is finished and recorded
        # in-process overlapped runs stitch blocks as they finish (the rest: _stitch below)
        seams = (_EarlySeams(plan, grid, selected, ledger, set(selected) - set(pending))
                 if overlap and executor.kind == "in-process" else None)
        with _bar(len(selected), len(selected) - len(pending), stem, progress) as bar, \
                contextlib.closing(_run_blocks(executor, plan, pending, seg_arg, overlap,
                                               cell_workers, seams)) as results:
            for r in results:
                if "error" in r:
                    _raise_task_error(path, r)
                for k, v in r["timings"].items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.update(1)
        timings["blocks"] = time.perf_counter() - t
        timings.update({f"block_{k}_sum": v for k, v in sums.items()})

        t = time.perf_counter()
        _stitch(plan, grid, selected, ledger, executor, path)
        timings["stitch"] = time.perf_counter() - t
        if seams is not None and seams.level1_complete():
            ledger.mark("level-1")
        t = time.perf_counter()
        _pyramid(plan, ledger, executor, path)
        timings["pyramid"] = time.perf_counter() - t
    except SchedulerLost as exc:
        raise SchedulerLost(f"{path}: {exc}") from None
    finally:
        if own_executor:
            executor.close()

    t = time.perf_counter()
    wsi = {
        "grid": {"rows": grid.rows, "cols": grid.cols, "block": block, "halo": halo,
                 "block_level0": grid.block0, "halo_level0": grid.halo0, "level": level,
                 "scale": scale, "id_stride": grid.id_stride()},
        "blocks_total": len(grid), "blocks_tissue": len(selected),
        "blocks_skipped": len(grid) - len(selected),
        "tissue_fraction": None if fractions is None else round(float(np.mean(fractions)), 4),
        "shape": [h0, w0],
    }
    if storage_note:
        wsi["storage_note"] = storage_note
    run_info = {"blocks_run": len(pending), "blocks_resumed": len(selected) - len(pending),
                "workers": executor.workers, "executor": executor.kind, "overlap": bool(overlap)}
    try:
        summary = _finish(path, out_dir, plan, grid, selected, ledger, segment_only, wsi,
                          run_info, timings, thumb, thumb_ds, t, t_start, scorer)
    except OSError as exc:  # the output side (a full disk, a name taken): say which file
        where = getattr(exc, "filename2", None) or exc.filename
        name = f" {Path(where).name}" if where else ""
        raise Her2kitError(f"{out_dir}: cannot write{name}: {exc.strerror or _one_line(exc)}; "
                           "run again to finish (the blocks are kept)") from None
    return summary


def _default_overlap(executor: Any, segmenter: Any, device: str | None) -> bool:
    """Overlap cell finding with prediction on a GPU, and in-process on a machine with a
    spare core (measured: 1.06-1.21x faster on a shared 2-core machine, 16 blocks of
    512 px with the shipped Her2Net); not when local worker processes fill the cores."""
    from her2kit.wsi.worker import uses_gpu

    if uses_gpu(segmenter, device):
        return True
    return executor.kind == "in-process" and (os.cpu_count() or 1) >= 2


def _run_blocks(executor: Any, plan: dict, pending: list[int], seg_arg: Any, overlap: bool,
                cell_workers: int | None = None, after: Any = None):
    """Yield each pending block's summary (or error dict) as blocks finish.
    ``after``: see :func:`worker.iter_blocks` (in-process overlapped runs only)."""
    from her2kit.wsi import worker
    from her2kit.wsi.cluster import gc_frozen, release_memory

    in_process = executor.kind == "in-process"
    with gc_frozen() if in_process else contextlib.nullcontext():
        if not overlap:
            for _, r in executor.run(worker.process_block, [(plan, i, seg_arg) for i in pending],
                                     key="block"):
                yield r
        elif in_process:
            yield from worker.iter_blocks(plan, pending, seg_arg, overlap=True,
                                          release=release_memory, cell_workers=cell_workers,
                                          after=after)
        else:  # a few consecutive blocks per task, pipelined inside the worker
            per = max(2, min(8, len(pending) // max(1, 4 * executor.workers)))
            runs = [pending[i:i + per] for i in range(0, len(pending), per)]
            for _, rs in executor.run(worker.process_blocks, [(plan, r, seg_arg, True) for r in runs],
                                      key="blocks"):
                yield from rs


def _thumbnail(slide: Any, ledger: Ledger, mpp0: float, name: str, **kw: Any) -> tuple[np.ndarray, float]:
    """A low-resolution picture of the slide (cached in the work folder for resumed runs)."""
    from her2kit.preprocess.tissue import slide_thumbnail
    from her2kit.wsi.resume import atomic_save_npz

    cache = ledger.dir / f"{name}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            return z["rgb"], float(z["downsample"])
    thumb, ds = slide_thumbnail(slide, mpp=mpp0, **kw)
    # uncompressed: zlib took longer than making the picture (a few MB at most)
    atomic_save_npz(cache, compress=False, rgb=thumb, downsample=np.float64(ds))
    return thumb, ds


def _seams_left(grid: Any, selected: list[int], ledger: Ledger) -> dict[int, list[int]]:
    """The blocks still to stitch, with the blocks whose spill they take."""
    chosen = set(selected)
    targets = sorted({n for i in selected for n in grid.neighbours(i)} | chosen)
    left = {}
    for t in targets:
        sources = [n for n in grid.neighbours(t) if n in chosen]
        if sources and not ledger.marked(f"seam-{t:06d}"):
            left[t] = sources
    return left


def _stitch(plan: dict, grid: Any, selected: list[int], ledger: Ledger, executor: Any,
            path: str) -> None:
    """Paste every block's spill into its neighbours (see worker.seam_block)."""
    from her2kit.wsi.worker import seam_block

    items = [(plan, t, sources) for t, sources in _seams_left(grid, selected, ledger).items()]
    for _, r in executor.run(seam_block, items, key="seam"):
        if "error" in r:
            _raise_task_error(path, r)


class _EarlySeams:
    """Stitch a block as soon as it and all its neighbours with tissue are
    written, in the thread that wrote the last of them (in-process overlapped
    runs): the stitching then overlaps with the network instead of waiting
    for the end of the slide. A seam that fails here is left unmarked, and
    :func:`_stitch` does it again (and reports it) after the blocks.

    Once a block's level-0 region is final (written and stitched), its region
    of pyramid level 1 is filled too, in the same thread. When every block
    that can hold cells got its level 1 so, :meth:`level1_complete` says the
    pyramid may start at level 2 (level 1 took ~0.35 of the 0.5 s the
    pyramid took after the blocks of an 8192^2 slide); otherwise (a resumed
    run, a seam or a region that failed) level 1 is made again after the
    blocks, as before."""

    def __init__(self, plan: dict, grid: Any, selected: list[int], ledger: Ledger, done: set[int]):
        self.plan, self.grid = plan, grid
        self.chosen = set(selected)
        self.left = _seams_left(grid, selected, ledger)
        self.done = set(done)  # blocks written by an earlier run
        self.lock = threading.Lock()  # several cell threads on a GPU
        # the blocks that can hold cells: those with tissue and their neighbours (spill)
        self.needed = self.chosen | {n for i in self.chosen for n in grid.neighbours(i)}
        self.no_seam = self.needed - set(self.left)
        labels = plan.get("labels_path")
        # an odd block side would make neighbouring blocks share level-1 pixels
        # (level-1 row r is level-0 row 2r): then level 1 waits for the end
        self.levels = labelstore.level_count(labels) if labels and grid.block0 % 2 == 0 else 0
        self.level1: set[int] = set()
        self.level1_lock = threading.Lock()  # two blocks' level-1 regions may share a chunk

    def __call__(self, summary: dict) -> None:
        from her2kit.wsi.worker import seam_block

        i = summary["index"]
        with self.lock:
            self.done.add(i)
            ready = []
            for t in [i, *self.grid.neighbours(i)]:
                sources = self.left.get(t)
                if sources is None or (t in self.chosen and t not in self.done):
                    continue
                if all(s in self.done for s in sources):
                    ready.append((t, self.left.pop(t)))
        if i in self.no_seam:  # written, and nothing to paste: final now
            self._level1(i)
        for t, sources in ready:
            if "error" not in seam_block(self.plan, t, sources):
                self._level1(t)

    def _level1(self, index: int) -> None:
        """Fill block ``index``'s region of level 1 from its (final) level-0 region."""
        if self.levels < 2:
            return
        b = self.grid.block(index)
        h1, w1 = (-(-s // 2) for s in self.grid.shape)
        y, x = b.y // 2, b.x // 2
        h, w = min(-(-(b.y + b.h) // 2), h1) - y, min(-(-(b.x + b.w) // 2), w1) - x
        try:
            with self.level1_lock:
                labelstore.downsample_region(self.plan["labels_path"], 1, y, x, h, w)
        except Exception:  # made again after the blocks (and reported there if it fails again)
            return
        with self.lock:
            self.level1.add(index)

    def level1_complete(self) -> bool:
        """Whether level 1 was filled here for every block that can hold cells."""
        return self.levels >= 2 and not self.left and self.needed <= self.level1


def _pyramid(plan: dict, ledger: Ledger, executor: Any, path: str) -> None:
    """Fill the coarser label levels, level by level, region by region."""
    from her2kit.wsi.worker import pyramid_region

    labels = ledger.labels_path
    chunk = labelstore.open_level(labels, "cells", 0, mode="r").chunks[0]
    for level in range(1, labelstore.level_count(labels)):
        if ledger.marked(f"level-{level}"):
            continue
        items = [(plan, *r) for r in labelstore.pyramid_regions(labels, level, 2 * chunk)]
        for _, r in executor.run(pyramid_region, items, key="pyramid"):
            if "error" in r:
                _raise_task_error(path, r)
        ledger.mark(f"level-{level}")


def _gather(ledger: Ledger, selected: list[int], csv_path: Path | None,
            heat: Any = None, hist: Any = None) -> tuple[np.ndarray, int, int]:
    """Stream the blocks' cells into cells.csv (block order, then rank); return
    the tumour cells' counts per category (0..3), how many of them have complete
    staining, and the number of all cells. Nothing grows with the number of cells."""
    from her2kit.scoring.cells import COLUMNS
    from her2kit.scoring.exports import csv_columns, csv_header
    from her2kit.scoring.rules import checked_categories
    from her2kit.wsi import cellrows

    counts = np.zeros(4, np.int64)
    complete = 0
    names: list[str] | None = None
    n = 0
    f = open(csv_path, "wb") if csv_path is not None else None
    try:
        for i in selected:
            cols, _, _ = ledger.load_block(i)
            if not cols or len(cols.get("id", ())) == 0:
                continue
            if names is None:
                names = csv_columns(cols)
                if f is not None:
                    f.write(csv_header(names).encode())
            elif set(names) - set(cols):  # (extra columns are left out; missing ones cannot be made up)
                raise Her2kitError(f"block {i}: its cell table lacks the columns "
                                   f"{sorted(set(names) - set(cols))} of the first block's")
            n += len(cols["id"])
            if f is not None:
                f.write(cellrows.block_rows(ledger.rows_path(i), cols, names))
            try:  # (as the scorers check them: a cell finder's 2.99 or -1 is not clipped into a category)
                cat = checked_categories(cols["category"])
            except ValueError as exc:
                raise Her2kitError(f"block {i}: {exc}") from None
            # (a cell finder's table without "complete": counted from categories, as rules does)
            full = np.asarray(cols["complete"]).astype(bool) if "complete" in cols else cat >= 2
            if "tumour" in cols:
                cat, full = cat[cols["tumour"].astype(bool)], full[cols["tumour"].astype(bool)]
            counts += np.bincount(cat, minlength=4)[:4]
            complete += int(full.sum())
            for sink in (heat, hist):
                if sink is not None:
                    sink.add(cols)
        if names is None and f is not None:
            f.write(csv_header(list(COLUMNS)).encode())
    finally:
        if f is not None:
            f.close()
    return counts, complete, n


def _slide_scorer(name: str, ledger: Ledger, selected: list[int]) -> dict:
    """``{"name", "value"}`` of scorer plugin ``name`` over the slide's cell table
    (the blocks' columns joined: only asked for with --scorer, as it grows with
    the cells). Her2Net's pattern head needs the whole image: not on slides."""
    if name == "her2net-pattern":
        return {"name": name, "value": None,
                "note": "needs the whole image at once; not run on whole-slide images"}
    from her2kit.scoring.commands import scorer_value

    parts: dict[str, list] = {}
    for i in selected:
        cols, _, _ = ledger.load_block(i)
        for k, v in (cols or {}).items():
            parts.setdefault(k, []).append(v)
    table = {k: np.concatenate(v) for k, v in parts.items()}
    if "category" not in table:
        table = {"category": np.zeros(0, np.int64), "tumour": np.zeros(0, bool)}
    return {"name": name, "value": scorer_value(name, table)}


def _finish(path: str, out_dir: Path, plan: dict, grid: Any, selected: list[int],
            ledger: Ledger, segment_only: bool, wsi: dict, run_info: dict,
            timings: dict, thumb: np.ndarray, thumb_ds: float, t: float, t_start: float,
            scorer: str | None = None) -> dict:
    """Write the slide's outputs in the work folder, then rename them into place."""
    from her2kit.scoring.cells import CellParams
    from her2kit.scoring.roi import roi_fingerprint
    from her2kit.wsi import report

    work = ledger.dir
    from her2kit.scoring.commands import input_bytes

    summary: dict[str, Any] = {"input": path, "input_bytes": input_bytes(path), "model": plan["model"],
                               "model_fingerprint": plan["model_fingerprint"],
                               "roi_fingerprint": roi_fingerprint(plan["roi"]), "mpp": plan["mpp"],
                               "cell_params_fingerprint": CellParams.from_dict(plan["cell_params"]).fingerprint(),
                               "mpp_from": plan.get("mpp_from"), "model_mpp": plan["model_mpp"],
                               "her2kit_version": __version__, "shape": plan["shape"],
                               "roi": bool(plan["roi"])}
    if plan.get("cell_finder") == "her2kit.scoring.cells:classes_only":
        summary["classes_only"] = True
    if wsi.get("storage_note"):
        summary["storage_note"] = wsi["storage_note"]
    staged: list[str] = []
    if not segment_only:
        from concurrent.futures import ThreadPoolExecutor

        from her2kit.wsi import features

        # file copies and PNG encoding release the GIL: they run beside the
        # gathering of the cells (Python) instead of after it
        with ThreadPoolExecutor(2, thread_name_prefix="her2kit-outputs") as pool:
            geojson = pool.submit(features.concatenate, [ledger.features_path(i) for i in selected],
                                  work / "cells.geojson")
            slide_img = pool.submit(report.slide_image, thumb)
            heat = report.HeatMap(thumb.shape[:2], thumb_ds, plan["mpp"])
            from her2kit.scoring.exports import StainingHistograms

            hist = StainingHistograms()
            counts, complete, n = _gather(ledger, selected, work / "cells.csv", heat, hist)
            overlay = pool.submit(report.write_overlay, work / "overlay.png", thumb, heat)
            summary.update(report.score_counts(counts, complete))
            summary["cells_detected"] = int(n)
            from her2kit.scoring.commands import SCORING

            summary["scoring"] = SCORING
            if not selected and summary.get("score") is None:  # as an image's (docs/scoring.md)
                summary["note"] = "no tissue found; no tumour cells found"
            if scorer and scorer != "asco-cap-2018":
                summary["scorer"] = _slide_scorer(scorer, ledger, selected)
            summary["wsi"] = wsi
            timings["outputs"] = time.perf_counter() - t
            timings["total"] = time.perf_counter() - t_start
            summary["run"] = {**run_info, "timings_s": {k: round(v, 3) for k, v in timings.items()}}
            report.write_report(work / "report.html", summary, thumb, heat, path,
                                slide_img=slide_img.result(), histograms=hist.pngs())
            geojson.result()
            overlay.result()
        staged += ["cells.csv", "cells.geojson", "overlay.png", "report.html"]
        from her2kit.scoring.exports import write_score_json

        write_score_json(work / "score.json", summary)
        staged.append("score.json")
    else:
        summary["wsi"] = wsi
        timings["total"] = time.perf_counter() - t_start
        summary["run"] = {**run_info, "timings_s": {k: round(v, 3) for k, v in timings.items()}}
    # the run's summary travels with the labels (segment writes nothing else)
    import zarr

    root = zarr.open_group(str(ledger.labels_path), mode="r+", zarr_format=2)
    root.attrs["her2kit"] = json.loads(json.dumps(
        {k: v for k, v in summary.items() if k not in ("percent", "counts")}, default=str))

    # rename into place: labels first, score.json (the "complete" marker) last;
    # an older run's marker goes first, so a kill midway leaves the folder
    # incomplete (the next run redoes it) rather than old and new outputs mixed;
    # `segment` replaces the labels an older score was made from: that score goes too
    for name in staged:  # before anything moves: the labels stay in the work folder for a rerun
        if (out_dir / name).is_dir():
            raise IsADirectoryError(errno.EISDIR, "a folder has that name", str(out_dir / name))
    (out_dir / "score.json").unlink(missing_ok=True)
    if segment_only:
        for name in SCORE_FILES:
            (out_dir / name).unlink(missing_ok=True)
    _replace_dir(ledger.labels_path, out_dir / "labels.zarr")
    for name in staged:
        os.replace(work / name, out_dir / name)
    shutil.rmtree(work, ignore_errors=True)
    summary["out"] = str(out_dir)
    return summary


def _replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` onto ``dst``, replacing an older ``dst`` only once ``src`` is complete."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        _remove(old)
        os.replace(dst, old)
        os.replace(src, dst)
        _remove(old)
    else:
        os.replace(src, dst)


def _input_stat(path: str) -> list[int] | None:
    """[size, mtime in ns] of a local input file or folder (None for URLs)."""
    if "://" in path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def _remove(path: Path) -> None:
    """Delete a folder or a file (QA: a file where labels.zarr goes left a stray
    .labels.zarr.old that rmtree could not delete)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def run_slides(
    paths: list[str],
    out_root: str | Path,
    segmenter: Any,
    **options: Any,
) -> list[dict]:
    """Run :func:`run_slide` for each path into ``out_root/<stem>``.

    One local cluster (or the ``scheduler`` client) serves all slides. A slide
    that fails with an :class:`~her2kit.errors.InputError` (or any read error)
    gets a one-line message on stderr and ``{"input": path, "error": msg}`` in
    the returned list; the others carry on. ``options`` are those of
    :func:`run_slide`.
    """
    from her2kit.scoring.commands import stem_of
    from her2kit.wsi.cluster import make_executor

    out_root = Path(out_root)
    executor = options.pop("executor", None)
    own = executor is None
    if own:
        executor = make_executor(options.pop("workers", 1), options.pop("scheduler", None),
                                 options.pop("client", None))
    else:
        for k in ("workers", "scheduler", "client"):
            options.pop(k, None)
    results = []
    try:
        for p in paths:
            p = os.fspath(p)
            try:
                results.append(run_slide(p, out_root / stem_of(p), segmenter,
                                         executor=executor, **options))
            except Her2kitError as exc:
                msg = str(exc) if isinstance(exc, InputError) else f"{p}: {exc}"
                print(f"her2kit: error: {msg}", file=sys.stderr)
                results.append({"input": p, "error": msg})
    finally:
        if own:
            executor.close()
    return results
