"""Whole-slide pipeline benchmarks; prints a table and writes JSON.

    python benchmarks/bench_wsi.py --out benchmarks/wsi.json [--quick]
        [--sections hed,memory,throughput,tissue,workers,cells] [--device cuda]

Sections:
  hed         H/DAB colour deconvolution (HedDeconvolver) vs skimage.color.rgb2hed
              on the same 4096^2 image: rate in Mpx/s and the ratio.
  memory      peak RSS of `run_slide` (in-process, workers=1) on a small and a
              large all-tissue slide, each in a fresh process; ratio large/small.
  throughput  the model alone on the pipeline's own block+halo tiles (one
              network pass per tile: normalise, forward, softmax, to numpy;
              for blocks larger than one batch the pipeline's own tiling of
              the block is the reference, and one pass per block is recorded
              beside it (ratio_vs_one_pass: against the faster of the two);
              for a her2kit Segmenter also its default 512/128 sliding window,
              for the record) vs the whole pipeline (`segment` by default,
              `score` with --throughput-job; a fresh process), both with the
              same torch threads (--threads), allocator settings and warm-up;
              the pipeline runs without and with cell finding overlapped
              (--overlap); prints the blocks' predict / find_cells / io sums.
              --device cuda predicts on the GPU (model alone and pipeline).
              --repeat N measures model alone and pipeline N times in turn,
              then the model alone once more, and records each turn's ratios,
              their median, and the ratios against the mean of the model-alone
              runs before and after each turn ("bracketed", for drift).
  tissue      time of a slide with 30 % tissue vs the same slide all tissue.
  workers     pipeline time with 2 local worker processes vs 1.
  cells       find_cells (CPU-s, best of 3) on one 2048^2 block and nine 640^2
              tiles, with her2kit's native kernels vs the scipy/scikit-image
              paths they replace (same cells), each in a fresh process with
              the allocator settings of in-process runs; and the native
              kernels with glibc's default allocator, for the record.

Slides are made by tiling one rendered 1024^2 synthetic patch (her2kit.synth)
over the tissue area and glass elsewhere, written as OME-Zarr with a pyramid.
The segmenter is StainSegmenter (per-pixel colour deconvolution) unless
--model names a model plugin or checkpoint; cell finding is the real
find_cells unless --cells quick (a cheap labeller, for slides too big to run
find_cells on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GLASS = np.array([238, 242, 236], np.uint8)


# --- a cheap cell finder (--cells quick) ---------------------------------------------


def quick_cells(rgb, probs, mpp, params=None):
    """Nuclei = connected nucleus pixels; cells = nuclei grown by 4 um. Same
    outputs as find_cells (table, labels, semantic) at a fraction of the cost."""
    from scipy import ndimage as ndi
    from skimage.segmentation import expand_labels

    from her2kit.scoring.cells import CellResult

    nuclei, n = ndi.label(probs[2] > 0.5)
    nuclei = nuclei.astype(np.uint32)
    cells = expand_labels(nuclei, distance=4.0 / mpp).astype(np.uint32)
    ids = np.arange(1, n + 1)
    flat = cells.ravel().astype(np.int64)
    w = cells.shape[1]
    idx = np.arange(flat.size, dtype=np.int64)
    count = np.maximum(np.bincount(flat, minlength=n + 1)[1:], 1)
    y = np.bincount(flat, weights=(idx // w).astype(np.float64), minlength=n + 1)[1:] / count
    x = np.bincount(flat, weights=(idx % w).astype(np.float64), minlength=n + 1)[1:] / count
    mem = np.bincount(flat, weights=probs[1].ravel(), minlength=n + 1)[1:] / count
    table = {"id": ids, "y": y, "x": x, "category": np.clip((mem * 8).astype(np.int64), 0, 3),
             "tumour": np.ones(n, bool), "area_um2": count * mpp * mpp}
    return CellResult(table, cells, nuclei, np.argmax(probs, axis=0).astype(np.uint8), mpp)


# --- slides ----------------------------------------------------------------------------


def make_slide(path: Path, size: int, tissue: float = 1.0, seed: int = 7) -> Path:
    """An OME-Zarr slide of size^2 px at 0.5 um/px: a tissue band covering
    ``tissue`` of the width (left), glass elsewhere. Written chunk by chunk."""
    from her2kit import omezarr
    from her2kit.synth.images import make_patch

    if path.exists():
        return path
    patch = make_patch(seed, 1024, "2+").region.rgb
    chunk = 1024
    band = int(round(size * tissue))
    tmp = path.with_name(path.name + ".part")
    root = omezarr.create_multiscale_image(str(tmp), (size, size), 0.5, chunk=chunk)
    arr = root["0"]
    glass = np.empty((chunk, chunk, 3), np.uint8)
    glass[:] = GLASS
    for y in range(0, size, chunk):
        for x in range(0, size, chunk):
            h, w = min(chunk, size - y), min(chunk, size - x)
            block = glass[:h, :w].copy()
            if x < band:
                tw = min(w, band - x)
                block[:, :tw] = patch[:h, :tw]
            omezarr.write_region(arr, y, x, block)
    omezarr.build_pyramid(root)
    os.replace(tmp, path)
    return path


def make_segmenter(model: str | None, device: str = "cpu"):
    if model is None:
        from her2kit.wsi.stain_segmenter import StainSegmenter

        return StainSegmenter()
    if model == "her2net-untrained":
        import torch

        from her2kit.inference import Segmenter
        from her2kit.models.her2net import Her2Net

        torch.manual_seed(0)
        return Segmenter(Her2Net(width=8).eval().to(device), {"mpp": 0.5}, "her2net-untrained", device)
    from her2kit.inference import load_segmenter

    return load_segmenter(model, device=device)


def finder(cells: str) -> str | None:
    """The pipeline's cell finder: real (None), a cheap stand-in ("quick"), or none at
    all ("classes": the network's classes alone, as `segment --classes-only`)."""
    return {"quick": "bench_wsi:quick_cells", "classes": "her2kit.scoring.cells:classes_only"}.get(cells)


# --- sections ---------------------------------------------------------------------------


def bench_hed(quick: bool) -> dict:
    """HED in fresh processes: with the default BLAS threads and with one.

    The deconvolution's (N, 3) x (3, 3) product goes to BLAS; on a busy
    2-core machine multi-threaded OpenBLAS spends more time spin-waiting
    than computing, so both figures are recorded.
    """
    out = {}
    for label, env in (("default_blas_threads", {}), ("one_blas_thread", {"OPENBLAS_NUM_THREADS": "1"})):
        cmd = [sys.executable, str(Path(__file__).resolve()), "_hed", json.dumps(quick)]
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-2000:])
        out[label] = json.loads(p.stdout.strip().splitlines()[-1])
    best = out["one_blas_thread"]
    return {"name": "hed_deconvolution", **{k: best[k] for k in ("shape", "speedup", "speedup_cpu",
                                                              "target_speedup")}, "runs": out}


def hed_once(quick: bool) -> dict:
    from skimage.color import rgb2hed

    from her2kit.preprocess.stain import HedDeconvolver
    from her2kit.synth.images import make_patch

    side = 2048 if quick else 4096
    patch = make_patch(3, 1024, "2+").region.rgb
    rgb = np.ascontiguousarray(np.tile(patch, (side // 1024, side // 1024, 1)))
    hed = HedDeconvolver()
    hed(rgb[:64, :64])

    def best(fn, n):
        wall, cpu = [], []
        for _ in range(n):
            t, c = time.perf_counter(), time.process_time()
            fn(rgb)
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        return min(wall), min(cpu)

    ours, ours_cpu = best(hed, 5)
    ref, ref_cpu = best(rgb2hed, 3)
    mpx = rgb.shape[0] * rgb.shape[1] / 1e6
    return {"name": "hed_deconvolution", "shape": list(rgb.shape), "her2kit_s": round(ours, 3),
            "skimage_s": round(ref, 3), "her2kit_mpx_s": round(mpx / ours, 1),
            "skimage_mpx_s": round(mpx / ref, 1), "speedup": round(ref / ours, 2),
            "her2kit_cpu_s": round(ours_cpu, 3), "skimage_cpu_s": round(ref_cpu, 3),
            "speedup_cpu": round(ref_cpu / ours_cpu, 2), "target_speedup": 3.0,
            "load_average": os.getloadavg()[0]}


def cells_once(inputs: str, native: bool, reuse: bool = True) -> dict:
    """find_cells on one 2048^2 block and on nine 640^2 tiles of it, best of 3 (CPU-s),
    with her2kit's native kernels or (``native=False``) the scipy/scikit-image paths;
    ``reuse``: with the allocator settings of in-process runs (as the CLI sets them)."""
    if reuse:
        from her2kit.wsi.cluster import reuse_freed_memory

        reuse_freed_memory()
    if not native:
        sys.modules["her2kit._C"] = None  # every native path falls back
    from her2kit.scoring.cells import find_cells

    d = np.load(inputs)
    rgb, probs = d["rgb"], d["probs"]
    tiles = [(np.ascontiguousarray(rgb[y:y + 640, x:x + 640]),
              np.ascontiguousarray(probs[:, y:y + 640, x:x + 640]))
             for y in (0, 640, 1280) for x in (0, 640, 1280)]
    find_cells(*tiles[0], 0.5)
    best_tiles = best_block = float("inf")
    for _ in range(3):
        t = time.process_time()
        for r, p in tiles:
            find_cells(r, p, 0.5)
        best_tiles = min(best_tiles, time.process_time() - t)
        t = time.process_time()
        n = len(find_cells(rgb, probs, 0.5))
        best_block = min(best_block, time.process_time() - t)
    return {"tiles_640x9_cpu_s": round(best_tiles, 3), "block_2048_cpu_s": round(best_block, 3),
            "cells_block": n}


def bench_cells(work: Path, model: str | None) -> dict:
    """Cell finding with and without the native kernels (watershed, distance
    transform, reconstruction), each in a fresh process, on the shipped
    Her2Net's probabilities of a rendered 2048^2 synthetic 2+ patch."""
    from her2kit.synth.images import make_patch

    inputs = work / "cells_inputs.npz"
    if not inputs.exists():
        rgb = make_patch(3, 2048, "2+").region.rgb
        probs = make_segmenter(model or "her2net").predict(rgb)
        np.savez(inputs, rgb=rgb, probs=np.asarray(probs, np.float32))
    runs = {}
    for name, native, reuse in (("scipy_skimage", False, True), ("native", True, True),
                                ("native_default_allocator", True, False)):
        cmd = [sys.executable, str(Path(__file__).resolve()), "_cells", str(inputs),
               json.dumps(native), json.dumps(reuse)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-2000:])
        runs[name] = json.loads(p.stdout.strip().splitlines()[-1])
    a, b, c = runs["scipy_skimage"], runs["native"], runs["native_default_allocator"]
    return {"name": "find_cells_native", "runs": runs, "load_average": os.getloadavg()[0],
            "speedup_block_2048": round(a["block_2048_cpu_s"] / b["block_2048_cpu_s"], 2),
            "speedup_tiles_640": round(a["tiles_640x9_cpu_s"] / b["tiles_640x9_cpu_s"], 2),
            "allocator_speedup_block_2048": round(c["block_2048_cpu_s"] / b["block_2048_cpu_s"], 2),
            "same_cell_count": a["cells_block"] == b["cells_block"] == c["cells_block"]}


class RssSampler:
    """Peak resident memory of this process while running, sampled every 20 ms
    from /proc (ru_maxrss cannot be reset, and imports set it before the run)."""

    def __init__(self):
        import threading

        self.peak = self.now()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def now() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _loop(self):
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, self.now())

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.now())


def set_threads(threads: int | None) -> int | None:
    """torch's intra-op threads (None: leave torch's default); returns the count in use."""
    if threads is None and "torch" not in sys.modules:
        return None
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def warm_up(seg) -> None:
    """One small prediction (first-call set-up of the network's kernels), as a running
    worker would have done before; the same for the model alone and the pipeline."""
    seg.predict(np.full((64, 64, 3), 200, np.uint8))


def one_run(slide: str, out: str, block: int, halo: int, workers: int, model: str | None,
            cells: str, segment_only: bool, tissue: bool = True, threads: int | None = None,
            overlap: bool | None = None, warm: bool = False, device: str = "cpu") -> dict:
    """Run the pipeline once in this process; report its time and peak RSS (MiB)."""
    if workers <= 1:  # as `her2kit score` / `segment` set them for in-process runs
        from her2kit.cli import _passive_openmp
        from her2kit.wsi.cluster import reuse_freed_memory

        _passive_openmp()
        reuse_freed_memory()
    sys.path.insert(0, str(HERE))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    import her2kit.scoring.cells  # noqa: F401  (imports before the baseline)
    import her2kit.wsi.pipeline  # noqa: F401
    from her2kit.wsi.pipeline import run_slide

    seg = make_segmenter(model, device)
    threads = set_threads(threads)
    if warm:
        warm_up(seg)
    rss0 = RssSampler.now()
    t = time.perf_counter()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    with RssSampler() as sampler:
        s = run_slide(slide, out, seg, block=block, halo=halo, workers=workers, force=True,
                      segment_only=segment_only, progress=False, cell_finder=finder(cells),
                      tissue=tissue, overlap=overlap)
    wall = time.perf_counter() - t
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_average": os.getloadavg()[0],
            "peak_rss_mb": round(sampler.peak, 1),
            "rss_before_mb": round(rss0, 1),
            "maxrss_process_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "blocks": s["wsi"]["blocks_tissue"],
            "blocks_total": s["wsi"]["blocks_total"], "timings_s": s["run"]["timings_s"],
            "tissue_fraction": s["wsi"]["tissue_fraction"], "torch_threads": threads,
            "overlap": s["run"].get("overlap"), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def run_child(**kw) -> dict:
    """:func:`one_run` in a fresh Python process (clean peak-memory figures)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "_one", json.dumps(kw)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"child failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench_memory(work: Path, sizes: tuple[int, int], block: int, halo: int, model, cells) -> dict:
    runs = {}
    for size in sizes:
        slide = make_slide(work / f"full{size}.zarr", size)
        runs[size] = run_child(slide=str(slide), out=str(work / f"mem{size}"), block=block, halo=halo,
                               workers=1, model=model, cells=cells, segment_only=True)
    small, large = runs[sizes[0]], runs[sizes[1]]
    return {"name": "peak_memory", "sizes": list(sizes), "block": block, "halo": halo,
            "cells": cells, "model": model or "stain-threshold", "runs": {str(k): v for k, v in runs.items()},
            "ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
            "growth_ratio": round((large["peak_rss_mb"] - large["rss_before_mb"])
                                  / max(small["peak_rss_mb"] - small["rss_before_mb"], 1.0), 3),
            "target_ratio": 1.3}


def network_forward(seg):
    """The network's own work on one tile: one pass over the whole tile
    (normalise, forward, softmax, to numpy) for a her2kit Segmenter; the
    segmenter's ``predict`` for anything else (e.g. StainSegmenter)."""
    if not (hasattr(seg, "model") and hasattr(seg, "normalisation")):
        return seg.predict
    import torch

    from her2kit.inference import normalise

    def forward(rgb):
        with torch.inference_mode():
            x = torch.from_numpy(rgb[None]).permute(0, 3, 1, 2).to(seg.device)
            out = seg.model(normalise(x, seg.normalisation))["pixel"]
            return torch.softmax(out, dim=1)[0].float().cpu().numpy()

    return forward


def _timed(fn, tiles) -> tuple[float, float]:
    t, c = time.perf_counter(), time.process_time()
    for tile in tiles:
        fn(tile)
    return time.perf_counter() - t, time.process_time() - c


def bench_throughput(work: Path, size: int, block: int, halo: int, model, cells,
                     threads: int | None = None, overlap: str = "both", device: str = "cpu",
                     job: str = "segment", extras: bool = True, pipelines: bool = True) -> dict:
    """Model alone on the pipeline's own block + halo tiles vs the whole pipeline.

    The model alone runs in this process, the pipeline in a fresh one, both
    with the same torch threads and the same warm-up. ``overlap``: "off",
    "on" or "both" (one pipeline run each; the ratio is the better one).
    ``job``: "segment" (labels.zarr only, the headline ratio), "score" (all
    of score's outputs: cells.csv, cells.geojson, report) or "both".
    ``extras``: also time one pass per block and the segmenter's default
    sliding window, for the record (off in repeats). ``pipelines=False``:
    the model alone only (the closing bracket of repeats).
    """
    from her2kit.readers import open_slide
    from her2kit.wsi.blocks import make_grid
    from her2kit.wsi.worker import block_segmenter, read_block

    slide_path = make_slide(work / f"full{size}.zarr", size)
    seg = make_segmenter(model, device)
    threads = set_threads(threads)
    slide = open_slide(str(slide_path))
    grid = make_grid(slide.shape, seg.mpp / slide.mpp, block, halo)
    plan = {"shape": list(slide.shape), "block0": grid.block0, "halo0": grid.halo0,
            "scale": grid.scale, "level": 0, "level_downsample": 1.0}
    tiles = [read_block(slide, plan, b) for b in grid.blocks()]
    warm_up(seg)
    blocked = block_segmenter(seg, tiles[0].shape[:2]) if hasattr(seg, "tile") else seg
    if extras or blocked is seg:
        model_s, model_cpu = _timed(network_forward(seg), tiles)
    else:
        model_s = model_cpu = float("nan")
    one_pass_s, one_pass_cpu = model_s, model_cpu
    if blocked is not seg:
        # a block larger than one batch: the pipeline's network sees the fewest
        # tiles of up to 1024^2 (blended): those are "the same tiles" the
        # reference runs on; one pass per block is recorded beside it (faster
        # alone, but 2.5x the memory, and hardly faster inside the pipeline)
        tiled_s, tiled_cpu = _timed(blocked.predict, tiles)
        model_s, model_cpu = tiled_s, tiled_cpu
    rec = {"name": "throughput", "size": size, "block": block, "halo": halo, "blocks": len(tiles),
           "model": getattr(seg, "name", "?"), "cells": cells, "torch_threads": threads,
           "device": device,
           "load_average_start": os.getloadavg()[0]}
    tile_px = sum(t.shape[0] * t.shape[1] for t in tiles)
    if hasattr(seg, "tile") and extras:  # the segmenter's default sliding window (what blocks used to get)
        sl_s, sl_cpu = _timed(seg.predict, tiles)
        rec.update({"segmenter_sliding_s": round(sl_s, 2), "segmenter_sliding_cpu_s": round(sl_cpu, 2),
                    "segmenter_tile": seg.tile, "segmenter_overlap": seg.overlap})
    if one_pass_s == one_pass_s:  # (not measured in repeats)
        rec.update({"model_one_pass_s": round(one_pass_s, 2), "model_one_pass_cpu_s": round(one_pass_cpu, 2)})
    if blocked is not seg:
        rec.update({"model_block_tiles_s": round(tiled_s, 2), "model_block_tiles_cpu_s": round(tiled_cpu, 2),
                    "block_tile": blocked.tile})
    rec.update({"model_s": round(model_s, 2), "model_cpu_s": round(model_cpu, 2),
                "model_mpx_s": round(tile_px / model_s / 1e6, 3), "tile_mpx": round(tile_px / 1e6, 3)})
    if not pipelines:
        print(f"model alone: {model_s:.2f} s wall, {model_cpu:.2f} CPU-s", flush=True)
        return rec
    modes = {"off": [False], "on": [True], "both": [False, True]}[overlap]
    jobs = {"segment": ["segment"], "score": ["score"], "both": ["segment", "score"]}[job]
    runs = {}
    for jb in jobs:
        for ov in modes:
            run = run_child(slide=str(slide_path), out=str(work / "thr"), block=block, halo=halo,
                            workers=1, model=model, cells=cells, segment_only=jb == "segment",
                            threads=threads, overlap=ov, warm=True, device=device)
            ts = run["timings_s"]
            run["breakdown_s"] = {"predict": ts.get("block_predict_sum"), "find_cells": ts.get("block_cells_sum"),
                                  "io": round(ts.get("block_read_sum", 0) + ts.get("block_write_sum", 0), 3),
                                  "blocks_wall": ts.get("blocks"),
                                  "other": round(run["wall_s"] - ts.get("blocks", 0), 3)}
            run["mpx_s"] = round(tile_px / run["wall_s"] / 1e6, 3)
            run["ratio"] = round(model_s / run["wall_s"], 3)
            run["ratio_cpu"] = round(model_cpu / run["cpu_s"], 3)
            run["ratio_vs_one_pass"] = (round(min(model_s, one_pass_s) / run["wall_s"], 3)
                                        if one_pass_s == one_pass_s else None)
            run["predict_vs_model"] = round(ts.get("block_predict_sum", 0) / model_s, 3)
            run["job"] = jb
            runs[("score_" if jb == "score" else "") + ("overlap" if ov else "sequential")] = run
    score_runs = [r for r in runs.values() if r["job"] == "score"]
    if score_runs:
        best_score = min(score_runs, key=lambda r: r["wall_s"])
        rec.update({"score_s": best_score["wall_s"], "ratio_score": best_score["ratio"],
                    "ratio_score_cpu": best_score["ratio_cpu"],
                    "ratio_score_vs_one_pass": best_score["ratio_vs_one_pass"]})
    runs_for_headline = {k: r for k, r in runs.items() if r["job"] == "segment"} or runs
    best = min(runs_for_headline.values(), key=lambda r: r["wall_s"])
    rec.update({"runs": runs, "pipeline_s": best["wall_s"], "pipeline_cpu_s": best["cpu_s"],
                "pipeline_mpx_s": best["mpx_s"], "pipeline_overlap": best["overlap"],
                "ratio": best["ratio"], "ratio_cpu": best["ratio_cpu"],
                "ratio_vs_one_pass": best["ratio_vs_one_pass"], "target_ratio": 0.8})
    if "sequential" in runs and "overlap" in runs:
        rec["overlap_speedup"] = round(runs["sequential"]["wall_s"] / runs["overlap"]["wall_s"], 3)
    if blocked is not seg:
        print(f"model alone: one pass per tile {one_pass_s:.2f} s, the pipeline's tiling "
              f"({blocked.tile} px) {tiled_s:.2f} s", flush=True)
    print(f"model alone: {model_s:.2f} s wall, {model_cpu:.2f} CPU-s on {len(tiles)} tiles "
          f"({tile_px / 1e6:.2f} Mpx, torch threads {threads})", flush=True)
    for k, r in runs.items():
        b = r["breakdown_s"]
        print(f"pipeline {k}: {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} CPU-s; blocks: predict "
              f"{b['predict']:.2f} s, find_cells {b['find_cells']:.2f} s, io {b['io']:.2f} s, "
              f"block loop {b['blocks_wall']:.2f} s wall, outside blocks {b['other']:.2f} s; "
              f"ratio {r['ratio']} wall, {r['ratio_cpu']} CPU ({r['ratio_vs_one_pass']} against the "
              f"faster of one pass per block and the same tiles)", flush=True)
    return rec


def repeated(turns: list[dict], closing: dict | None = None) -> dict:
    """One record of several throughput turns: each turn's ratios, and their medians.

    With ``closing`` (the model alone once more after the last turn), each
    turn's pipelines are also compared with the mean of the model-alone runs
    before and after them ("bracketed"): the machine's speed drifts by ~10 %
    within minutes, and the pipelines run 1-2 minutes after their turn's
    model-alone run.
    """
    import statistics

    out = {"name": "throughput", "turns": turns, "repeat": len(turns), "target_ratio": 0.8}
    if closing is not None:
        after = [t["model_s"] for t in turns[1:]] + [closing["model_s"]]
        out["model_closing_s"] = closing["model_s"]
        for t, later in zip(turns, after, strict=True):
            t["model_bracket_s"] = round((t["model_s"] + later) / 2, 2)
            for key, run in (("ratio_bracketed", "overlap"), ("ratio_score_bracketed", "score_overlap")):
                if run in t.get("runs", {}):
                    t[key] = round(t["model_bracket_s"] / t["runs"][run]["wall_s"], 3)
    for key in ("ratio", "ratio_cpu", "ratio_score", "ratio_score_cpu", "ratio_bracketed",
                "ratio_score_bracketed"):
        values = [t[key] for t in turns if key in t]
        if values:
            out[f"{key}_turns"] = values
            out[key] = round(statistics.median(values), 3)
            out[f"{key}_min"] = min(values)
    return out


def bench_tissue(work: Path, size: int, block: int, halo: int, model, cells) -> dict:
    part = make_slide(work / f"tissue30_{size}.zarr", size, tissue=0.3)
    full = make_slide(work / f"full{size}.zarr", size)
    a = run_child(slide=str(part), out=str(work / "t30"), block=block, halo=halo, workers=1,
                  model=model, cells=cells, segment_only=True)
    b = run_child(slide=str(full), out=str(work / "t100"), block=block, halo=halo, workers=1,
                  model=model, cells=cells, segment_only=True)
    return {"name": "tissue_30_vs_100", "size": size, "block": block, "cells": cells,
            "tissue30": a, "tissue100": b, "ratio": round(a["wall_s"] / b["wall_s"], 3),
            "ratio_cpu": round(a["cpu_s"] / b["cpu_s"], 3), "target_ratio": 0.4}


def bench_workers(work: Path, size: int, block: int, halo: int, model, cells) -> dict:
    full = make_slide(work / f"full{size}.zarr", size)
    runs = {}
    for n in (1, 2):
        runs[n] = run_child(slide=str(full), out=str(work / f"w{n}"), block=block, halo=halo,
                            workers=n, model=model, cells=cells, segment_only=True)
    return {"name": "workers_2_vs_1", "size": size, "block": block, "cells": cells,
            "cpu_count": os.cpu_count(), "runs": {str(k): v for k, v in runs.items()},
            "speedup": round(runs[1]["wall_s"] / runs[2]["wall_s"], 3)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_hed":
        print(json.dumps(hed_once(json.loads(argv[1]))))
        return 0
    if argv and argv[0] == "_cells":
        print(json.dumps(cells_once(argv[1], json.loads(argv[2]), json.loads(argv[3]))))
        return 0
    if argv and argv[0] == "_one":
        print(json.dumps(one_run(**json.loads(argv[1]))))
        return 0
    from her2kit.wsi.cluster import reuse_freed_memory

    # before torch starts its threads, as `her2kit score` does: the model alone
    # (in this process) gets the allocator settings the pipeline runs with (it
    # gains from them too), not the pipeline's passive OpenMP waits (it loses 5-10 %)
    reuse_freed_memory()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file")
    p.add_argument("--quick", action="store_true", help="small sizes")
    p.add_argument("--sections", default="hed,memory,throughput,tissue,workers")
    p.add_argument("--model", default=None, help="model name/checkpoint, or her2net-untrained "
                   "(default: the StainSegmenter double)")
    p.add_argument("--throughput-model", default=None, help="model for the throughput section "
                   "(e.g. her2net-untrained: same cost as the trained net)")
    p.add_argument("--cells", choices=["real", "quick", "classes"], default="real",
                   help="cell finding: real, a cheap stand-in, or none (classes: `segment --classes-only`)")
    p.add_argument("--memory-cells", choices=["real", "quick"], default="quick")
    p.add_argument("--memory-sizes", default=None, help="SMALL,LARGE (default 10000,40000; quick 1024,4096)")
    p.add_argument("--memory-block", type=int, default=1024)
    p.add_argument("--size", type=int, default=None, help="slide side for tissue/workers")
    p.add_argument("--throughput-size", type=int, default=None)
    p.add_argument("--block", type=int, default=None)
    p.add_argument("--halo", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch threads for the model alone and "
                   "the pipeline in the throughput section (default: torch's own default)")
    p.add_argument("--overlap", choices=["off", "on", "both"], default="both",
                   help="throughput: pipeline runs without / with cell finding overlapped")
    p.add_argument("--device", default="cpu", help="torch device for the throughput section (e.g. cuda)")
    p.add_argument("--throughput-job", choices=["segment", "score", "both"], default="segment",
                   help="throughput: pipeline as `her2kit segment` (labels.zarr only; the headline "
                   "ratio), as `her2kit score` (all outputs), or both")
    p.add_argument("--repeat", type=int, default=1,
                   help="throughput: measure model alone and pipeline(s) this many times in turn "
                   "(ratios per turn, and their median: the machine's speed drifts between runs)")
    p.add_argument("--work", default=None, help="folder for slides and outputs (default: a temp dir)")
    args = p.parse_args(argv)
    size = args.size or (1024 if args.quick else 4096)
    block = args.block or (256 if args.quick else 512)
    sizes = tuple(int(v) for v in (args.memory_sizes or ("1024,4096" if args.quick else "10000,40000")).split(","))
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_wsi_"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for section in args.sections.split(","):
        t = time.perf_counter()
        if section == "hed":
            r = bench_hed(args.quick)
        elif section == "memory":
            r = bench_memory(work, sizes, args.memory_block, args.halo, args.model, args.memory_cells)
        elif section == "throughput":
            turns = [bench_throughput(work, args.throughput_size or size, block, args.halo,
                                      args.throughput_model or args.model, args.cells,
                                      args.threads, args.overlap, args.device, args.throughput_job,
                                      extras=i == 0)
                     for i in range(max(1, args.repeat))]
            closing = None
            if len(turns) > 1:  # the model alone once more: every turn is bracketed
                closing = bench_throughput(work, args.throughput_size or size, block, args.halo,
                                           args.throughput_model or args.model, args.cells,
                                           args.threads, args.overlap, args.device,
                                           args.throughput_job, extras=False, pipelines=False)
            r = turns[0] if len(turns) == 1 else repeated(turns, closing)
        elif section == "cells":
            r = bench_cells(work, args.model)
        elif section == "tissue":
            r = bench_tissue(work, size, block, args.halo, args.model, args.cells)
        elif section == "workers":
            r = bench_workers(work, size, block, args.halo, args.model, args.cells)
        else:
            raise SystemExit(f"unknown section {section}")
        r["bench_s"] = round(time.perf_counter() - t, 1)
        results.append(r)
        keys = [k for k in ("speedup", "speedup_cpu", "speedup_block_2048", "speedup_tiles_640",
                            "ratio", "ratio_cpu", "ratio_vs_one_pass", "ratio_score", "ratio_score_cpu",
                            "ratio_bracketed", "ratio_score_bracketed",
                            "allocator_speedup_block_2048", "growth_ratio",
                            "target_ratio", "target_speedup") if k in r]
        print(f"{r['name']}: " + ", ".join(f"{k} {r[k]}" for k in keys), flush=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
