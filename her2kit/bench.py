"""``her2kit bench``: time the native TLSTM and SPP ops against the reference.

Writes a JSON list of records {"name", "shape", "reference_ms", "native_ms",
"speedup", "device", "gflops", "limit_gflops"}. Times are the best of the
repeats (milliseconds of wall clock; the machine may be shared). ``gflops``
is the native op's achieved rate: for TLSTM its GEMM FLOPs (input projection
2*B*H*W*C*4K and recurrent convolution 2*B*H*W*3K*4K per sweep, four sweeps,
times 3 for forward+backward); for SPP one operation per input element read
per bin (the comparisons), so SPP's figure is a throughput, not GEMM work.
``limit_gflops`` is this machine's float32 matmul rate measured in the same
run (the best of several 2048^3 products before and after the ops; 1024^3
with --quick).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable

from her2kit.errors import Her2kitError

TLSTM_SHAPES = [  # (B, C, H, W, K): Her2Net's bottleneck, then a wider map
    (8, 128, 31, 31, 64),
    (4, 64, 63, 63, 32),
]
SPP_SHAPES = [(8, 128, 63, 63)]
SPP_LEVELS = (1, 2, 3, 6)


def _timer(device) -> Callable[[Callable[[], object], int], float]:
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def best_ms(fn: Callable[[], object], repeats: int) -> float:
        fn()  # warm-up (allocations, lazy init)
        sync()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync()
            best = min(best, time.perf_counter() - t0)
        return best * 1e3

    return best_ms


def matmul_gflops(device, n: int = 2048, repeats: int = 5) -> float:
    """Best float32 n x n x n matmul rate on ``device``, GFLOP/s."""
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    ms = _timer(device)(lambda: a @ b, repeats)
    return 2 * n**3 / (ms * 1e-3) / 1e9


def tlstm_flops(B: int, C: int, H: int, W: int, K: int) -> float:
    """GEMM FLOPs of one TLSTM forward (four sweeps)."""
    P = B * H * W
    return 4 * (2 * P * C * 4 * K + 2 * P * 3 * K * 4 * K)


def spp_ops(B: int, C: int, H: int, W: int, levels=SPP_LEVELS) -> float:
    """Elements read by an SPP forward: the sum of the bin areas."""

    def span(size: int, n: int) -> int:  # sum of adaptive bin lengths
        return sum(-((-(i + 1) * size) // n) - (i * size) // n for i in range(n))

    total = sum(span(H, n) * span(W, n) for n in levels)
    return B * C * total


def run(
    quick: bool = False,
    device: str | None = None,
    progress: bool = True,
    tlstm_shapes: list[tuple[int, int, int, int, int]] | None = None,
    spp_shapes: list[tuple[int, int, int, int]] | None = None,
    matmul_n: int | None = None,
) -> list[dict]:
    """Run all benchmarks; returns the records (see the module docstring).

    ``tlstm_shapes`` (B, C, H, W, K), ``spp_shapes`` (B, C, H, W) and
    ``matmul_n`` override the defaults (tests use tiny ones).
    """
    import torch

    from her2kit.ops import TLSTM, native_available, spp, spp_reference, tlstm, tlstm_reference

    if not native_available():
        raise Her2kitError("bench: the native ops (her2kit._C) are not built; nothing to compare")
    try:
        dev = torch.device(device or "cpu")
    except (RuntimeError, ValueError) as exc:
        raise Her2kitError(f"bench: bad --device {device!r}: {exc}") from None
    tlstm_shapes = TLSTM_SHAPES if tlstm_shapes is None else tlstm_shapes
    spp_shapes = SPP_SHAPES if spp_shapes is None else spp_shapes
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise Her2kitError(f"bench: device {device!r} requested but CUDA is not available")
    best_ms = _timer(dev)
    reps_ref = 2 if quick else 3
    reps_nat = 3 if quick else 10
    torch.manual_seed(0)
    mm_n, mm_reps = (1024, 5) if quick else (2048, 5)
    mm_n = matmul_n or mm_n
    # The machine may be shared: measure the matmul rate before and after,
    # keep the best (the machine's capability, not its worst moment).
    limit = matmul_gflops(dev, mm_n, mm_reps)
    records: list[dict] = []
    from tqdm import tqdm

    bar = tqdm(
        total=2 * len(tlstm_shapes) + 2 * len(spp_shapes),
        desc="bench",
        disable=not progress,
        file=sys.stderr,
    )

    def record(name, shape, ref_ms, nat_ms, flops):
        records.append(
            {
                "name": name,
                "shape": shape,
                "reference_ms": round(ref_ms, 3),
                "native_ms": round(nat_ms, 3),
                "speedup": round(ref_ms / nat_ms, 2),
                "device": str(dev),
                "gflops": round(flops / (nat_ms * 1e-3) / 1e9, 2),
                "limit_gflops": round(limit, 2),
            }
        )
        bar.update(1)

    for B, C, H, W, K in tlstm_shapes:
        m = TLSTM(C, K, K).to(dev)
        x = torch.randn(B, C, H, W, device=dev, requires_grad=True)
        params = [x, m.w_x, m.b_x, m.w_h, m.peep]
        gout = torch.randn(B, 4 * K, H, W, device=dev)
        shape = {"B": B, "C": C, "H": H, "W": W, "K": K}

        def fwd(f=tlstm, p=params):
            with torch.no_grad():
                return f(*p)

        def fwd_bwd(f=tlstm, p=params, g=gout):
            return torch.autograd.grad(f(*p), p, g)

        flops = tlstm_flops(B, C, H, W, K)
        record(
            "tlstm_fwd",
            shape,
            best_ms(lambda: fwd(tlstm_reference), reps_ref),
            best_ms(fwd, reps_nat),
            flops,
        )
        record(
            "tlstm_fwd_bwd",
            shape,
            best_ms(lambda: fwd_bwd(tlstm_reference), reps_ref),
            best_ms(fwd_bwd, reps_nat),
            3 * flops,
        )

    for B, C, H, W in spp_shapes:
        x = torch.randn(B, C, H, W, device=dev, requires_grad=True)
        gout = torch.randn(B, C, sum(n * n for n in SPP_LEVELS), device=dev)
        shape = {"B": B, "C": C, "H": H, "W": W, "levels": list(SPP_LEVELS)}
        ops = spp_ops(B, C, H, W)

        def sfwd(f=spp, x=x):
            with torch.no_grad():
                return f(x, SPP_LEVELS)

        def sfwd_bwd(f=spp, x=x, g=gout):
            return torch.autograd.grad(f(x, SPP_LEVELS), x, g)

        record(
            "spp_fwd",
            shape,
            best_ms(lambda: sfwd(spp_reference), 3 * reps_ref),
            best_ms(sfwd, reps_nat),
            ops,
        )
        record(
            "spp_fwd_bwd",
            shape,
            best_ms(lambda: sfwd_bwd(spp_reference), 3 * reps_ref),
            best_ms(sfwd_bwd, reps_nat),
            ops + B * C * sum(n * n for n in SPP_LEVELS),
        )
    bar.close()
    limit = max(limit, matmul_gflops(dev, mm_n, mm_reps))
    for r in records:
        r["limit_gflops"] = round(limit, 2)
    return records


def format_table(records: list[dict]) -> str:
    """Human-readable summary, one line per record."""
    lines = [
        f"{'name':<14} {'shape':<34} {'ref ms':>9} {'native ms':>10} {'speedup':>8} "
        f"{'GFLOP/s':>8} {'limit':>7}"
    ]
    for r in records:
        shape = ",".join(f"{k}={v}" for k, v in r["shape"].items() if k != "levels")
        lines.append(
            f"{r['name']:<14} {shape:<34} {r['reference_ms']:>9.1f} "
            f"{r['native_ms']:>10.1f} {r['speedup']:>7.1f}x {r['gflops']:>8.1f} "
            f"{r['limit_gflops']:>7.1f}"
        )
    return "\n".join(lines)


def write_json(records: list[dict], path: str) -> None:
    """Write records to ``path`` through a temporary file renamed into place."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".bench-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(records, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result file is for others too
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main(args) -> int:
    """CLI entry: ``her2kit bench [--quick] --out FILE.json [--device DEV]``."""
    from her2kit.errors import Her2kitError

    # checked before minutes of measuring, not after
    if os.path.isdir(args.out):
        raise Her2kitError(f"--out {args.out}: is a folder; give a file name (FILE.json)")
    records = run(quick=args.quick, device=args.device)
    write_json(records, args.out)
    print(format_table(records))
    print(f"wrote {args.out}")
    return 0
