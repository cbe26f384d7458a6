"""Labelled image folders (the layout of ``her2kit synth images``) and patch sampling.

A folder holds ``images/*.png`` (RGB), ``masks/*.png`` (0 background,
1 membrane, 2 nucleus) and optionally ``cells/*.csv`` (one row per cell: id,
y, x, category 0-3, tumour 0/1) and ``index.csv`` (columns image, mask,
score, optionally cells and mpp; paths relative to the folder). Without
index.csv, images and masks are paired by file name. Users can train on
their own annotated images by laying them out the same way.

Staining-pattern labels for the pattern head come from the cells whose
centre lies in a patch (tumour cells when the column says so): the pattern
is the highest category k such that more than 10% of those cells have
category >= k (ASCO/CAP thresholds applied to the patch). Patches with fewer
than ``MIN_CELLS`` cells get no pattern label (-1, ignored by the loss). A
folder without cells/ uses the image's score for all its patches.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from her2kit.errors import InputError
from her2kit.evaluation.metrics import score_index

MIN_CELLS = 5
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


@dataclass
class LabelledImage:
    """One annotated image: RGB (H, W, 3) uint8, labels (H, W) uint8, optional cell table."""

    name: str
    rgb: np.ndarray
    mask: np.ndarray
    score: int | None = None
    cells: np.ndarray | None = None  # (N, 3) float: y, x, category, tumour cells only
    mpp: float | None = None
    extra: dict = field(default_factory=dict)


def read_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 through her2kit's readers.

    Training images follow the same rules as images to score (RGBA composited
    over white, greyscale/16-bit refused with an InputError naming the file).
    """
    from her2kit.readers import open_slide

    with open_slide(path) as slide:
        h, w = slide.shape
        return np.ascontiguousarray(slide.read_region(0, 0, h, w))


def read_mask(path: Path) -> np.ndarray:
    """A label image (H, W) uint8 with values 0, 1, 2; InputError otherwise."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"unreadable mask ({exc})") from None
    if arr.ndim == 3:
        if not (arr[..., :1] == arr[..., :3]).all():
            raise InputError(path, "mask must be single-channel labels (0 background, 1 membrane, 2 nucleus)")
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(path, f"mask must be 2-D, got shape {arr.shape}")
    if arr.size and int(arr.max()) > 2:
        raise InputError(path, f"mask values must be 0, 1 or 2 (found {int(arr.max())})")
    return arr.astype(np.uint8)


def read_cells(path: Path) -> np.ndarray:
    """Cell table (N, 3) float64 [y, x, category] of tumour cells (all cells if no tumour column)."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise InputError(path, f"unreadable cell table ({exc})") from None
    out = []
    for row in rows:
        try:
            if "tumour" in row and row["tumour"] not in (None, "") and int(float(row["tumour"])) == 0:
                continue
            out.append((float(row["y"]), float(row["x"]), float(row["category"])))
        except (KeyError, ValueError):
            raise InputError(path, "cell table needs numeric columns y, x, category") from None
    return np.asarray(out, dtype=np.float64).reshape(-1, 3)


def _folder_mpp(folder: Path) -> float | None:
    for name in ("meta.json", "synth.json", "manifest.json"):
        p = folder / name
        if p.is_file():
            try:
                value = json.loads(p.read_text()).get("mpp")
                return float(value) if value is not None else None
            except (ValueError, AttributeError, TypeError):
                return None
    return None


def index_rows(folder: str | Path) -> list[dict[str, str]]:
    """The folder's rows {image, mask, score?, cells?, mpp?} with paths resolved."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder (expected images/, masks/, index.csv)")
    index = folder / "index.csv"
    rows: list[dict[str, str]] = []
    if index.is_file():
        with open(index, newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "image" not in reader.fieldnames or "mask" not in reader.fieldnames:
                raise InputError(index, "index.csv needs columns image and mask")
            for row in reader:
                score = (row.get("score") or "").strip()
                # an unknown score is an empty cell; anything else must be a score, not be dropped
                if score and score_index(score) is None:
                    raise InputError(index, f"row {row.get('image')!r}: score {score!r} is not one of "
                                            "0, 1+, 2+, 3+ (leave it empty if unknown)")
                mpp = (row.get("mpp") or "").strip()
                if mpp:
                    try:
                        value = float(mpp)
                    except ValueError:
                        value = float("nan")
                    if not (np.isfinite(value) and value > 0):  # QA: -1 was kept, "abc" a traceback
                        raise InputError(index, f"row {row.get('image')!r}: mpp {mpp!r} is not a positive "
                                                "number of microns per pixel (leave it empty if unknown)")
                rows.append(dict(row))
    else:
        images = sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
            if (folder / "images").is_dir() else []
        masks_dir = folder / "masks"
        masks = sorted(m for m in masks_dir.iterdir() if m.suffix.lower() in IMAGE_SUFFIXES) \
            if masks_dir.is_dir() else []
        by_stem: dict[str, Path] = {}
        for m in masks:  # names matched literally (QA: glob read "s[0]" as a pattern)
            by_stem.setdefault(m.stem, m)
        unmatched = []
        for p in images:
            if p.stem in by_stem:
                rows.append({"image": str(p.relative_to(folder)), "mask": str(by_stem[p.stem].relative_to(folder))})
            else:
                unmatched.append(p.name)
        if unmatched and rows:
            import warnings

            warnings.warn(f"{folder}: {len(unmatched)} image(s) without a mask in masks/ left out: "
                          f"{', '.join(unmatched[:5])}{' ...' if len(unmatched) > 5 else ''}", stacklevel=2)
    if not rows:
        raise InputError(folder, "no labelled images (expected images/*.png with masks/*.png, or index.csv)")
    seen: dict[str, int] = {}
    for n, row in enumerate(rows, start=2):  # csv line numbers (line 1 is the header)
        for key in ("image", "mask"):
            row[key] = str((folder / row[key]).resolve()) if not Path(row[key]).is_absolute() else row[key]
        if row["image"] in seen:  # QA: a repeated row put one image in training and validation
            raise InputError(index, f"image {Path(row['image']).name} is listed twice (lines {seen[row['image']]} "
                                    f"and {n}); list each image once")
        seen[row["image"]] = n
        if not row.get("cells"):
            cells = folder / "cells" / (Path(row["image"]).stem + ".csv")
            if cells.is_file():
                row["cells"] = str(cells)
        elif not Path(row["cells"]).is_absolute():
            row["cells"] = str((folder / row["cells"]).resolve())
    return rows


def load_folder(folder: str | Path, rows: list[dict[str, str]] | None = None) -> list[LabelledImage]:
    """Read every (or the given) labelled image of ``folder`` into memory."""
    folder = Path(folder)
    rows = index_rows(folder) if rows is None else rows
    default_mpp = _folder_mpp(folder)
    out = []
    for row in rows:
        rgb, mask = read_rgb(Path(row["image"])), read_mask(Path(row["mask"]))
        if rgb.shape[:2] != mask.shape:
            raise InputError(row["mask"], f"mask shape {mask.shape} differs from image {rgb.shape[:2]}")
        cells = read_cells(Path(row["cells"])) if row.get("cells") else None
        mpp = row.get("mpp")
        out.append(LabelledImage(
            name=Path(row["image"]).stem, rgb=rgb, mask=mask, score=score_index(row.get("score")),
            cells=cells, mpp=float(mpp) if mpp not in (None, "") else default_mpp,
        ))
    return out


def split(n: int, seed: int, val_fraction: float = 0.1) -> tuple[list[int], list[int]]:
    """Fixed train/validation split of n images by seed: (train indices, val indices).

    At least one validation image when n >= 2; with n == 1 both are [0].
    """
    order = np.random.default_rng([seed, 7919]).permutation(n).tolist()
    if n < 2:
        return order, order
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    return sorted(order[n_val:]), sorted(order[:n_val])


def subset(indices: list[int], fraction: float, seed: int) -> list[int]:
    """A seeded subset of ``fraction`` of ``indices`` (at least one); nested across fractions."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    order = np.random.default_rng([seed, 104729]).permutation(len(indices))
    keep = max(1, round(len(indices) * fraction))
    return sorted(indices[i] for i in order[:keep])


def pattern_of_categories(categories: np.ndarray, min_cells: int = MIN_CELLS) -> int:
    """Staining pattern 0..3 of a set of cell categories (-1 if fewer than ``min_cells``).

    The highest k with more than 10% of cells in category >= k.
    """
    categories = np.asarray(categories)
    if categories.size < min_cells:
        return -1
    for k in (3, 2, 1):
        if (categories >= k).mean() > 0.10:
            return k
    return 0


class PatchSampler:
    """Random square patches (with labels) from in-memory images, reproducible by (seed, epoch)."""

    def __init__(self, images: list[LabelledImage], patch: int):
        if not images:
            raise ValueError("no training images")
        self.images = images
        self.patch = int(patch)
        # each image contributes patches in proportion to its area (at least one)
        self.per_image = [max(1, round(im.mask.size / self.patch**2)) for im in images]

    def __len__(self) -> int:
        """Patches per epoch."""
        return int(sum(self.per_image))

    def epoch_plan(self, rng: np.random.Generator) -> list[tuple[int, int, int]]:
        """Shuffled (image index, top, left) for one epoch."""
        plan = []
        for i, (im, k) in enumerate(zip(self.images, self.per_image, strict=True)):
            h, w = im.mask.shape
            for _ in range(k):
                top = int(rng.integers(0, max(h - self.patch, 0) + 1))
                left = int(rng.integers(0, max(w - self.patch, 0) + 1))
                plan.append((i, top, left))
        order = rng.permutation(len(plan))
        return [plan[j] for j in order]

    def crop(self, i: int, top: int, left: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(rgb patch, mask patch, pattern label) at (top, left), reflect-padded if the image is small."""
        im = self.images[i]
        p = self.patch
        rgb = im.rgb[top:top + p, left:left + p]
        mask = im.mask[top:top + p, left:left + p]
        ph, pw = p - rgb.shape[0], p - rgb.shape[1]
        if ph or pw:
            mode = "reflect" if ph < rgb.shape[0] and pw < rgb.shape[1] else "symmetric"
            rgb = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode=mode)
            mask = np.pad(mask, ((0, ph), (0, pw)), mode=mode)
        if im.cells is not None:
            c = im.cells
            inside = (c[:, 0] >= top) & (c[:, 0] < top + p) & (c[:, 1] >= left) & (c[:, 1] < left + p)
            label = pattern_of_categories(c[inside, 2])
        else:
            label = -1 if im.score is None else im.score
        return rgb, mask, label
