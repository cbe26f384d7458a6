"""A small OME-Zarr (NGFF 0.4, Zarr format 2) writer shared by the synthesiser and the pipelines.

Layout written (readable by napari, ome-zarr-py and QuPath through Bio-Formats):

    ROOT/                    multiscale RGB image, axes (c, y, x), uint8
      0/ 1/ ...              pyramid levels, each half the size of the one before
      labels/                {"labels": [names]}
        NAME/                multiscale label image, axes (y, x), integer,
          0/ 1/ ...          with "image-label" metadata (colours, source)

Coordinates are microns: level ``l`` has scale ``mpp * 2**l`` on y and x.
Chunks are square (``chunk`` pixels; images also hold all three channels
in one chunk), separated by "/" as NGFF 0.4 requires.

Typical use, never holding a level in memory::

    root = create_multiscale_image("a.zarr", (h, w), mpp=0.5, chunk=1024)
    sem = create_labels(root, "semantic", (h, w), mpp=0.5, dtype="uint8")
    for (y, x, block) in blocks:                  # (bh, bw, 3) uint8
        write_region(root["0"], y, x, block)
    build_pyramid(root)                           # mean of 2 x 2
    build_pyramid(sem, labels=True)               # nearest (ids stay ids)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

NGFF_VERSION = "0.4"

#: Default colours (RGBA) for the semantic classes 1 membrane, 2 nucleus.
SEMANTIC_COLORS = {1: (140, 80, 20, 255), 2: (40, 60, 200, 255)}


def default_levels(shape_hw: tuple[int, int], chunk: int = 1024, min_side: int = 256) -> int:
    """Number of pyramid levels: halve until the larger side is <= max(chunk, min_side)."""
    side = max(shape_hw)
    target = max(min(chunk, side), min_side)
    return 1 + max(0, math.ceil(math.log2(side / target))) if side > target else 1


def level_shapes(shape_hw: tuple[int, int], levels: int) -> list[tuple[int, int]]:
    """(height, width) of each level: level l is ceil(shape / 2**l)."""
    h, w = shape_hw
    return [(-(-h // 2**i), -(-w // 2**i)) for i in range(levels)]


def _compressor() -> Any:
    from numcodecs import Blosc

    return Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE)


def open_root(path_or_group: Any, mode: str = "a") -> Any:
    """A zarr Group from a path (Zarr format 2) or an existing Group."""
    import zarr

    if isinstance(path_or_group, (str, os.PathLike)):
        return zarr.open_group(os.fspath(path_or_group), mode=mode, zarr_format=2)
    return path_or_group


def _datasets(levels: int, mpp: float, channel: bool) -> list[dict]:
    out = []
    for i in range(levels):
        s = mpp * 2**i
        scale = [1.0, s, s] if channel else [s, s]
        out.append({"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    return out


def _axes(channel: bool) -> list[dict]:
    space = [{"name": "y", "type": "space", "unit": "micrometer"},
             {"name": "x", "type": "space", "unit": "micrometer"}]
    return ([{"name": "c", "type": "channel"}] if channel else []) + space


def _create_levels(group: Any, shape: tuple[int, ...], levels: int, chunk: int, dtype: Any,
                   channel: bool, fill_value: int) -> None:
    for i, (h, w) in enumerate(level_shapes(shape[-2:], levels)):
        shp = (shape[0], h, w) if channel else (h, w)
        chunks = (shape[0], min(chunk, h), min(chunk, w)) if channel else (min(chunk, h), min(chunk, w))
        group.create_array(str(i), shape=shp, chunks=chunks, dtype=dtype, compressors=_compressor(),
                           fill_value=fill_value, chunk_key_encoding={"name": "v2", "separator": "/"},
                           overwrite=True)


def create_multiscale_image(path: str | os.PathLike | Any, shape_hw: tuple[int, int], mpp: float | None,
                            chunk: int = 1024, levels: int | None = None, dtype: str = "uint8",
                            channels: int = 3, name: str = "image", fill_value: int = 255) -> Any:
    """Create (empty) an NGFF 0.4 multiscale image, axes (c, y, x); returns its root Group.

    ``shape_hw``: level-0 (height, width) in pixels; ``mpp``: microns per
    pixel at level 0 (None writes unit-less pixel scales); ``chunk``: chunk
    side in pixels; ``levels``: pyramid depth (default :func:`default_levels`).
    Unwritten chunks read as ``fill_value`` (255: white glass).
    """
    root = open_root(path, mode="w") if isinstance(path, (str, os.PathLike)) else path
    levels = default_levels(shape_hw, chunk) if levels is None else int(levels)
    _create_levels(root, (channels, *shape_hw), levels, chunk, dtype, True, fill_value)
    axes = _axes(True)
    if mpp is None:
        for a in axes[1:]:
            a.pop("unit")
    ms = {"version": NGFF_VERSION, "name": name, "axes": axes,
          "datasets": _datasets(levels, 1.0 if mpp is None else float(mpp), True),
          "type": "mean", "metadata": {"method": "2x2 mean, block by block"}}
    attrs: dict[str, Any] = {"multiscales": [ms]}
    if channels == 3:
        attrs["omero"] = {
            "name": name, "version": NGFF_VERSION, "rdefs": {"model": "color"},
            "channels": [{"label": lab, "color": col, "active": True,
                          "window": {"start": 0, "end": 255, "min": 0, "max": 255}}
                         for lab, col in (("R", "FF0000"), ("G", "00FF00"), ("B", "0000FF"))],
        }
    root.attrs.update(attrs)
    return root


def create_labels(root: str | os.PathLike | Any, name: str, shape_hw: tuple[int, int], mpp: float | None,
                  chunk: int = 1024, levels: int | None = None, dtype: str = "uint32",
                  colors: dict[int, tuple[int, int, int, int]] | None = None,
                  properties: dict[int, dict] | None = None) -> Any:
    """Create (empty) ``labels/<name>`` under an image root: NGFF 0.4 image-label, axes (y, x).

    Registers ``name`` in ``labels/.zattrs``. ``colors`` maps label values to
    RGBA; ``properties`` maps label values to extra key/values (e.g. class
    names). Returns the label's Group.
    """
    root = open_root(root)
    labels = root.require_group("labels")
    names = list(labels.attrs.get("labels", []))
    if name not in names:
        names.append(name)
    labels.attrs.update({"labels": names})
    group = labels.create_group(name, overwrite=True)
    levels = default_levels(shape_hw, chunk) if levels is None else int(levels)
    _create_levels(group, tuple(shape_hw), levels, chunk, dtype, False, 0)
    axes = _axes(False)
    if mpp is None:
        for a in axes:
            a.pop("unit")
    image_label: dict[str, Any] = {"version": NGFF_VERSION, "source": {"image": "../../"}}
    if colors:
        image_label["colors"] = [{"label-value": int(k), "rgba": [int(c) for c in v]} for k, v in colors.items()]
    if properties:
        image_label["properties"] = [{"label-value": int(k), **v} for k, v in properties.items()]
    group.attrs.update({
        "multiscales": [{"version": NGFF_VERSION, "name": name, "axes": axes,
                         "datasets": _datasets(levels, 1.0 if mpp is None else float(mpp), False),
                         "type": "nearest", "metadata": {"method": "nearest (top-left of each 2 x 2)"}}],
        "image-label": image_label,
    })
    return group


def write_region(array: Any, y: int, x: int, data: np.ndarray, channel_first: bool = False) -> None:
    """Write ``data`` at pixel (y, x) of one level.

    Image levels (c, y, x) take (h, w, c) data, or (c, h, w) with
    ``channel_first``; label levels (y, x) take (h, w). Align y, x and the
    size to the chunk grid when several writers share an array (chunks are
    rewritten whole).
    """
    if array.ndim == 3:
        if not channel_first:
            data = np.moveaxis(data, -1, 0)
        array[:, y:y + data.shape[1], x:x + data.shape[2]] = data
    else:
        array[y:y + data.shape[0], x:x + data.shape[1]] = data


def _reduce(block: np.ndarray, labels: bool) -> np.ndarray:
    """2 x 2 reduction of the last two axes: mean (rounded) for images, top-left for labels."""
    if labels:
        return block[..., ::2, ::2]
    h, w = block.shape[-2:]
    if h % 2 or w % 2:  # replicate the last row/column so the mean stays unbiased at the edge
        pad = [(0, 0)] * (block.ndim - 2) + [(0, h % 2), (0, w % 2)]
        block = np.pad(block, pad, mode="edge")
    b = block.astype(np.uint16)
    s = b[..., 0::2, 0::2] + b[..., 1::2, 0::2] + b[..., 0::2, 1::2] + b[..., 1::2, 1::2]
    return ((s + 2) // 4).astype(block.dtype)


def chunk_grid(shape_hw: tuple[int, int], chunk: int | tuple[int, int]) -> Iterable[tuple[int, int, int, int]]:
    """(y, x, h, w) of each chunk-aligned block covering ``shape_hw``, row by row.

    ``chunk``: the chunk side, or its (height, width) when the chunks are not
    square (a level narrower or shorter than the chunk size has chunks of its
    own width or height).
    """
    H, W = shape_hw
    ch, cw = (int(chunk), int(chunk)) if np.ndim(chunk) == 0 else (int(c) for c in chunk)
    for y in range(0, H, ch):
        for x in range(0, W, cw):
            yield y, x, min(ch, H - y), min(cw, W - x)


def build_pyramid(group: str | os.PathLike | Any, labels: bool | None = None, workers: int = 1,
                  progress: bool = False) -> None:
    """Fill levels 1.. of a multiscale group from level 0, one output chunk at a time.

    Memory: one level-(l-1) region of 2 x 2 chunks per worker, whatever the
    image size. ``labels`` (default: from the group's "image-label"
    attribute) picks nearest instead of the mean.
    """
    group = open_root(group)
    if labels is None:
        labels = "image-label" in group.attrs
    datasets = group.attrs["multiscales"][0]["datasets"]
    paths = [d["path"] for d in datasets]
    for prev, cur in zip(paths[:-1], paths[1:], strict=False):
        src, dst = group[prev], group[cur]
        # one task per output chunk, on the chunk grid of both axes: tasks writing parts
        # of one chunk at once would race (each rewrites the whole chunk) and lose data
        tiles = list(chunk_grid(dst.shape[-2:], dst.chunks[-2:]))

        def one(t: tuple[int, int, int, int], src=src, dst=dst) -> None:
            y, x, h, w = t
            block = np.asarray(src[..., 2 * y:2 * (y + h), 2 * x:2 * (x + w)])
            out = _reduce(block, labels)[..., :h, :w]
            dst[..., y:y + h, x:x + w] = out

        _run(one, tiles, workers, progress, f"pyramid level {cur}")


def _run(fn, items: list, workers: int, progress: bool, desc: str) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(items), desc=desc, unit="chunk", disable=not progress, leave=False)
    if workers <= 1:
        for it in items:
            fn(it)
            bar.update()
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(fn, items):
                bar.update()
    bar.close()
