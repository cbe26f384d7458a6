"""Benchmark the native TLSTM and SPP ops against the plain-PyTorch reference.

Same as ``her2kit bench``; kept here so the benchmarks folder is self-describing:

    python benchmarks/bench_ops.py --out bench.json [--quick] [--device cuda]

Prints a table and writes the JSON records described in her2kit/bench.py
(and benchmarks/README.md). Never run inside the test suite.

    python benchmarks/bench_ops.py --cpu-time

measures instead, on one thread, the CPU time (not wall time) of the native
TLSTM forward+backward, of the reference, and of a 1024^3 float32 matmul:
figures that stay meaningful when other jobs share the cores.
"""

from __future__ import annotations

import argparse
import sys
import time


def cpu_time_efficiency(repeats: int = 5) -> None:
    """Print native TLSTM fwd+bwd GFLOP/s over the 1-thread matmul rate (CPU time)."""
    import torch

    from her2kit.bench import TLSTM_SHAPES, tlstm_flops
    from her2kit.ops import TLSTM, tlstm, tlstm_reference

    torch.set_num_threads(1)

    def best(fn) -> float:
        fn()
        t = float("inf")
        for _ in range(repeats):
            t0 = time.thread_time()
            fn()
            t = min(t, time.thread_time() - t0)
        return t

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    mm = 2 * 1024**3 / best(lambda: a @ b) / 1e9
    for B, C, H, W, K in TLSTM_SHAPES:
        m = TLSTM(C, K, K)
        x = torch.randn(B, C, H, W, requires_grad=True)
        p = [x, m.w_x, m.b_x, m.w_h, m.peep]
        g = torch.randn(B, 4 * K, H, W)
        sec = best(lambda p=p, g=g: torch.autograd.grad(tlstm(*p), p, g))
        ref = best(lambda p=p, g=g: torch.autograd.grad(tlstm_reference(*p), p, g))
        rate = 3 * tlstm_flops(B, C, H, W, K) / sec / 1e9
        print(
            f"tlstm_fwd_bwd B={B} C={C} H={H} W={W} K={K}: native {sec * 1e3:.1f} ms CPU, "
            f"reference {ref * 1e3:.1f} ms CPU ({ref / sec:.1f}x); native {rate:.1f} GFLOP/s "
            f"= {100 * rate / mm:.0f}% of 1-thread matmul ({mm:.1f} GFLOP/s)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--out", metavar="FILE.json")
    parser.add_argument("--device", default=None, help="torch device (default cpu)")
    parser.add_argument("--cpu-time", action="store_true", help="1-thread CPU-time efficiency")
    args = parser.parse_args()
    if args.cpu_time:
        cpu_time_efficiency()
        sys.exit(0)
    if not args.out:
        parser.error("--out is required (unless --cpu-time)")
    from her2kit.bench import main

    sys.exit(main(args))
