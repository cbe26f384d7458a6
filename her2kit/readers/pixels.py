"""Shared pixel handling for array-backed readers (TIFF, Zarr, PNG/JPEG).

Turns an n-dimensional level array with named axes ("YXS", "CYX",
"TCZYX", ...) into uint8 RGB (h, w, 3), refusing what would be misread:
greyscale, two channels, more than four channels, 16-bit, float, empty or
absurdly large images. Four channels are read as RGBA and composited over
white (exact RGB wherever alpha is 255, so opaque RGBA reads as its RGB).

Imports numpy only; dask is imported inside :meth:`ArraySlide.to_dask`.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from her2kit.errors import Her2kitError, InputError
from her2kit.readers import Slide

# pixels; beyond this an image is taken for a corrupt header. A whole 75 mm
# glass slide at 0.1 um/px is 750,000 px long; a side of 10^7 went on to fail
# reading its thumbnail (68 GB for one strip)
MAX_SIDE = 2**20
# and beyond this many pixels in all (137 Gpx: 370,000^2; the largest scans are ~30 Gpx)
MAX_PIXELS = 2**37
# Microns per pixel that a microscope image can plausibly have. Files often
# carry an editor's default (72, 96 or 300 dpi = 353, 265, 85 um/px): such a
# value is treated as unknown rather than trusted.
PLAUSIBLE_MPP = (0.01, 50.0)
_CHANNEL_AXES = "CS"  # C: channel (OME), S: sample (TIFF)


def one_line(exc: BaseException) -> str:
    """``"Type: message"`` of an exception, on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def checked_region(rgb: Any, h: int, w: int, slide: Any, path: str) -> np.ndarray:
    """``rgb`` as read from ``slide`` for an ``h`` x ``w`` region, when it is
    that: (h, w, 3) uint8. A plugin reader that returns anything else is an
    InputError naming the file and the reader (QA: half the rows were scored
    silently, a uint16 region failed late in the report)."""
    a = np.asarray(rgb)
    if a.shape == (h, w, 3) and a.dtype == np.uint8:
        return a
    raise InputError(path, f"its reader ({type(slide).__name__}) returned a {a.dtype} array of shape "
                           f"{a.shape} for a {h}x{w} region; expected ({h}, {w}, 3) uint8")


def plausible_mpp(mpp: float | None) -> float | None:
    """``mpp`` (microns per pixel) if it is a believable microscope resolution, else None."""
    if mpp is None or not np.isfinite(mpp):
        return None
    return float(mpp) if PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1] else None


def check_dtype(dtype: Any, path: str) -> None:
    """Refuse anything but 8-bit unsigned pixels, saying what the file holds."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return
    if dtype.kind in "ui":
        bits = dtype.itemsize * 8
        raise InputError(path, f"{bits}-bit image; convert to 8-bit RGB")
    if dtype.kind == "b":
        raise InputError(path, "1-bit (binary) image; her2kit needs 8-bit RGB brightfield")
    if dtype.kind in "fc":
        raise InputError(path, f"floating-point image ({dtype}); convert to 8-bit RGB")
    raise InputError(path, f"unsupported pixel type {dtype}; her2kit needs 8-bit RGB")


def check_channels(n: int, path: str) -> None:
    """Accept 3 (RGB) or 4 (RGBA) channels; refuse the rest with the count."""
    if n in (3, 4):
        return
    if n == 1:
        raise InputError(path, "greyscale image (1 channel); her2kit needs RGB brightfield")
    if n == 2:
        raise InputError(path, "image has 2 channels; her2kit needs RGB brightfield (3 channels)")
    raise InputError(path, f"image has {n} channels; her2kit needs RGB brightfield (3 channels)")


def check_size(height: int, width: int, path: str) -> None:
    """Refuse empty images, sides beyond :data:`MAX_SIDE` and areas beyond :data:`MAX_PIXELS`."""
    if height <= 0 or width <= 0:
        raise InputError(path, f"empty image ({height}x{width} pixels)")
    if height > MAX_SIDE or width > MAX_SIDE or height * width > MAX_PIXELS:
        raise InputError(path, f"absurd image size {height}x{width} pixels (corrupt header?)")


def square_mpp(mpp_x: float | None, mpp_y: float | None, path: str) -> float | None:
    """The x resolution, once the y one (when known) agrees with it within 2 %:
    cells measured on stretched pixels would have the wrong shapes and areas."""
    if mpp_x is not None and mpp_y is not None and abs(mpp_x - mpp_y) > 0.02 * max(mpp_x, mpp_y):
        raise InputError(path, f"pixels are not square ({mpp_x:.4g} um wide, {mpp_y:.4g} um tall); "
                               "resample the image to square pixels first")
    return mpp_x


def composite_over_white(rgba: np.ndarray, premultiplied: bool = False) -> np.ndarray:
    """uint8 (..., 4) RGBA -> uint8 (..., 3) RGB over a white background.

    Unassociated alpha: ``(rgb*a + 255*(255-a)) / 255`` rounded; with
    ``premultiplied`` (TIFF associated alpha, OpenSlide's ARGB): ``rgb + 255 - a``.
    Where alpha is 255 the result is the RGB values unchanged.
    """
    rgb = rgba[..., :3].astype(np.uint16)
    a = rgba[..., 3:4].astype(np.uint16)
    if premultiplied:
        out = np.minimum(rgb + (255 - a), 255)
    else:
        out = (rgb * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


class Layout:
    """Where Y, X and the channels are in a level array, and how to read them.

    ``axes`` has one letter per array dimension. Singleton axes other than
    Y/X/channel are indexed at 0; a non-singleton extra axis (a z-stack, a
    time series) is refused, as is a missing channel axis (greyscale).
    """

    def __init__(self, shape: Sequence[int], axes: str, path: str):
        axes = axes.upper()
        if len(axes) != len(shape):
            raise InputError(path, f"axes {axes!r} do not match array shape {tuple(shape)}")
        if "Y" not in axes or "X" not in axes:
            raise InputError(path, f"no Y/X axes in {axes!r}; not a 2-D image")
        if 0 in tuple(shape):
            raise InputError(path, f"empty image (array shape {tuple(shape)})")
        channel_axes = [i for i, a in enumerate(axes) if a in _CHANNEL_AXES and shape[i] > 1]
        if len(channel_axes) > 1:
            raise InputError(path, f"several channel axes in {axes!r} {tuple(shape)}")
        extra = [f"{a}={n}" for a, n in zip(axes, shape, strict=True)
                 if a not in "YX" and a not in _CHANNEL_AXES and n > 1]
        if extra:
            raise InputError(path, f"image has extra dimensions ({', '.join(extra)}); "
                                   "her2kit reads one 2-D RGB plane")
        self.y = axes.index("Y")
        self.x = axes.index("X")
        self.c = channel_axes[0] if channel_axes else None
        self.channels = 1 if self.c is None else int(shape[self.c])
        check_channels(self.channels, path)
        self.ndim = len(shape)

    def index(self, ys: slice, xs: slice) -> tuple:
        """An index tuple that selects rows ``ys``, columns ``xs``, all channels."""
        idx: list[Any] = [0] * self.ndim
        idx[self.y], idx[self.x] = ys, xs
        if self.c is not None:
            idx[self.c] = slice(None)
        return tuple(idx)

    def order(self) -> tuple[int, int, int]:
        """Transpose that takes the indexed block (kept axes, in order) to (y, x, c)."""
        kept = sorted([self.y, self.x, self.c])
        return (kept.index(self.y), kept.index(self.x), kept.index(self.c))

    def shape_of(self, shape: Sequence[int]) -> tuple[int, int]:
        return int(shape[self.y]), int(shape[self.x])


class ArraySlide(Slide):
    """A Slide over a list of level arrays (zarr arrays, numpy arrays).

    Subclasses set ``path``, ``_levels`` (array-likes with ``shape``, ``dtype``
    and numpy slicing), ``_axes`` (one letter per dimension), ``_mpp``, and
    optionally ``_premultiplied`` (associated alpha), then call
    :meth:`_validate`. Read errors (a truncated tile) become InputError.
    """

    path: str
    _levels: list[Any]
    _axes: str
    _mpp: float | None = None
    _premultiplied: bool = False

    def _validate(self) -> None:
        if not self._levels:
            raise InputError(self.path, "no image data")
        self._layouts = []
        for arr in self._levels:
            check_dtype(arr.dtype, self.path)
            layout = Layout(arr.shape, self._axes, self.path)
            check_size(*layout.shape_of(arr.shape), self.path)
            self._layouts.append(layout)

    @property
    def level_count(self) -> int:
        return len(self._levels)

    def _check_level(self, level: int) -> int:
        if not 0 <= level < len(self._levels):
            raise ValueError(f"level {level} out of range (0..{len(self._levels) - 1})")
        return level

    def level_shape(self, level: int = 0) -> tuple[int, int]:
        self._check_level(level)
        return self._layouts[level].shape_of(self._levels[level].shape)

    @property
    def mpp(self) -> float | None:
        return self._mpp

    def _to_rgb(self, block: np.ndarray, layout: Layout) -> np.ndarray:
        block = np.asarray(block)
        if layout.c is None:  # unreachable: Layout refuses greyscale
            raise InputError(self.path, "greyscale image (1 channel); her2kit needs RGB brightfield")
        block = block.transpose(layout.order())
        if block.shape[2] == 4:
            return composite_over_white(block, self._premultiplied)
        return np.ascontiguousarray(block)

    def _read(self, level: int, ys: slice, xs: slice) -> np.ndarray:
        layout = self._layouts[level]
        try:
            block = self._levels[level][layout.index(ys, xs)]
        except Her2kitError:
            raise
        except Exception as exc:
            raise InputError(self.path, f"cannot read pixels (level {level}, rows {ys.start}:{ys.stop}, "
                                        f"columns {xs.start}:{xs.stop}): {one_line(exc)}") from exc
        return self._to_rgb(block, layout)

    def read_region(self, y: int, x: int, h: int, w: int, level: int = 0) -> np.ndarray:
        """Pixels [y, y+h) x [x, x+w) of a level as uint8 (h, w, 3); white outside."""
        self._check_level(level)
        if h < 0 or w < 0:
            raise ValueError(f"negative region size {h}x{w}")
        height, width = self.level_shape(level)
        out = np.full((h, w, 3), 255, np.uint8)
        y0, y1 = max(y, 0), min(y + h, height)
        x0, x1 = max(x, 0), min(x + w, width)
        if y1 > y0 and x1 > x0:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = self._read(level, slice(y0, y1), slice(x0, x1))
        return out

    def _chunks(self, level: int) -> tuple[int, int]:
        """(rows, columns) of a natural dask chunk: the storage chunk, at least 512."""
        arr, layout = self._levels[level], self._layouts[level]
        chunks = getattr(arr, "chunks", None)
        h, w = self.level_shape(level)
        if isinstance(chunks, tuple) and len(chunks) == layout.ndim and all(isinstance(c, int) for c in chunks):
            cy, cx = chunks[layout.y], chunks[layout.x]
            # group small storage tiles so the graph stays small
            cy *= max(1, 1024 // cy)
            cx *= max(1, 1024 // cx)
        else:
            cy = cx = 1024
        return min(cy, h), min(cx, w)

    def to_dask(self, level: int = 0) -> Any:
        """A level as a lazy dask array, uint8 (H, W, 3), chunked along storage tiles.

        The graph holds (class, path, level), not open file handles, so it can
        be shipped to dask.distributed workers, which reopen the file.
        """
        import dask.array as da

        self._check_level(level)
        h, w = self.level_shape(level)
        source = _LevelSource(self, level)
        try:  # a rewritten file must not share cached graph keys with the old one
            stamp = os.stat(self.path).st_mtime_ns
        except OSError:
            stamp = 0
        name = f"her2kit-{type(self).__name__}-{self.path}-{stamp}-{level}"
        return da.from_array(source, chunks=(*self._chunks(level), 3), asarray=False,
                             name=name, fancy=False)


class _LevelSource:
    """An array-like (H, W, 3) uint8 view of one level, picklable by path."""

    def __init__(self, slide: ArraySlide, level: int):
        self.slide = slide
        self.level = level
        h, w = slide.level_shape(level)
        self.shape = (h, w, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (3 - len(key))
        ys, xs, cs = (k.indices(n) for k, n in zip(key, self.shape, strict=True))
        if ys[2] != 1 or xs[2] != 1:
            raise IndexError("strided reads are not supported")
        block = self.slide._read(self.level, slice(ys[0], max(ys[0], ys[1])),
                                 slice(xs[0], max(xs[0], xs[1])))
        return block[:, :, slice(*cs)]

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return _reopen_level, (type(self.slide), self.slide.path, self.level)


_reopen_lock = threading.Lock()


@functools.lru_cache(maxsize=16)
def _reopen(cls: type, path: str) -> ArraySlide:
    return cls(path)


def _reopen_level(cls: type, path: str, level: int) -> _LevelSource:
    """Unpickle a level source in another process: open the file once per process."""
    with _reopen_lock:
        slide = _reopen(cls, path)
    return _LevelSource(slide, level)
