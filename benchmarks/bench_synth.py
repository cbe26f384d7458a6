"""Synthetic data throughput: patches per second, and slide megapixels per second with peak memory.

    python benchmarks/bench_synth.py                      # 512 px patches; 8192^2 and 32768^2 slides
    python benchmarks/bench_synth.py --quick              # 512 px patches; 2048^2 and 4096^2 slides
    python benchmarks/bench_synth.py --slides 8192 --workers 2 --out benchmarks/results/synth.json

Each slide is made in its own subprocess, which reports its peak resident
memory (getrusage ru_maxrss) and the CPU seconds it used; wall time
includes the pyramid and the Zarr writes. Patches are timed with their
PNG/TIFF/CSV writes. Prints a Markdown table and writes JSON records.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

_SLIDE_CHILD = r"""
import json, resource, sys, time
from her2kit.synth.slide import make_slide
out, side, workers, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, c0 = time.perf_counter(), time.process_time()
info = make_slide(out, (side, side), "2+", seed=1, chunk=chunk, workers=workers, progress=False)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak / 1024, "import_rss_mb": base / 1024,
                  "n_cells": info["n_cells"], "score": info["score"]}))
"""


def bench_patches(n: int, size: int) -> dict:
    from her2kit.synth.images import generate

    with tempfile.TemporaryDirectory() as tmp:
        generate(os.path.join(tmp, "warm"), 1, size, seed=99, progress=False)
        t0, c0 = time.perf_counter(), time.process_time()
        generate(os.path.join(tmp, "run"), n, size, seed=0, progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"name": "synth_images", "size": size, "n": n, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "images_per_s": round(n / wall, 2), "images_per_cpu_s": round(n / cpu, 2)}


def bench_slide(side: int, workers: int, chunk: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "s.zarr")
        p = subprocess.run([sys.executable, "-c", _SLIDE_CHILD, out, str(side), str(workers), str(chunk)],
                           capture_output=True, text=True, check=True)
        rec = json.loads(p.stdout.strip().splitlines()[-1])
        size_mb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs) / 2**20
    mp = side * side / 1e6
    return {"name": "synth_slide", "size": side, "chunk": chunk, "workers": workers,
            "megapixels": round(mp, 1), "wall_s": round(rec["wall_s"], 1), "cpu_s": round(rec["cpu_s"], 1),
            "mp_per_s": round(mp / rec["wall_s"], 3), "mp_per_cpu_s": round(mp / rec["cpu_s"], 3),
            "peak_rss_mb": round(rec["peak_rss_mb"], 1), "import_rss_mb": round(rec["import_rss_mb"], 1),
            "store_mb": round(size_mb, 1), "n_cells": rec["n_cells"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small slides (2048^2, 4096^2)")
    ap.add_argument("--images", type=int, default=20, help="number of 512 px patches to time")
    ap.add_argument("--slides", type=int, nargs="*", default=None, help="slide sides in pixels")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--out", default=None, help="JSON file for the records")
    args = ap.parse_args(argv)
    sides = args.slides if args.slides is not None else ([2048, 4096] if args.quick else [8192, 32768])
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine(),
               "load_avg_1min": round(os.getloadavg()[0], 2)}
    records = []
    if args.images:
        records.append(bench_patches(args.images, 512))
        r = records[-1]
        print(f"| patches 512x512 | {r['images_per_s']} images/s wall | {r['images_per_cpu_s']} images per CPU-s |",
              flush=True)
    for side in sides:
        r = bench_slide(side, args.workers, args.chunk)
        records.append(r)
        print(f"| slide {side}x{side} ({r['megapixels']} MP) | {r['mp_per_s']} MP/s wall, "
              f"{r['mp_per_cpu_s']} MP per CPU-s | peak RSS {r['peak_rss_mb']} MB "
              f"(after imports {r['import_rss_mb']} MB) | {r['wall_s']} s | store {r['store_mb']} MB |", flush=True)
    for r in records:
        r["machine"] = machine
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(records, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
