"""Checks of ``train`` / ``evaluate`` options, run before any work so that a bad
option is a one-line error instead of a failure (or a useless result) later."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from her2kit.errors import Her2kitError

# Larger patches only pad small images further and exhaust memory (QA:
# --patch 100000 died with a MemoryError); 4096 px is beyond any GPU batch.
MAX_PATCH = 4096
FLOAT32_MAX = 3.4028234663852886e38


def check_out_folder(out: str | Path) -> Path:
    """``--out`` as a Path; Her2kitError if it names an existing file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise Her2kitError(f"--out {out}: is a file, not a folder")
    return out


def check_positive_int(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise Her2kitError(f"{name} must be at least 1, got {value}")


def check_train_options(args: Any) -> None:
    """Every numeric ``train`` option that the CLI parsed but cannot vouch for."""
    check_positive_int("--epochs", args.epochs)
    check_positive_int("--width", args.width)
    check_positive_int("--batch", args.batch)
    # the optimisers keep lr in float32: a larger value overflows inside torch
    if args.lr is not None and not 0 < args.lr <= FLOAT32_MAX:  # also refuses nan
        raise Her2kitError(f"--lr must be a positive finite number, got {args.lr}")
    if not 0 < args.fraction <= 1:  # also refuses nan
        raise Her2kitError(f"--fraction must be in (0, 1], got {args.fraction}")
    if args.patch is not None and not 16 <= args.patch <= MAX_PATCH:
        raise Her2kitError(f"--patch must be between 16 and {MAX_PATCH} pixels, got {args.patch}")
    if args.seed < 0:  # numpy's seeded generators refuse negative seeds
        raise Her2kitError(f"--seed must be 0 or more, got {args.seed}")
    if args.resume and args.force:
        raise Her2kitError("--resume and --force contradict each other: continue the run or replace it")
