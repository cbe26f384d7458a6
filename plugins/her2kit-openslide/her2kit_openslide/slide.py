"""A her2kit Slide over openslide.OpenSlide (imported only when a slide is opened)."""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
import openslide

from her2kit.errors import InputError
from her2kit.readers import Slide
from her2kit.readers.pixels import square_mpp

TILE = 1024  # pixels per side of a to_dask chunk


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """uint8 (h, w, 4) RGBA -> (h, w, 3) RGB over white.

    OpenSlide returns un-premultiplied RGBA with alpha 0 outside the scanned
    area (and outside the image); those pixels become white, as glass. Fully
    opaque pixels keep their RGB values exactly.
    """
    rgb = rgba[..., :3].astype(np.uint16)
    a = rgba[..., 3:4].astype(np.uint16)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


class OpenSlideSlide(Slide):
    """A slide in any format OpenSlide reads, as a her2kit Slide.

    Levels and their sizes are OpenSlide's; mpp is ``openslide.mpp-x``
    (microns per pixel at level 0) or None. Errors (unsupported format,
    corrupt tiles) become her2kit InputError naming the file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            raise InputError(self.path, "is a directory, not a slide file")
        try:
            if os.path.getsize(self.path) == 0:
                raise InputError(self.path, "empty file (0 bytes)")
        except OSError as exc:
            raise InputError(self.path, f"cannot open: {_one_line(exc)}") from None
        try:
            self._osr = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError:
            raise InputError(self.path, "OpenSlide does not recognise this file format") from None
        except Exception as exc:  # OpenSlideError, OSError
            raise InputError(self.path, f"OpenSlide cannot open it: {_one_line(exc)}") from None
        w, h = self._osr.dimensions
        if w <= 0 or h <= 0:
            raise InputError(self.path, f"empty image ({h}x{w} pixels)")
        x, y = (_float(self._osr.properties.get(name))
                for name in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y))
        self._mpp = square_mpp(x, y, self.path)

    @property
    def level_count(self) -> int:
        return self._osr.level_count

    def level_shape(self, level: int = 0) -> tuple[int, int]:
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} out of range (0..{self.level_count - 1})")
        w, h = self._osr.level_dimensions[level]
        return h, w

    @property
    def mpp(self) -> float | None:
        return self._mpp

    def level_downsample(self, level: int) -> float:
        return float(self._osr.level_downsamples[level])

    def read_region(self, y: int, x: int, h: int, w: int, level: int = 0) -> np.ndarray:
        """Pixels [y, y+h) x [x, x+w) of a level as uint8 (h, w, 3); white outside."""
        self.level_shape(level)  # range check
        if h < 0 or w < 0:
            raise ValueError(f"negative region size {h}x{w}")
        if h == 0 or w == 0:
            return np.full((h, w, 3), 255, np.uint8)
        ds = self._osr.level_downsamples[level]
        # OpenSlide takes the top-left corner in level-0 pixels
        location = (int(round(x * ds)), int(round(y * ds)))
        try:
            image = self._osr.read_region(location, level, (w, h))
        except Exception as exc:
            raise InputError(self.path, f"cannot read pixels (level {level}, y={y}, x={x}, "
                                        f"{h}x{w}): {_one_line(exc)}") from None
        return _over_white(np.asarray(image))

    def to_dask(self, level: int = 0) -> Any:
        """A level as a lazy dask array, uint8 (H, W, 3), in TILE x TILE chunks.

        Each chunk is a delayed read that reopens the slide by path (once per
        process), so the graph can go to dask.distributed workers.
        """
        import dask
        import dask.array as da

        height, width = self.level_shape(level)
        read = dask.delayed(_read_tile, pure=True)
        rows = []
        for y in range(0, height, TILE):
            h = min(TILE, height - y)
            row = []
            for x in range(0, width, TILE):
                w = min(TILE, width - x)
                row.append(da.from_delayed(read(self.path, level, y, x, h, w),
                                           shape=(h, w, 3), dtype=np.uint8))
            rows.append(row)
        # block() nests one list per axis: rows (y), columns (x), channels (one block)
        return da.block([[[tile] for tile in row] for row in rows])

    def close(self) -> None:
        osr = getattr(self, "_osr", None)
        if osr is not None:
            osr.close()


@functools.lru_cache(maxsize=8)
def _cached(path: str) -> OpenSlideSlide:
    return OpenSlideSlide(path)


def _read_tile(path: str, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
    return _cached(path).read_region(y, x, h, w, level)


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
