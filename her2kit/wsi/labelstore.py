"""The output labels of a slide: an OME-Zarr (NGFF 0.4) ``labels.zarr``.

Layout::

    labels.zarr/                   group, {"labels": ["semantic", "cells"]} under labels/
      labels/semantic/0, 1, ...    uint8 pixel classes, level 0 = slide level 0
      labels/cells/0, 1, ...       uint32 cell ids (as in cells.csv)

Blocks write disjoint, chunk-aligned regions of level 0 (safe from several
processes); the coarser levels are made afterwards, region by region, by
taking every second pixel (nearest neighbour: labels must not be averaged).
In-process overlapped runs fill level 1 block by block as soon as a block's
region is final (see ``pipeline._EarlySeams``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

NAMES = {"semantic": np.uint8, "cells": np.uint32}
COLOURS = {"semantic": [[0, [0, 0, 0, 0]], [1, [140, 80, 20, 255]], [2, [40, 60, 200, 255]]]}


def pyramid_shapes(shape: tuple[int, int], chunk: int) -> list[tuple[int, int]]:
    """Shapes of levels 0, 1, ... halving until the longer side fits ``chunk``."""
    shapes = [tuple(int(s) for s in shape)]
    while max(shapes[-1]) > chunk:
        h, w = shapes[-1]
        shapes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return shapes


def create(path: str | Path, shape: tuple[int, int], chunk: int, mpp: float | None) -> None:
    """Create an empty labels.zarr (all levels, zero-filled) at ``path``."""
    import zarr

    shapes = pyramid_shapes(shape, chunk)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    labels = root.create_group("labels")
    labels.attrs["labels"] = list(NAMES)
    unit_mpp = 1.0 if mpp is None else float(mpp)
    for name, dtype in NAMES.items():
        g = labels.create_group(name)
        datasets = []
        for level, s in enumerate(shapes):
            g.create_array(str(level), shape=s, chunks=(min(chunk, s[0]), min(chunk, s[1])),
                           dtype=dtype, fill_value=0)
            f = unit_mpp * 2**level
            datasets.append({"path": str(level),
                             "coordinateTransformations": [{"type": "scale", "scale": [f, f]}]})
        axes = [{"name": a, "type": "space", **({"unit": "micrometer"} if mpp else {})}
                for a in ("y", "x")]
        g.attrs["multiscales"] = [{"version": "0.4", "name": name, "axes": axes,
                                   "datasets": datasets, "type": "nearest"}]
        # no "source": this store holds the labels alone (the image is the input
        # file), and a link to "../../" would send viewers to a root with no image
        meta: dict = {"version": "0.4"}
        if name in COLOURS:
            meta["colors"] = [{"label-value": v, "rgba": c} for v, c in COLOURS[name]]
        g.attrs["image-label"] = meta


def open_level(path: str | Path, name: str, level: int = 0, mode: str = "r+"):
    """One level array of one label image."""
    import zarr

    return zarr.open_array(str(Path(path) / "labels" / name / str(level)), mode=mode, zarr_format=2)


def level_count(path: str | Path) -> int:
    """Number of pyramid levels of the label images."""
    import zarr

    g = zarr.open_group(str(Path(path) / "labels" / "semantic"), mode="r", zarr_format=2)
    return len(g.attrs["multiscales"][0]["datasets"])


def write_region(path: str | Path, y: int, x: int, semantic: np.ndarray, cells: np.ndarray) -> None:
    """Write level-0 regions of both label images at (y, x) (pixels)."""
    h, w = semantic.shape
    open_level(path, "semantic")[y:y + h, x:x + w] = semantic.astype(np.uint8, copy=False)
    open_level(path, "cells")[y:y + h, x:x + w] = cells.astype(np.uint32, copy=False)


def pyramid_regions(path: str | Path, level: int, tile: int) -> list[tuple[int, int, int, int, int]]:
    """Regions (level, y, x, h, w) of ``level`` (>= 1) to fill from ``level - 1``."""
    h, w = open_level(path, "semantic", level, mode="r").shape
    return [(level, y, x, min(tile, h - y), min(tile, w - x))
            for y in range(0, h, tile) for x in range(0, w, tile)]


def downsample_region(path: str | Path, level: int, y: int, x: int, h: int, w: int) -> int:
    """Fill region (y, x, h, w) of ``level`` with every second pixel of ``level - 1``."""
    for name in NAMES:
        src = open_level(path, name, level - 1, mode="r")
        dst = open_level(path, name, level)
        dst[y:y + h, x:x + w] = src[2 * y:2 * (y + h):2, 2 * x:2 * (x + w):2]
    return h * w
