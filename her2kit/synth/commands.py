"""``her2kit synth images`` and ``her2kit synth slide``: argument checks and dispatch."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys

from her2kit.errors import InputError

MAX_SIDE = 1 << 20  # pixels; larger sides are a typo, not a slide


def _check_mpp(mpp: float) -> None:
    if not (math.isfinite(mpp) and 0.05 <= mpp <= 10.0):
        raise InputError(None, f"--mpp must be between 0.05 and 10 microns per pixel (got {mpp})")


def _check_score(text: str | None) -> str | None:
    from her2kit.synth.categories import parse_score

    if text is None:
        return None
    try:
        return parse_score(text)
    except ValueError as exc:
        raise InputError(None, str(exc)) from None


# What an earlier output of each command holds: --force replaces only such a folder.
_IMAGES_PARTS = {"images", "masks", "instances", "cells", "index.csv"}


def _is_earlier_output(out: str, what: str) -> bool:
    """True when ``out`` holds only what ``synth images`` / ``synth slide`` writes."""
    if what == "a slide":
        from her2kit.synth.slide import is_synthetic_slide

        return is_synthetic_slide(out)
    names = set(os.listdir(out))
    return "index.csv" in names and names <= _IMAGES_PARTS


def _check_out(out: str, force: bool, what: str = "a data set") -> None:
    """OUT may be new, an empty folder, or (with --force) an earlier output to replace.

    --force never empties a folder holding anything else (a user's files, the
    working directory): replacing OUT deletes it whole.
    """
    parent = os.path.dirname(os.path.abspath(out)) or "."
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(out, "exists and is not a directory")
    if not os.path.isdir(parent):
        raise InputError(out, "parent directory does not exist")
    cwd = os.path.realpath(os.getcwd())
    real = os.path.realpath(out)
    if cwd == real or cwd.startswith(real.rstrip(os.sep) + os.sep):
        raise InputError(out, "is the working directory (or holds it); give a new folder for OUT")
    if not (os.path.isdir(out) and os.listdir(out)):
        return
    if not _is_earlier_output(out, what):
        raise InputError(out, f"holds other files, not {what} made by her2kit synth; give a new or "
                              "empty folder for OUT")
    if not force:
        raise InputError(out, f"already holds {what}; give another OUT, or --force to replace it")


def _check_file_out(path: str, force: bool) -> None:
    if os.path.isdir(path):
        raise InputError(path, "is a directory, not a file name")
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise InputError(path, "parent directory does not exist")
    if os.path.exists(path) and not force:
        raise InputError(path, "exists; give another name, or --force to replace it")


def images(args: argparse.Namespace) -> int:
    """``her2kit synth images OUT --n N --size S --seed K ...``"""
    if args.n < 1:
        raise InputError(None, f"--n must be a positive number of images (got {args.n})")
    if not 16 <= args.size <= 8192:
        raise InputError(None, f"--size must be between 16 and 8192 pixels (got {args.size})")
    _check_mpp(args.mpp)
    score = _check_score(args.score)
    _check_out(args.out, getattr(args, "force", False))
    from her2kit.synth.images import generate_into

    rows = generate_into(args.out, args.n, args.size, args.seed, domain=args.domain, mpp=args.mpp,
                         score=score, jpeg=args.jpeg)
    counts = {s: sum(r["score"] == s for r in rows) for s in ("0", "1+", "2+", "3+")}
    print(f"wrote {len(rows)} images to {args.out} (scores: "
          + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ")")
    off = sum(r["score"] != r["requested"] for r in rows)
    if off:
        print(f"note: {off} image(s) hold too few tumour cells for the requested score; "
              "index.csv 'score' is the truth, 'requested' what was asked", file=sys.stderr)
    return 0


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W); InputError for anything else or sides out of range."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", str(text))
    if not m:
        raise InputError(None, f"--size must be HxW in pixels, e.g. 8192x8192 (got {text!r})")
    h, w = int(m.group(1)), int(m.group(2))
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise InputError(None, f"--size sides must be between 1 and {MAX_SIDE} pixels (got {text!r})")
    return h, w


def slide(args: argparse.Namespace) -> int:
    """``her2kit synth slide OUT.zarr --size HxW --score S --seed K ...``"""
    h, w = parse_size(args.size)
    score = _check_score(args.score)
    _check_mpp(args.mpp)
    if not 0.0 < args.tissue <= 1.0:
        raise InputError(None, f"--tissue must be a fraction in (0, 1] (got {args.tissue})")
    if not 64 <= args.chunk <= 8192:
        raise InputError(None, f"--chunk must be between 64 and 8192 pixels (got {args.chunk})")
    force = getattr(args, "force", False)
    _check_out(args.out, force, "a slide")
    if args.tiff is not None:
        if os.path.realpath(args.tiff) == os.path.realpath(args.out):
            raise InputError(args.tiff, "--tiff must name a file other than OUT")
        _check_file_out(args.tiff, force)
    from her2kit.synth.slide import make_slide

    info = make_slide(args.out, (h, w), score, seed=args.seed, domain=args.domain, mpp=args.mpp,
                      tissue=args.tissue, chunk=args.chunk, tiff=args.tiff)
    print(f"wrote {args.out}: {h}x{w} px at {args.mpp} um/px, {info['n_tumour']} tumour cells, "
          f"score {info['score']}" + (f" ({info['subcategory']})" if info.get("subcategory") else "")
          + f", tissue {100 * info['tissue_fraction']:.0f}% of the area")
    return 0
