"""What sets the pace of the whole-slide pipeline on a GPU; writes JSON.

    python benchmarks/gpu_diag.py --out gpu_diag.json [--sections topology,cells,variants,large]
        [--work DIR] [--device cuda]

On a GPU the network is fast and cell finding runs on the CPU threads
beside it (see her2kit.wsi.worker.iter_blocks). These sections measure why
that does not keep up:

  topology  lscpu: sockets, cores, threads per core (hyperthreads share a core).
  cells     find_cells on one real 2048^2 block (+ halo 64; probabilities
            from the shipped Her2Net) run by N threads at once and by N forked
            processes at once (N = 1, 2, 4, 8, 15), two calls each: blocks per
            second in all. Threads below processes = the GIL; both flat = the
            cores (or memory) are the limit.
  variants  the 8192^2 pipeline (`segment`, 16 blocks of 2048 + 64) with a
            change patched in, each in a fresh process: base; cell threads at
            nice 19 (the thread feeding the GPU never waits for a core); the
            GIL's switch interval at 0.2 ms (a thread wanting the GIL, such
            as the one feeding the GPU, waits at most that long); both; and
            7 cell threads. The model alone on the same tiles is the
            reference, as in bench_wsi.py's throughput section.
  large     the same on a 16384^2 slide (64 blocks; --large-variants).

Since stop 15 the cell threads run at nice 19 by default and a block's tiles
go through the network in one batch on a GPU: "base" is the code as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

VARIANTS = {
    "base": {},
    "nice": {"nice": True},
    "switch": {"switch_s": 0.0002},
    "nice_switch": {"nice": True, "switch_s": 0.0002},
    "threads7": {"cell_threads": 7},
}


def topology() -> dict:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    keep = ("Model name", "Socket(s)", "Core(s) per socket", "Thread(s) per core", "CPU(s)", "L3 cache",
            "NUMA node(s)")
    info = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())
            if k.strip() in keep}
    return {"name": "topology", "lscpu": info, "cpu_count": os.cpu_count()}


def block_inputs(work: Path, device: str) -> Path:
    """One real 2048^2 block + halo 64 and its Her2Net probabilities, saved to npz."""
    import bench_wsi

    from her2kit.readers import open_slide
    from her2kit.wsi.blocks import make_grid
    from her2kit.wsi.worker import block_segmenter, read_block

    path = work / "block.npz"
    if path.exists():
        return path
    slide_path = bench_wsi.make_slide(work / "full4096.zarr", 4096)
    seg = bench_wsi.make_segmenter("her2net", device)
    slide = open_slide(str(slide_path))
    grid = make_grid(slide.shape, seg.mpp / slide.mpp, 2048, 64)
    plan = {"shape": list(slide.shape), "block0": grid.block0, "halo0": grid.halo0,
            "scale": grid.scale, "level": 0, "level_downsample": 1.0}
    rgb = read_block(slide, plan, next(iter(grid.blocks())))
    probs = block_segmenter(seg, rgb.shape[:2]).predict(rgb)
    np.savez(path, rgb=rgb, probs=probs, mpp=seg.mpp)
    return path


_INPUTS: tuple = ()  # (rgb, probs, mpp) of the cells section; forked processes inherit it


def _find_cells_calls(calls: int) -> float:
    """Seconds per find_cells call on the cells section's block."""
    from her2kit.scoring.cells import find_cells

    t = time.perf_counter()
    for _ in range(calls):
        find_cells(*_INPUTS)
    return (time.perf_counter() - t) / calls


def _cells_child(inputs: str, n: int, calls: int, mode: str) -> dict:
    """n threads or n forked processes, each running find_cells ``calls`` times."""
    import multiprocessing as mp
    from concurrent.futures import ThreadPoolExecutor

    global _INPUTS
    d = np.load(inputs)
    _INPUTS = (d["rgb"], d["probs"], float(d["mpp"]))
    _find_cells_calls(1)  # imports and first-call set-up
    t = time.perf_counter()
    if mode == "threads":
        with ThreadPoolExecutor(n) as pool:
            per_call = list(pool.map(_find_cells_calls, [calls] * n))
    else:
        with mp.get_context("fork").Pool(n) as pool:
            per_call = pool.map(_find_cells_calls, [calls] * n)
    wall = time.perf_counter() - t
    return {"mode": mode, "n": n, "calls_each": calls, "wall_s": round(wall, 3),
            "blocks_per_s": round(n * calls / wall, 3), "per_call_s": round(float(np.mean(per_call)), 3)}


def bench_cells(work: Path, device: str, ns: list[int]) -> dict:
    inputs = block_inputs(work, device)
    runs = []
    for mode in ("threads", "processes"):
        for n in ns:
            r = child("_cells", {"inputs": str(inputs), "n": n, "calls": 2, "mode": mode})
            print(f"cells {mode} x{n}: {r['blocks_per_s']} blocks/s, {r['per_call_s']} s per call", flush=True)
            runs.append(r)
    solo = {r["mode"]: r["blocks_per_s"] for r in runs if r["n"] == 1}
    for r in runs:
        r["scaling"] = round(r["blocks_per_s"] / solo[r["mode"]], 2)
    return {"name": "cells_scaling", "block": 2048, "halo": 64, "runs": runs}


def _variant_child(run: dict, variant: dict) -> dict:
    """bench_wsi.one_run with ``variant``'s change patched into the pipeline."""
    import bench_wsi

    from her2kit.wsi import worker

    if variant.get("nice"):
        finish = worker._finish_then

        def nice_finish(plan, stage, after):
            worker._lowest_priority()
            return finish(plan, stage, after)

        worker._finish_then = nice_finish
    if variant.get("switch_s"):
        sys.setswitchinterval(variant["switch_s"])
    if variant.get("cell_threads"):
        worker.cell_workers_for = lambda *a, **k: variant["cell_threads"]
    return bench_wsi.one_run(**run)


def child(kind: str, kw: dict) -> dict:
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), kind, json.dumps(kw)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"child failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench_variants(work: Path, size: int, device: str, names: list[str]) -> dict:
    import bench_wsi

    ref = bench_wsi.bench_throughput(work, size, 2048, 64, "her2net", "real", device=device,
                                     extras=False, pipelines=False)
    slide = str(work / f"full{size}.zarr")
    runs = {}
    for name in names:
        run = {"slide": slide, "out": str(work / "thr"), "block": 2048, "halo": 64, "workers": 1,
               "model": "her2net", "cells": "real", "segment_only": True, "overlap": True,
               "warm": True, "device": device}
        r = child("_variant", {"run": run, "variant": VARIANTS[name]})
        ts = r["timings_s"]
        r["ratio"] = round(ref["model_s"] / r["wall_s"], 3)
        r["predict_vs_model"] = round(ts.get("block_predict_sum", 0) / ref["model_s"], 3)
        runs[name] = r
        print(f"{size} {name}: {r['wall_s']} s wall (model alone {ref['model_s']} s): ratio {r['ratio']}; "
              f"predict {ts.get('block_predict_sum')} s, cells {ts.get('block_cells_sum')} s summed, "
              f"block loop {ts.get('blocks')} s, open {ts.get('open')}, tissue {ts.get('tissue')}, "
              f"stitch {ts.get('stitch')}, pyramid {ts.get('pyramid')}", flush=True)
    return {"name": "variants", "size": size, "model_s": ref["model_s"], "model_mpx_s": ref["model_mpx_s"],
            "tile_mpx": ref["tile_mpx"], "runs": runs, "variants": {k: VARIANTS[k] for k in names}}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_cells":
        print(json.dumps(_cells_child(**json.loads(argv[1]))))
        return 0
    if argv and argv[0] == "_variant":
        print(json.dumps(_variant_child(**json.loads(argv[1]))))
        return 0
    from her2kit.wsi.cluster import reuse_freed_memory

    reuse_freed_memory()  # as bench_wsi.py: the model alone gets the pipeline's allocator settings
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--sections", default="topology,cells,variants,large")
    p.add_argument("--work", default="/tmp/gpu_diag")
    p.add_argument("--device", default="cuda")
    p.add_argument("--ns", default="1,2,4,8,15", help="cells: thread / process counts")
    p.add_argument("--size", type=int, default=8192, help="variants: slide side")
    p.add_argument("--large-size", type=int, default=16384)
    p.add_argument("--variants", default="base,nice,switch,nice_switch,threads7")
    p.add_argument("--large-variants", default="base,nice_switch")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for section in args.sections.split(","):
        t = time.perf_counter()
        try:
            if section == "topology":
                r = topology()
            elif section == "cells":
                r = bench_cells(work, args.device, [int(n) for n in args.ns.split(",")])
            elif section == "variants":
                r = bench_variants(work, args.size, args.device, args.variants.split(","))
            elif section == "large":
                r = bench_variants(work, args.large_size, args.device, args.large_variants.split(","))
            else:
                raise SystemExit(f"unknown section {section}")
        except Exception as exc:  # keep what the other sections measured
            r = {"name": section, "error": f"{type(exc).__name__}: {exc}"[-3000:]}
            print(f"{section} failed: {r['error']}", flush=True)
        r["bench_s"] = round(time.perf_counter() - t, 1)
        results.append(r)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
