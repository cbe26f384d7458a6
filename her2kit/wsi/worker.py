"""What one block task does, inside a worker process.

The task reads its block plus halo straight from the slide (opened once per
process), resamples it to the segmenter's resolution, segments it (the
segmenter tiles internally with blending), finds cells on block + halo,
keeps the cells whose centroid lies in the block (so a cell on a border is
counted by exactly one block), gives them slide-unique ids
(``block index * stride + rank``), writes the block's own region of the
level-0 labels and records the block in the ledger. Pixels of its cells that
lie in neighbouring blocks ("spill") are recorded too, and pasted into those
blocks' regions by :func:`seam_block` once every block is done, so a cell
cut by a block border is whole in ``labels/cells``.

Tasks never raise: they return ``{"error": ...}`` (a picklable one-line
message), which the driver turns into the slide's one-line error.
"""

from __future__ import annotations

import copy
import math
import sys
import time
import weakref
from typing import Any

import numpy as np

from her2kit.errors import SetupError
from her2kit.wsi import labelstore
from her2kit.wsi.blocks import Block, Grid
from her2kit.wsi.resume import Ledger

_SLIDES: dict[str, Any] = {}
_SEGMENTERS: dict[tuple, Any] = {}


def _one_line(exc: BaseException) -> str:
    from her2kit.errors import InputError

    if isinstance(exc, InputError):  # its message names the slide, which the caller names already
        return " ".join(exc.problem.split())
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def worker_slide(path: str) -> Any:
    """The slide at ``path``, opened once per process."""
    from her2kit.readers import open_slide

    slide = _SLIDES.get(path)
    if slide is None:
        if len(_SLIDES) >= 4:  # many slides in one run: keep few handles open
            _SLIDES.pop(next(iter(_SLIDES))).close()
        slide = _SLIDES[path] = open_slide(path)
    return slide


def _worker_device(device: str | None) -> str | None:
    if device is not None:
        return device
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    n = torch.cuda.device_count()
    try:  # spread local workers over the GPUs
        from distributed import get_worker

        return f"cuda:{int(get_worker().name) % n}"
    except Exception:
        return "cuda"


def worker_segmenter(spec: Any, device: str | None = None) -> Any:
    """The segmenter: ``spec`` itself, or loaded once per process from a name/path."""
    if not isinstance(spec, str):
        return spec
    key = (spec, device)
    seg = _SEGMENTERS.get(key)
    if seg is None:
        from her2kit.inference import load_segmenter

        seg = _SEGMENTERS[key] = load_segmenter(spec, device=_worker_device(device))
    return seg


def block_segmenter(seg: Any, shape: tuple[int, int]) -> Any:
    """``seg`` set up to cover a block + halo of ``shape`` in as few network passes as possible.

    The block's halo already gives the network its context at the block's
    borders, so a her2kit :class:`~her2kit.inference.Segmenter`'s own sliding
    window (512 px tiles overlapping by 128, blended) is mostly waste on a
    block: a 640^2 block + halo became four 512^2 passes (2.6x the pixels)
    plus the blending. Here the tile grows to the whole block + halo while it
    holds no more pixels than one of the segmenter's batches (``batch`` x
    ``tile``^2, 1024^2 by default, so memory stays what the segmenter
    allows); larger blocks get the fewest tiles of that size with the
    segmenter's overlap. Segmenters without ``tile``/``overlap``/``batch``
    attributes are used as they are.

    On a GPU those tiles go through the network together, in one batch (as
    many as fit in half of the GPU's free memory): the same tiles and
    blending as on a CPU, but the recurrent sweeps of the TLSTM are
    sequential steps whose launches set the GPU's pace, so a batch of nine
    costs about what one tile does. Measured on an H200 (8192^2 slide, 16
    blocks of 2048 + 64, shipped Her2Net, the network alone): nine ~800^2
    tiles per block one after another 6.1 s, in one batch 2.5 s, and
    blended on the GPU too (:meth:`her2kit.inference.Segmenter._sliding`)
    0.9 s.
    """
    tile, overlap, batch = (getattr(seg, a, None) for a in ("tile", "overlap", "batch"))
    if not all(isinstance(v, int) and v >= 0 for v in (tile, overlap, batch)) or tile < 1 or batch < 1:
        return seg
    limit = max(tile, math.isqrt(batch * tile * tile))
    side = max(shape)
    if side <= limit:
        new_tile = side
    else:
        step = max(limit - overlap, 1)
        n = math.ceil((side - overlap) / step)
        new_tile = min(limit, math.ceil((side + (n - 1) * overlap) / n))
    if new_tile <= tile:
        return seg
    new_batch = max(1, (batch * tile * tile) // (new_tile * new_tile))
    if uses_gpu(seg):
        from her2kit.inference import tile_starts

        tiles = len(tile_starts(shape[0], min(new_tile, shape[0]), overlap)) * \
            len(tile_starts(shape[1], min(new_tile, shape[1]), overlap))
        new_batch = max(new_batch, _gpu_batch(seg, new_tile, tiles))
    try:
        views = _BLOCK_VIEWS.setdefault(seg, {})
    except TypeError:  # not weak-referenceable: a fresh (cheap, shallow) copy each time
        views = {}
    view = views.get((new_tile, new_batch))
    if view is None:
        view = views[(new_tile, new_batch)] = copy.copy(seg)  # shares the network
        view.tile, view.batch = new_tile, new_batch
        view._block_view = True  # its batch is ours to lower (see _predict)
    return view


def _predict(seg: Any, rgb: np.ndarray) -> np.ndarray:
    """``seg.predict(rgb)``; where a block view's batch runs out of GPU memory,
    again with half the batch, which the next blocks keep (the batch on a
    GPU comes from a per-pixel estimate that a user's model may exceed)."""
    while True:
        try:
            return seg.predict(rgb)
        except Exception as exc:
            torch = sys.modules.get("torch")
            oom = torch is not None and isinstance(exc, torch.OutOfMemoryError)
            if not (oom and getattr(seg, "_block_view", False) and seg.batch > 1):
                raise
            seg.batch //= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


_BLOCK_VIEWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

# bytes of GPU memory per pixel of a batch in one forward pass, with room to
# spare: the shipped Her2Net peaks at ~350 (measured on the CPU, inference mode)
_GPU_BYTES_PER_PX = 1024


def _gpu_batch(seg: Any, tile: int, tiles: int) -> int:
    """How many of a block's ``tiles`` (``tile``^2 px each) go through the
    network at once on ``seg``'s GPU: all of them, if they fit in half of its
    free memory."""
    try:
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(seg.device))
    except Exception:  # no CUDA here (tests) or not a CUDA device: the memory is not known
        return tiles
    return max(1, min(tiles, int(free * 0.5 // (_GPU_BYTES_PER_PX * tile * tile))))


def grid_of(plan: dict) -> Grid:
    """The block grid recorded in a plan."""
    return Grid(tuple(plan["shape"]), plan["block0"], plan["halo0"], plan["scale"])


def read_block(slide: Any, plan: dict, block: Block) -> np.ndarray:
    """Block plus halo as uint8 RGB at the segmenter's resolution (white outside the slide)."""
    grid = grid_of(plan)
    ds = plan["level_downsample"]
    ry, rx, rh, rw = grid.extent(block)
    ly, lx = int(round(ry / ds)), int(round(rx / ds))
    lh, lw = max(1, int(round(rh / ds))), max(1, int(round(rw / ds)))
    from her2kit.readers.pixels import checked_region

    rgb = checked_region(slide.read_region(ly, lx, lh, lw, level=plan["level"]), lh, lw, slide,
                         getattr(slide, "path", "slide"))
    mh, mw = grid.model_shape(block)
    if rgb.shape[:2] != (mh, mw):
        from PIL import Image

        rgb = np.asarray(Image.fromarray(rgb).resize((mw, mh), Image.Resampling.BILINEAR,
                                                      reducing_gap=None))
    return np.ascontiguousarray(rgb)


def _upsample(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image to ``shape``."""
    if a.shape == shape:
        return a
    yi = np.minimum(((np.arange(shape[0]) + 0.5) * a.shape[0] / shape[0]).astype(np.int64), a.shape[0] - 1)
    xi = np.minimum(((np.arange(shape[1]) + 0.5) * a.shape[1] / shape[1]).astype(np.int64), a.shape[1] - 1)
    return a[yi][:, xi]


def table_columns(table: Any) -> dict[str, np.ndarray]:
    """A cell table (dict of columns, structured array, list of dicts, or
    anything with ``to_dict``/``columns``) as a dict of 1-D numpy arrays."""
    if isinstance(table, dict):
        return {k: np.asarray(v) for k, v in table.items()}
    if isinstance(table, np.ndarray) and table.dtype.names:
        return {k: np.asarray(table[k]) for k in table.dtype.names}
    if hasattr(table, "columns") and hasattr(table, "__getitem__") and not isinstance(table, list):
        return {str(k): np.asarray(table[k]) for k in table.columns}
    if isinstance(table, list):
        if not table:
            return {}
        keys = list(table[0])
        return {k: np.asarray([row[k] for row in table]) for k in keys}
    raise TypeError(f"unsupported cell table type {type(table).__name__}")


def find_block_cells(rgb: np.ndarray, probs: np.ndarray, plan: dict) -> Any:
    """Cells of one block + halo: :func:`her2kit.scoring.cells.find_cells`, or the
    plan's ``cell_finder`` ("module:function" with the same signature)."""
    import importlib

    from her2kit.scoring.cells import CellParams

    target = plan.get("cell_finder") or "her2kit.scoring.cells:find_cells"
    module, _, name = target.partition(":")
    finder = getattr(importlib.import_module(module), name)
    params = plan.get("cell_params")
    params = CellParams.from_dict(params) if isinstance(params, dict) else params
    return finder(rgb, probs, plan["model_mpp"], params)


def _nucleus_centroids(nuclei: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) centroid in pixels of each id's nucleus in ``nuclei`` (NaN where none)."""
    if len(ids) == 0:
        return np.zeros(0), np.zeros(0)
    size = int(max(nuclei.max(initial=0), ids.max(initial=0))) + 1
    # only the labelled pixels, in raster order: each label's sums are those
    # of a pass over the whole image, for a tenth of the work
    ys, xs = np.nonzero(nuclei)
    flat = nuclei[ys, xs].astype(np.int64)
    count = np.bincount(flat, minlength=size).astype(np.float64)
    sy = np.bincount(flat, weights=ys.astype(np.float64), minlength=size)
    sx = np.bincount(flat, weights=xs.astype(np.float64), minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sy[ids] / count[ids], sx[ids] / count[ids]


def _inside_roi(xs: np.ndarray, ys: np.ndarray, roi: list | None) -> np.ndarray:
    """Points inside any ROI polygon and outside its holes (``roi``: the plan's,
    in :func:`her2kit.scoring.roi.as_rings` form)."""
    if not roi:
        return np.ones(len(xs), bool)
    from her2kit.scoring.roi import inside

    return inside([[np.asarray(r, np.float64) for r in poly] for poly in roi], xs, ys)


def process_block(plan: dict, index: int, segmenter: Any) -> dict:
    """Run one block (see the module docstring); returns a small summary dict."""
    stage = predict_block(plan, index, segmenter)
    return stage if "error" in stage else finish_block(plan, stage)


def read_stage(plan: dict, index: int) -> dict:
    """A block's pixels (block + halo), as :func:`predict_block` takes them, or an
    error dict (with "error")."""
    t0 = time.perf_counter()
    grid = grid_of(plan)
    block = grid.block(index)
    try:
        slide = worker_slide(plan["path"])
        rgb = read_block(slide, plan, block)
    except Exception as exc:
        return {"index": index, "error": f"cannot read pixels of block {index} "
                f"(y={block.y}, x={block.x}): {_one_line(exc)}", "input": True}
    return {"grid": grid, "block": block, "rgb": rgb, "t0": t0,
            "timings": {"read": time.perf_counter() - t0}}


def predict_block(plan: dict, index: int, segmenter: Any, read: dict | None = None) -> dict:
    """First stage of a block: read block + halo (unless ``read``, :func:`read_stage`'s
    result, is given) and predict its probabilities.

    Returns the state :func:`finish_block` takes, or an error dict (with "error").
    """
    read = read_stage(plan, index) if read is None else read
    if "error" in read:
        return read
    grid, block, rgb, timings = read["grid"], read["block"], read["rgb"], read["timings"]
    try:
        seg = block_segmenter(worker_segmenter(segmenter, plan.get("device")), rgb.shape[:2])
        t = time.perf_counter()
        probs = _predict(seg, rgb)
        timings["predict"] = time.perf_counter() - t
    except SetupError as exc:  # the model's fault (e.g. a wrong output): every block would meet it
        return {"index": index, "error": str(exc), "setup": True, "input": False}
    except Exception as exc:
        if plan.get("debug"):
            raise
        return _failed(block, exc)
    return {"grid": grid, "block": block, "rgb": rgb, "probs": probs, "timings": timings,
            "t0": read["t0"]}


def finish_block(plan: dict, stage: dict) -> dict:
    """Second stage of a block: cells, label writes, ledger (see the module docstring).

    ``stage`` is :func:`predict_block`'s state; its arrays are taken out of
    it (so they are freed as soon as they are used).
    """
    try:
        return _process(plan, stage)
    except Exception as exc:
        if plan.get("debug"):
            raise
        return _failed(stage["block"], exc)


def _failed(block: Block, exc: BaseException) -> dict:
    return {"index": block.index, "error": f"block {block.index} (y={block.y}, x={block.x}) "
            f"failed: {_one_line(exc)}", "input": False}


def uses_gpu(segmenter: Any, device: str | None = None) -> bool:
    """Whether blocks will be predicted on a GPU (then cell finding is overlapped by default)."""
    dev = device or (None if isinstance(segmenter, str) else getattr(segmenter, "device", None))
    if dev is None and isinstance(segmenter, str):
        import torch

        return bool(torch.cuda.is_available())
    return str(dev or "cpu").startswith("cuda")


def iter_blocks(plan: dict, indices: list[int], segmenter: Any, overlap: bool = False,
                release: Any = None, cell_workers: int | None = None, after: Any = None):
    """Run ``indices`` one after another in this process; yield each block's summary dict.

    With ``overlap``, cell finding (and the writes) of block i run in other
    threads while block i+1 is read and predicted in this one: torch, numpy,
    scipy, zarr's codecs and her2kit's watershed release the GIL for most of
    their work, so the two stages' times overlap instead of adding up. On a
    CPU one thread finds cells (the network keeps the other cores); on a GPU
    the network leaves the cores idle, so ``cell_workers`` blocks (default:
    see :func:`cell_workers_for`) have their cells found at once. Blocks are
    yielded in order. ``release`` (optional) is called after each finished
    block (e.g. to return freed heap memory). ``after`` (optional, overlap
    only) is called with each written block's summary in the thread that
    finished it, before the next block's cells: work that can follow a block
    at once (stitching its seams) then also overlaps with the network.

    Measured on an H200 with 16 cores (16 blocks of 2048 px, shipped
    Her2Net): 15 threads ran the block loop in 14.0 s against 85 s of cell
    finding summed over blocks (6x); 15 spawned processes did no better
    (16.4 s: the arrays travel by pickle), so threads it is.

    Cell-finding threads run at the lowest priority: the thread feeding the
    network never waits for a core (on an H200 with 16 cores, 8192^2 slide:
    pipeline 9.3 s against 10.3 s at normal priority, one run each). On a
    CPU one more predicted block may wait for them. The network alone keeps
    only ~1.7 of 2 cores busy (its threads wait passively between parallel
    regions); at low priority cell finding runs in exactly those gaps instead of
    slowing the network, and the queued block keeps the network from
    waiting for cell finding. Measured (8192^2 slide, 16 blocks of 2048 px,
    shipped Her2Net, 2 cores, interleaved runs): 58.3-63.0 s before, 55.9-
    62.0 s after (3-6 s less in each pair); a second queued block did not
    help further. SCHED_IDLE instead of nice 19 kept the network as fast as
    alone but starved cell finding (61-64 s against 56-57 s).

    With several cell threads (a GPU), the next block is submitted when any
    of them is free, not when the oldest block is done: one slow block would
    otherwise idle the rest (finished blocks wait, without their pixels, to
    be yielded in order).

    Two more things keep the network's path short: the next block is read
    (in a thread) while this one is predicted, and once the last block is
    predicted, a block still queued for the busy cell thread starts at once
    in a thread of its own (see :func:`_run_queued_now`). Measured as above:
    51.8 / 54.8 s against 55.3 / 56.6 s before, in alternating runs.
    """
    if not overlap:
        for i in indices:
            yield process_block(plan, i, segmenter)
            if release is not None:
                release()
        return
    from collections import deque
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    device = plan.get("device")
    restore = _spare_a_core(segmenter, device)
    pending: deque = deque()  # (future, stage) of blocks whose cells are being found
    pool, tail, in_flight = None, None, 1
    # the next block is read while this one is predicted: reading is off the
    # network's path (it waits for pixels only at the first block)
    reader = ThreadPoolExecutor(1, thread_name_prefix="her2kit-read")
    next_read = reader.submit(read_stage, plan, indices[0]) if indices else None

    def oldest():
        r = pending.popleft()[0].result()
        if release is not None:
            release()
        return r

    try:
        for k, i in enumerate(indices):
            read = next_read.result()
            next_read = reader.submit(read_stage, plan, indices[k + 1]) if k + 1 < len(indices) else None
            stage = predict_block(plan, i, segmenter, read)
            del read
            while pending and pending[0][0].done():  # keep the progress bar moving
                yield oldest()
            if "error" in stage:
                while pending:  # blocks are yielded in order: earlier ones first
                    yield oldest()
                yield stage
                continue
            if pool is None:
                workers = cell_workers or cell_workers_for(segmenter, device, stage["rgb"].shape[:2])
                on_cpu = not uses_gpu(segmenter, device)
                pool = ThreadPoolExecutor(workers, thread_name_prefix="her2kit-cells",
                                          initializer=_lowest_priority)
                # on a CPU one more block waits for cell finding (see above)
                in_flight = workers + 1 if on_cpu else workers
            # a slow block must not idle the other cell threads: wait for any
            # block to finish, not the oldest (blocks are still yielded in order)
            while _busy(pending) >= in_flight or len(pending) >= 4 * in_flight:
                if _busy(pending) < in_flight:
                    yield oldest()
                    continue
                wait([f for f, _ in pending if not f.done()], return_when=FIRST_COMPLETED)
                while pending and pending[0][0].done():
                    yield oldest()
            pending.append((pool.submit(_finish_then, plan, stage, after), stage))
            del stage
        tail = _run_queued_now(pending, plan, after)
        while pending:
            yield oldest()
    finally:
        reader.shutdown(cancel_futures=True)
        for f, _ in pending:  # the consumer stopped early: let started blocks finish
            if not f.cancelled():
                f.result()
        for p in (pool, tail):
            if p is not None:
                p.shutdown()
        restore()


def _busy(pending: Any) -> int:
    """How many of the pending blocks are queued or having their cells found
    (the finished ones drop their pixels: only their summaries wait to be yielded)."""
    busy = 0
    for n, (f, stage) in enumerate(pending):
        if not f.done():
            busy += 1
        elif stage is not None:
            pending[n] = (f, None)
    return busy


def _run_queued_now(pending: Any, plan: dict, after: Any) -> Any:
    """Once the network is done, the blocks still queued for the busy cell
    thread(s) start in threads of their own, at normal priority: the cores
    the network leaves would otherwise idle while they wait (on a CPU one
    block waits behind the one being finished). Returns the extra pool (or None)."""
    from concurrent.futures import ThreadPoolExecutor

    queued = [n for n, (f, _) in enumerate(pending) if f.cancel()]
    if not queued:
        return None
    tail = ThreadPoolExecutor(len(queued), thread_name_prefix="her2kit-cells-tail")
    for n in queued:
        stage = pending[n][1]
        pending[n] = (tail.submit(_finish_then, plan, stage, after), stage)
    return tail


def _lowest_priority() -> None:
    """Give the calling thread the lowest CPU priority (nice 19; Linux, where
    a thread has its own nice value; elsewhere nothing changes)."""
    import os
    import sys
    import threading

    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            pass


def _finish_then(plan: dict, stage: dict, after: Any) -> dict:
    r = finish_block(plan, stage)
    if after is not None and "error" not in r:
        after(r)
    return r


def cell_workers_for(segmenter: Any, device: str | None, shape: tuple[int, int]) -> int:
    """How many blocks find their cells at once beside the network (see :func:`iter_blocks`).

    CPU: 1. GPU: every core but the one feeding the GPU (of this worker's
    share of the cores, in a local cluster's worker), as long as that many
    blocks in flight (about 130 bytes per pixel of block + halo each: the
    block, its probabilities and cell finding's working arrays, measured on
    2048^2 blocks) fit in half of the memory available now.
    """
    import os

    if not uses_gpu(segmenter, device):
        return 1
    share = os.environ.get("HER2KIT_TORCH_THREADS")  # set for local cluster workers
    cores = max(1, (int(share) if share and share.isdigit() else (os.cpu_count() or 2)) - 1)
    per_block = 130 * shape[0] * shape[1]
    try:
        import psutil

        available = psutil.virtual_memory().available
    except ImportError:  # psutil comes with distributed; without it, stay modest
        available = 8 * 2**30
    return max(1, min(cores, int(available * 0.5 // per_block)))


def _spare_a_core(segmenter: Any, device: str | None) -> Any:
    """On a CPU, give torch one thread less than the cores while cell finding runs
    beside it (returns the function that restores torch's thread count), unless
    torch's OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE``, which
    ``her2kit score``/``segment`` set for in-process runs): then they yield the
    core to cell finding whenever they wait, and torch keeps all its threads.

    Measured on a quiet 2-core machine (16 blocks of 512 px, shipped Her2Net):
    overlapped with torch at 1 thread 6.1-6.2 s; at 2 threads spinning
    6.2-6.3 s (three busy threads on two cores); at 2 threads passive 5.13 s.
    """
    import os
    import sys

    torch = sys.modules.get("torch")
    if torch is None or uses_gpu(segmenter, device):
        return lambda: None
    if os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE":
        return lambda: None
    n = torch.get_num_threads()
    if n < 2 or n < (os.cpu_count() or 1):
        return lambda: None
    torch.set_num_threads(n - 1)
    return lambda: torch.set_num_threads(n)


def process_blocks(plan: dict, indices: list[int], segmenter: Any, overlap: bool = True) -> list[dict]:
    """A task of several consecutive blocks run by :func:`iter_blocks` (cluster workers).

    Stops at the first failed block (its error dict is the last item).
    """
    out = []
    for r in iter_blocks(plan, indices, segmenter, overlap):
        out.append(r)
        if "error" in r:
            break
    return out


def _process(plan: dict, stage: dict) -> dict:
    grid, block, timings, t0 = stage["grid"], stage["block"], stage["timings"], stage["t0"]
    rgb, probs = stage.pop("rgb"), stage.pop("probs")
    t = time.perf_counter()
    res = find_block_cells(rgb, probs, plan)
    del probs
    timings["cells"] = time.perf_counter() - t
    t = time.perf_counter()

    ry, rx, rh, rw = grid.extent(block)
    mh, mw = rgb.shape[:2]
    cols = table_columns(res.table)
    n = len(cols["id"]) if "id" in cols else 0
    local_ids = cols["id"].astype(np.int64) if n else np.zeros(0, np.int64)
    # centroids: segmenter pixels of block + halo -> level-0 pixels of the slide
    fy, fx = rh / mh, rw / mw
    y0 = ry + (cols["y"].astype(np.float64) + 0.5) * fy - 0.5 if n else np.zeros(0)
    x0 = rx + (cols["x"].astype(np.float64) + 0.5) * fx - 0.5 if n else np.zeros(0)
    # Ownership goes by the nucleus centroid, not the cell's: a nucleus is
    # small and segmented the same by both blocks that see it, whereas a large
    # cell territory cut by one block's halo edge can move its centroid across
    # the border and be claimed twice (or by neither).
    ny, nx = _nucleus_centroids(np.asarray(res.nucleus_labels), local_ids)
    ny = np.where(np.isnan(ny), cols["y"], ny) if n else ny
    nx = np.where(np.isnan(nx), cols["x"], nx) if n else nx
    oy = ry + (ny + 0.5) * fy - 0.5
    ox = rx + (nx + 0.5) * fx - 0.5
    owned = ((oy >= block.y) & (oy < block.y + block.h)
             & (ox >= block.x) & (ox < block.x + block.w))
    # the ROI keeps the cells whose centroid as written (cells.csv, pixel centres
    # at +0.5 in the ROI's corner coordinates) lies inside, as on the image path
    owned &= _inside_roi(x0 + 0.5, y0 + 0.5, plan.get("roi"))
    order = np.flatnonzero(owned)
    order = order[np.argsort(local_ids[order], kind="stable")]
    stride = plan["id_stride"]
    if len(order) >= stride:
        raise RuntimeError(f"{len(order)} cells in one block exceed the id stride {stride}")
    gids = (block.index * stride + 1 + np.arange(len(order))).astype(np.uint32)

    labels = np.asarray(res.cell_labels)
    lut = np.zeros(int(labels.max(initial=0)) + 1 if labels.size else 1, np.uint32)
    valid = local_ids[order] < len(lut)
    lut[local_ids[order][valid]] = gids[valid]
    cells_full = _upsample(lut[labels], (rh, rw))
    semantic_full = _upsample(np.asarray(res.semantic, np.uint8), (rh, rw))
    nuclei = np.asarray(res.nucleus_labels) if plan.get("features") else None
    del res
    inner = (slice(block.y - ry, block.y - ry + block.h), slice(block.x - rx, block.x - rx + block.w))
    labelstore.write_region(plan["labels_path"], block.y, block.x,
                            semantic_full[inner], cells_full[inner])
    # spill: this block's cells outside its own region, inside the slide
    cells_full[inner] = 0
    sy, sx = np.nonzero(cells_full)
    gy, gx = sy + ry, sx + rx
    ok = (gy >= 0) & (gy < grid.shape[0]) & (gx >= 0) & (gx < grid.shape[1])
    spill = np.stack([gy[ok], gx[ok], cells_full[sy[ok], sx[ok]].astype(np.int64)], axis=1)
    timings["write"] = time.perf_counter() - t

    out_cols = {k: v[order] for k, v in cols.items()}
    out_cols["id"] = gids
    out_cols["y"] = y0[order]
    out_cols["x"] = x0[order]
    ledger = Ledger(plan["work_dir"])
    if nuclei is not None:  # a score run: its cells.geojson and cells.csv text, here
        from her2kit.scoring.exports import cell_feature_lines, ring_texts
        from her2kit.wsi.cellrows import write_block_rows
        from her2kit.wsi.features import write_block_features

        # the rings' JSON text straight from the tracer (rows in out_cols' order)
        cell_rings = ring_texts(labels, local_ids[order], scale=(fy, fx), offset=(ry, rx))
        nucleus_rings = ring_texts(nuclei, local_ids[order], scale=(fy, fx), offset=(ry, rx))
        write_block_features(ledger.features_path(block.index),
                             cell_feature_lines(out_cols, cell_rings, nucleus_rings))
        write_block_rows(ledger.rows_path(block.index), out_cols)
    del labels, nuclei
    timings["total"] = time.perf_counter() - t0
    meta = {"index": block.index, "cells": int(len(order)), "timings": timings,
            "model_pixels": int(mh * mw)}
    ledger.save_block(block.index, out_cols, spill, meta)
    return meta


def seam_block(plan: dict, index: int, sources: list[int]) -> dict:
    """Paste neighbours' spill into block ``index``'s region of labels/cells.

    Only pixels still 0 there are filled (the block's own cells win), so the
    step is idempotent.
    """
    try:
        grid = grid_of(plan)
        block = grid.block(index)
        ledger = Ledger(plan["work_dir"])
        parts = []
        for s in sources:
            spill = ledger.load_spill(s)
            m = ((spill[:, 0] >= block.y) & (spill[:, 0] < block.y + block.h)
                 & (spill[:, 1] >= block.x) & (spill[:, 1] < block.x + block.w))
            if m.any():
                parts.append(spill[m])
        if parts:
            p = np.concatenate(parts)
            y0, x0 = int(p[:, 0].min()), int(p[:, 1].min())
            y1, x1 = int(p[:, 0].max()) + 1, int(p[:, 1].max()) + 1
            arr = labelstore.open_level(plan["labels_path"], "cells")
            region = arr[y0:y1, x0:x1]
            ly, lx = p[:, 0] - y0, p[:, 1] - x0
            free = region[ly, lx] == 0
            region[ly[free], lx[free]] = p[free, 2].astype(np.uint32)
            arr[y0:y1, x0:x1] = region
        ledger.mark(f"seam-{index:06d}")
        return {"index": index, "pixels": int(sum(len(q) for q in parts))}
    except Exception as exc:
        return {"index": index, "error": f"stitching block {index} failed: {_one_line(exc)}",
                "input": False}


def pyramid_region(plan: dict, level: int, y: int, x: int, h: int, w: int) -> dict:
    """One region of one coarser label level (see :func:`labelstore.downsample_region`)."""
    try:
        labelstore.downsample_region(plan["labels_path"], level, y, x, h, w)
        return {"level": level}
    except Exception as exc:
        return {"error": f"label pyramid level {level} failed: {_one_line(exc)}", "input": False}
