"""A folder of labelled synthetic patches (``her2kit synth images``).

Layout of OUT (NNNN = image number, zero-padded):

    images/NNNN.png           RGB, uint8
    masks/NNNN.png            semantic labels, uint8: 0 background, 1 membrane, 2 nucleus
    instances/NNNN_cells.tif  cell instance ids, uint32 (= ``id`` in cells/NNNN.csv), 0 none
    instances/NNNN_nuclei.tif nucleus instance ids, uint32 (the owning cell's id), 0 none
    cells/NNNN.csv            one row per cell touching the image
    index.csv                 one row per image: paths, score, mix, parameters
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from dataclasses import dataclass

import numpy as np

from her2kit.synth import categories, noise, tissue
from her2kit.synth.render import TYPE_NAMES, Region, render_region
from her2kit.synth.scene import make_scene

CELL_COLUMNS = ["id", "y", "x", "category", "tumour", "completeness", "intensity", "type", "area",
                "counted"]

INDEX_COLUMNS = ["image", "mask", "cells", "instances_cells", "instances_nuclei", "score", "subcategory",
                 "requested", "near_threshold", "seed", "mpp", "domain", "size", "n_cells", "n_tumour",
                 "pct_0", "pct_1", "pct_2", "pct_3", "h_score", "pct_complete"]


@dataclass
class Patch:
    """One synthetic image with its ground truth."""

    region: Region
    score: str
    subcategory: str | None
    requested: str
    near: bool
    seed: int
    counts: np.ndarray  # tumour cells per category (n0..n3)


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` of a run with ``seed``."""
    return int(noise.hash64(int(seed), int(index)) & np.uint64(0x7FFFFFFF))


def make_patch(seed: int, size: int, score: str, mpp: float = 0.5, domain: str = "default") -> Patch:
    """Render one ``size`` x ``size`` patch whose tumour cells follow a mix drawn for ``score``.

    The returned ground-truth score is the ASCO/CAP rule applied to the true
    cell table (equal to ``score`` whenever the image holds enough tumour cells).
    """
    score = categories.parse_score(score)
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0xCA7])
    fractions, sub, near = categories.sample_fractions(score, rng)
    scene = make_scene(seed, mpp=mpp, domain=domain, height=size, width=size, fractions=fractions)
    # a patch is a small window: set the nest level from the seeds inside it, so every
    # patch holds about the scene's share of tumour (a slide uses the global level)
    side = size * mpp
    seeds = tissue.seeds_for_region(scene, 0.0, 0.0, side, side)
    inside = (seeds.y >= 0) & (seeds.y < side) & (seeds.x >= 0) & (seeds.x < side)
    if inside.sum() >= 4:
        nest = tissue.nest_field(scene, seeds.y[inside], seeds.x[inside])
        scene.tumour_level = float(np.quantile(nest, 1 - scene.tumour_fraction))
    region = render_region(scene, 0, 0, size, size, counts=lambda n: categories.counts_for(score, fractions, n))
    region = _renumber(region)
    t = region.table
    # the truth counts the tumour cells whose nucleus centre is in the image: a cell cut
    # by the border with its nucleus outside cannot be scored by anyone looking at it
    t["counted"] = ((t["tumour"] == 1) & (t["nucleus_inside"] == 1)).astype(np.int8)
    counts = np.bincount(t["category"][t["counted"] == 1].astype(int), minlength=4)
    truth, truth_sub = categories.asco_cap_score(counts)
    # "near the threshold" describes the mix asked for: an image too small to hold
    # it (its truth another score) is not a near-threshold case of its truth
    near = near and truth == score
    return Patch(region, truth, truth_sub, score, near, seed, counts)


def _renumber(region: Region) -> Region:
    """Global ids -> 1..n in order of id, in the masks and the table."""
    ids = region.table["id"]
    lut_keys = np.concatenate([[0], ids]).astype(np.uint32)
    new = np.arange(len(ids) + 1, dtype=np.uint32)

    def remap(a: np.ndarray) -> np.ndarray:
        return new[np.searchsorted(lut_keys, a)].astype(np.uint32)

    table = dict(region.table)
    table["id"] = new[1:]
    return Region(region.rgb, region.semantic, remap(region.cells), remap(region.nuclei), table)


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def _atomic(path: str, write) -> None:
    tmp = path + ".part"
    write(tmp)
    os.replace(tmp, path)


def _save_png(path: str, array: np.ndarray, mpp: float | None = None) -> None:
    """PNG; with ``mpp``, its density (dpi = 25400 / mpp) says the resolution, so
    ``her2kit score`` needs no ``--mpp`` for it."""
    from PIL import Image

    extra = {"dpi": (25400 / mpp, 25400 / mpp)} if mpp else {}
    _atomic(path, lambda p: Image.fromarray(array).save(p, format="PNG", compress_level=1, **extra))


def _save_tif(path: str, array: np.ndarray) -> None:
    import tifffile

    _atomic(path, lambda p: tifffile.imwrite(p, array, compression="zlib", metadata=None, software=False))


def _write_cells(path: str, table: dict[str, np.ndarray]) -> None:
    def write(p: str) -> None:
        with open(p, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CELL_COLUMNS)
            for i in range(len(table["id"])):
                w.writerow([int(table["id"][i]), f"{table['y'][i]:.2f}", f"{table['x'][i]:.2f}",
                            int(table["category"][i]), int(table["tumour"][i]),
                            f"{table['completeness'][i]:.3f}", f"{table['intensity'][i]:.3f}",
                            TYPE_NAMES.get(int(table["type"][i]), "other"), int(table["area"][i]),
                            int(table["counted"][i])])

    _atomic(path, write)


def percentages(counts: np.ndarray) -> np.ndarray:
    """Per-category percentages of tumour cells (zeros when there are none)."""
    n = counts.sum()
    return counts * (100.0 / n) if n else np.zeros(4)


def generate_into(out: str, *args, **kwargs) -> list[dict]:
    """:func:`generate` into ``out + ".part"``, renamed to ``out`` when complete: a
    run stopped midway leaves an earlier data set in ``out`` whole (its
    index.csv still true to its images), and a complete one replaces it."""
    out = out.rstrip("/") or out
    tmp = out + ".part"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    rows = generate(tmp, *args, **kwargs)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    return rows


def generate(out: str, n: int, size: int, seed: int, domain: str = "default", mpp: float = 0.5,
             score: str | None = None, jpeg: bool = False, progress: bool = True) -> list[dict]:
    """Write ``n`` labelled patches to ``out`` (layout in the module docstring); returns the index rows.

    Without ``score`` the scores cycle through 0, 1+, 2+, 3+ in a shuffled
    order per group of four, so any run of four images is balanced.
    """
    from tqdm import tqdm

    for sub in ("images", "masks", "instances", "cells"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xBA1])
    order: list[str] = []
    rows = []
    width = max(4, len(str(n - 1)))
    for i in tqdm(range(n), desc="synth images", unit="img", disable=not progress, file=None):
        if score is None:
            if not order:
                order = list(rng.permutation(categories.SCORES))
            want = order.pop()
        else:
            want = score
        s = image_seed(seed, i)
        patch = make_patch(s, size, want, mpp=mpp, domain=domain)
        rgb = patch.region.rgb
        if jpeg:
            q = int(np.random.default_rng([s, 0x1BE6]).integers(70, 93))
            rgb = _jpeg(rgb, q)
        name = f"{i:0{width}d}"
        paths = {"image": f"images/{name}.png", "mask": f"masks/{name}.png", "cells": f"cells/{name}.csv",
                 "instances_cells": f"instances/{name}_cells.tif",
                 "instances_nuclei": f"instances/{name}_nuclei.tif"}
        _save_png(os.path.join(out, paths["image"]), rgb, mpp=mpp)
        _save_png(os.path.join(out, paths["mask"]), patch.region.semantic)
        _save_tif(os.path.join(out, paths["instances_cells"]), patch.region.cells)
        _save_tif(os.path.join(out, paths["instances_nuclei"]), patch.region.nuclei)
        _write_cells(os.path.join(out, paths["cells"]), patch.region.table)
        pct = percentages(patch.counts)
        t = patch.region.table
        tum = t["counted"] == 1
        n_tum = int(tum.sum())
        complete = int(np.sum(tum & (t["category"] >= 2)))
        rows.append({**paths, "score": patch.score, "subcategory": patch.subcategory or "",
                     "requested": want, "near_threshold": int(patch.near), "seed": s, "mpp": mpp,
                     "domain": domain, "size": size, "n_cells": len(t["id"]), "n_tumour": n_tum,
                     **{f"pct_{k}": f"{pct[k]:.2f}" for k in range(4)},
                     "h_score": f"{pct[1] + 2 * pct[2] + 3 * pct[3]:.1f}",
                     "pct_complete": f"{100.0 * complete / n_tum if n_tum else 0.0:.2f}"})

    def write_index(p: str) -> None:
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=INDEX_COLUMNS)
            w.writeheader()
            w.writerows(rows)

    _atomic(os.path.join(out, "index.csv"), write_index)
    return rows
