"""A synthetic whole slide as OME-Zarr (``her2kit synth slide``), made block by block.

Each chunk-aligned block is rendered on its own (a Dask task) from the
scene and global coordinates, with a halo for blur and a margin for
complete cells, so blocks agree at their borders and the result does not
depend on the block size or on the order. Blocks go straight to the Zarr
store and only small per-block cell tables come back, appended to
``cells.csv`` in block order: peak memory depends on the block size and
the number of workers, not on the slide size.

Output (NGFF 0.4, see :mod:`her2kit.omezarr`):

    OUT.zarr/          RGB pyramid (c, y, x), uint8, mpp in the scale
      labels/semantic  uint8: 0 background, 1 membrane, 2 nucleus
      labels/cells     uint32: cell ids (= ``id`` in cells.csv)
      labels/nuclei    uint32: nucleus pixels, labelled with their cell's id
      cells.csv        id, y, x (centroid, level-0 pixels), category, tumour,
                       completeness, intensity, type, area
      .zattrs          ["her2kit"]["synthetic"]: true score, percentages, parameters
"""

from __future__ import annotations

import csv
import math
import os
import shutil
from typing import Any

import numpy as np

from her2kit import omezarr
from her2kit.synth import categories
from her2kit.synth.render import TYPE_NAMES, render_region
from her2kit.synth.scene import Scene, make_scene

CELL_COLUMNS = ["id", "y", "x", "category", "tumour", "completeness", "intensity", "type", "area"]


def is_synthetic_slide(path: str) -> bool:
    """True when ``path`` is a Zarr group written by :func:`make_slide`."""
    import zarr

    try:
        attrs = dict(zarr.open_group(path, mode="r").attrs)
    except Exception:  # not a Zarr group at all: not ours either
        return False
    return isinstance(attrs.get("her2kit"), dict) and "synthetic" in attrs["her2kit"]


def slide_scene(shape_hw: tuple[int, int], score: str, seed: int, domain: str = "default",
                mpp: float = 0.5, tissue: float = 1.0) -> tuple[Scene, str | None]:
    """The scene of a slide; its category mix keeps >= 3 points from the 10% thresholds."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x511DE])
    fractions, sub, _near = categories.sample_fractions(score, rng, gap=0.03)
    scene = make_scene(seed, mpp=mpp, domain=domain, height=shape_hw[0], width=shape_hw[1],
                       fractions=fractions, tissue=tissue)
    return scene, sub


def tissue_fraction(scene: Scene, samples: int = 256) -> float:
    """Share of the slide's area covered by tissue (not bare glass), measured on a
    grid of about ``samples`` x ``samples`` pixels."""
    from her2kit.synth.tissue import tissue_mask

    step = max(1, math.ceil(max(scene.height, scene.width) / samples))
    return float(tissue_mask(scene, step).mean())


def cell_margin(scene: Scene) -> int:
    """Pixels around a block within which any cell seeded in the block lies entirely."""
    return int(math.ceil(1.6 * scene.spacing_um / scene.mpp)) + 2


def render_block(scene: Scene, y: int, x: int, h: int, w: int, root: Any) -> dict[str, np.ndarray]:
    """Render one block, write it to every level-0 array under ``root``; return its own cells.

    A cell belongs to the block holding its seed (clamped into the slide),
    so each cell is listed exactly once, measured over all its pixels.
    """
    region = render_region(scene, y, x, h, w, margin=cell_margin(scene))
    omezarr.write_region(root["0"], y, x, region.rgb)
    omezarr.write_region(root["labels/semantic/0"], y, x, region.semantic)
    omezarr.write_region(root["labels/cells/0"], y, x, region.cells)
    omezarr.write_region(root["labels/nuclei/0"], y, x, region.nuclei)
    t = region.table
    sy = np.clip(np.floor(t["seed_y"]), 0, scene.height - 1)
    sx = np.clip(np.floor(t["seed_x"]), 0, scene.width - 1)
    own = (sy >= y) & (sy < y + h) & (sx >= x) & (sx < x + w)
    return {k: v[own] for k, v in t.items()}


def _rows(t: dict[str, np.ndarray]) -> list[list]:
    return [[int(t["id"][i]), f"{t['y'][i]:.2f}", f"{t['x'][i]:.2f}", int(t["category"][i]),
             int(t["tumour"][i]), f"{t['completeness'][i]:.3f}", f"{t['intensity'][i]:.3f}",
             TYPE_NAMES.get(int(t["type"][i]), "other"), int(t["area"][i])]
            for i in np.argsort(t["id"], kind="stable")]


def make_slide(out: str, shape_hw: tuple[int, int], score: str, seed: int = 0, domain: str = "default",
               mpp: float = 0.5, tissue: float = 1.0, chunk: int = 1024, tiff: str | None = None,
               workers: int | None = None, progress: bool = True) -> dict:
    """Write a synthetic slide to ``out`` (see the module docstring); returns its ground-truth summary.

    ``workers``: threads rendering blocks at once (default: CPU count, at most 4).
    Written under ``out + ".part"`` and renamed into place when complete.
    """
    import dask
    from tqdm import tqdm

    score = categories.parse_score(score)
    scene, _sub = slide_scene(shape_hw, score, seed, domain, mpp, tissue)
    workers = workers or min(4, os.cpu_count() or 1)
    tmp = out.rstrip("/") + ".part"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    root = omezarr.create_multiscale_image(tmp, shape_hw, mpp, chunk=chunk, name=os.path.basename(out))
    levels = len(root.attrs["multiscales"][0]["datasets"])
    omezarr.create_labels(root, "semantic", shape_hw, mpp, chunk=chunk, levels=levels, dtype="uint8",
                          colors=omezarr.SEMANTIC_COLORS,
                          properties={1: {"class": "membrane"}, 2: {"class": "nucleus"}})
    omezarr.create_labels(root, "cells", shape_hw, mpp, chunk=chunk, levels=levels, dtype="uint32")
    omezarr.create_labels(root, "nuclei", shape_hw, mpp, chunk=chunk, levels=levels, dtype="uint32")

    blocks = list(omezarr.chunk_grid(shape_hw, chunk))
    counts = np.zeros(4, np.int64)
    n_cells = complete = 0
    task = dask.delayed(render_block, pure=False)
    with open(os.path.join(tmp, "cells.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CELL_COLUMNS)
        bar = tqdm(total=len(blocks), desc="synth slide", unit="block", disable=not progress)
        step = 2 * workers  # blocks in flight: bounds memory whatever the slide size
        for i in range(0, len(blocks), step):
            batch = [task(scene, *b, root) for b in blocks[i:i + step]]
            for t in dask.compute(*batch, scheduler="threads", num_workers=workers):
                writer.writerows(_rows(t))
                tum = t["tumour"] == 1
                counts += np.bincount(t["category"][tum].astype(int), minlength=4)
                complete += int(np.sum(tum & (t["category"] >= 2)))
                n_cells += len(t["id"])
                bar.update()
        bar.close()
    omezarr.build_pyramid(root, labels=False, workers=workers, progress=progress)
    for name in ("semantic", "cells", "nuclei"):
        omezarr.build_pyramid(root[f"labels/{name}"], labels=True, workers=workers, progress=progress)

    truth, sub = categories.asco_cap_score(counts)
    n_tum = int(counts.sum())
    pct = counts * (100.0 / n_tum) if n_tum else np.zeros(4)
    info = {
        "score": truth, "subcategory": sub, "requested": score, "seed": int(seed), "domain": domain,
        "mpp": float(mpp), "shape": [int(s) for s in shape_hw], "tissue": float(tissue), "chunk": int(chunk),
        "tissue_fraction": round(tissue_fraction(scene), 4),
        "n_cells": int(n_cells), "n_tumour": n_tum, "counts": [int(c) for c in counts],
        "percent": {str(k): round(float(pct[k]), 3) for k in range(4)},
        "h_score": round(float(pct[1] + 2 * pct[2] + 3 * pct[3]), 2),
        "percent_complete": round(100.0 * complete / n_tum, 3) if n_tum else 0.0,
        "fractions": [round(float(v), 4) for v in scene.fractions],
        "stain_matrix": np.round(scene.stain, 4).tolist(), "cell_spacing_um": round(scene.spacing_um, 3),
        "blur_um": round(scene.blur_um, 3), "noise_sd": round(scene.noise_sd, 3),
    }
    root.attrs.update({"her2kit": {"synthetic": info}})
    if tiff:
        import json
        import uuid

        name = uuid.uuid5(uuid.NAMESPACE_URL, "her2kit-synth-slide:" + json.dumps(info, sort_keys=True))
        write_ome_tiff(root, tiff, mpp, progress=progress, uuid=name.urn)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    return info


def write_ome_tiff(root: Any, path: str, mpp: float, tile: int = 512, progress: bool = True,
                   uuid: str | None = None) -> None:
    """Copy the RGB pyramid of ``root`` into a tiled pyramidal OME-TIFF (sub-IFDs), tile by tile.

    Tiles stream from the Zarr levels (one chunk-row strip of one chunk
    column at a time), so memory stays bounded; mpp goes into the OME
    PhysicalSize and the TIFF resolution tags. Written to a temporary name first.
    ``uuid`` (urn:uuid:...) names the OME document; tifffile would draw a random
    one, and then one seed would not give the same bytes twice.
    """
    import tifffile
    from tqdm import tqdm

    datasets = [d["path"] for d in root.attrs["multiscales"][0]["datasets"]]
    arrays = [root[p] for p in datasets]
    total = sum(-(-a.shape[1] // tile) * -(-a.shape[2] // tile) for a in arrays)
    bar = tqdm(total=total, desc="OME-TIFF", unit="tile", disable=not progress, leave=False)

    def tiles(arr: Any):
        _, H, W = arr.shape
        step = max(tile, (arr.chunks[2] // tile) * tile)
        for ty in range(0, H, tile):
            for cx in range(0, W, step):
                strip = np.moveaxis(np.asarray(arr[:, ty:ty + tile, cx:cx + step]), 0, -1)
                for tx in range(0, strip.shape[1], tile):
                    t = strip[:, tx:tx + tile]
                    if t.shape[:2] != (tile, tile):
                        t = np.pad(t, ((0, tile - t.shape[0]), (0, tile - t.shape[1]), (0, 0)),
                                   constant_values=255)
                    bar.update()
                    yield np.ascontiguousarray(t)

    tmp = path + ".part"
    with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tw:
        for level, arr in enumerate(arrays):
            _, H, W = arr.shape
            res = 1e4 / (mpp * 2**level)  # pixels per centimetre
            kwargs: dict[str, Any] = dict(shape=(H, W, 3), dtype=np.uint8, tile=(tile, tile),
                                          photometric="rgb", compression="zlib",
                                          resolution=(res, res), resolutionunit="CENTIMETER")
            if level == 0:
                tw.write(tiles(arr), subifds=len(arrays) - 1, software=False,
                         metadata={"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeXUnit": "µm",
                                   "PhysicalSizeY": mpp, "PhysicalSizeYUnit": "µm",
                                   **({"UUID": uuid} if uuid else {})}, **kwargs)
            else:
                tw.write(tiles(arr), subfiletype=1, software=False, metadata=None, **kwargs)
    bar.close()
    os.replace(tmp, path)
