"""TIFF reader through tifffile: plain TIFF, tiled pyramidal OME-TIFF, SVS, NDPI.

Levels come from the largest image's ``series[i].levels`` (a macro photo or
label may come first) and are read through tifffile's zarr
store, tile by tile. The resolution (mpp, microns per pixel) comes from, in
order: OME-XML ``PhysicalSizeX`` (with its unit), the Aperio description
(``MPP = 0.2520``), ImageJ's ``unit=micron`` with the resolution tags, or the
``ResolutionUnit``/``XResolution`` tags (inch, centimetre; NDPI writes these).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import numpy as np

from her2kit.errors import Her2kitError, InputError
from her2kit.readers.pixels import ArraySlide, one_line, plausible_mpp, square_mpp

_SVS_MPP = re.compile(r"\|\s*MPP\s*=\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)")
# microns per unit, for OME UnitsLength values and ImageJ's unit names
_MICRONS = {
    "pm": 1e-6, "Å": 1e-4, "nm": 1e-3, "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0,
    "microns": 1.0, "micrometer": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6,
}


class TiffSlide(ArraySlide):
    """A TIFF-family file opened with tifffile (see the module docstring).

    Raises InputError naming the file when it is missing, empty, not a TIFF,
    truncated (tiles that point past the end of the file), or holds pixels
    her2kit would misread (greyscale, 2 channels, 16-bit, float, palette, CMYK).
    RGBA is composited over white.
    """

    def __init__(self, path: str | os.PathLike):
        import tifffile

        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            raise InputError(self.path, "is a directory, not a TIFF file")
        try:
            size = os.path.getsize(self.path)
        except OSError as exc:
            raise InputError(self.path, f"cannot open: {one_line(exc)}") from None
        if size == 0:
            raise InputError(self.path, "empty file (0 bytes)")
        # tifffile logs what it finds wrong in a damaged file; the InputError
        # below says it on one line instead
        with _silence("tifffile"):
            try:
                self._tif = tifffile.TiffFile(self.path)
            except Exception as exc:
                raise InputError(self.path, f"not a readable TIFF: {one_line(exc)}") from None
            try:
                self._open(tifffile, size)
            except Her2kitError:
                self.close()
                raise
            except Exception as exc:
                self.close()
                raise InputError(self.path, f"not a readable TIFF: {one_line(exc)}") from None

    def _open(self, tifffile: Any, size: int) -> None:
        import zarr

        tif = self._tif
        if not tif.series:
            raise InputError(self.path, "TIFF holds no image")
        self._series_index = _main_series(tif.series)
        series = tif.series[self._series_index]
        page = series.keyframe
        photometric = page.photometric
        if photometric == tifffile.PHOTOMETRIC.PALETTE:
            raise InputError(self.path, "palette (indexed-colour) TIFF; convert to RGB")
        if photometric == tifffile.PHOTOMETRIC.SEPARATED:
            raise InputError(self.path, "CMYK TIFF; convert to RGB")
        if (photometric in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.MINISWHITE)
                and page.samplesperpixel == 1 and len(series.shape) > 2
                and not set(series.axes) & set("CS")):  # (OME channel planes are RGB: kept)
            # (an RGB array written as greyscale reads as a stack of grey pages:
            # QA got "extra dimensions (Q=512)")
            raise InputError(self.path, f"greyscale TIFF with {len(series.pages)} pages of "
                                        f"{page.shape[0]}x{page.shape[1]} pixels; her2kit needs RGB "
                                        "(if these are colour channels, write it with photometric RGB)")
        # ExtraSamples 1 = associated (premultiplied) alpha
        self._premultiplied = bool(page.extrasamples) and int(page.extrasamples[0]) == 1
        self._axes = series.axes
        levels = list(series.levels)
        for lvl in levels:
            self._check_complete(lvl, size)
        # keep zarr arrays open over the file handle tifffile already holds
        self._stores = [series.aszarr(level=i) for i in range(len(levels))]
        self._levels = [zarr.open_array(store, mode="r") for store in self._stores]
        # check metadata before pixels, so the first error is about the data kind
        self._mpp = self._find_mpp(tifffile, series)
        self._validate()

    def _check_complete(self, level: Any, size: int) -> None:
        """Refuse a truncated file at open: every tile must lie inside it."""
        for page in level.pages:
            if page is None:
                continue
            offsets = np.asarray(page.dataoffsets, dtype=np.int64)
            counts = np.asarray(page.databytecounts, dtype=np.int64)
            if offsets.size == 0:
                continue
            end = int((offsets + counts).max())
            if end > size:
                raise InputError(self.path, f"truncated TIFF: image data run to byte {end} "
                                            f"but the file has {size} bytes")

    def _find_mpp(self, tifffile: Any, series: Any) -> float | None:
        tif = self._tif
        page = series.keyframe
        if tif.is_ome:
            index = self._series_index
            mpp = square_mpp(_ome_size(tif.ome_metadata, "X", index), _ome_size(tif.ome_metadata, "Y", index),
                             self.path)
            if mpp is not None:
                return mpp
        if tif.is_svs:  # Aperio: "...|MPP = 0.2520|..."
            match = _SVS_MPP.search(page.description or "")
            if match:
                return float(match.group(1))
        unit = page.tags.get("ResolutionUnit")
        unit_value = int(unit.value) if unit is not None else 2  # TIFF default: inch
        microns = {2: 25400.0, 3: 10000.0, 4: 1000.0, 5: 1.0}.get(unit_value)
        if unit_value == 1 and tif.is_imagej:
            microns = _MICRONS.get(str((tif.imagej_metadata or {}).get("unit", "")).strip())
        if microns is None:
            return None
        mpp_x, mpp_y = (_tag_mpp(page.tags.get(name), microns) for name in ("XResolution", "YResolution"))
        return square_mpp(mpp_x, mpp_y, self.path)

    def close(self) -> None:
        tif = getattr(self, "_tif", None)
        if tif is not None:
            self._tif = None
            tif.close()

    def __del__(self) -> None:  # a slide dropped without close() must not leak its handle
        try:
            self.close()
        except Exception:
            pass


def _main_series(series: list) -> int:
    """Index of the image with the most pixels: a file may hold a macro photo,
    a label or a thumbnail beside the scan, and not always after it (QA: an
    OME-TIFF with the macro first was scored from the macro)."""
    def pixels(s: Any) -> int:
        axes, shape = s.axes, s.shape
        if "Y" not in axes or "X" not in axes:
            return 0
        return int(shape[axes.index("Y")]) * int(shape[axes.index("X")])

    sizes = [pixels(s) for s in series]
    return sizes.index(max(sizes))


@contextlib.contextmanager
def _silence(logger_name: str) -> Iterator[None]:
    """Drop a library's log records for the duration (its errors become InputError)."""
    logger = logging.getLogger(logger_name)
    drop = logging.Filter("-")  # matches no logger name, so rejects every record
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _tag_mpp(tag: Any, microns: float) -> float | None:
    """Microns per pixel from a TIFF X/YResolution tag (pixels per unit), or None."""
    if tag is None:
        return None
    num, den = tag.value if isinstance(tag.value, tuple) else (tag.value, 1)
    if not num or not den:
        return None
    return plausible_mpp(microns / (num / den))


def _ome_size(xml: str | None, axis: str = "X", image_index: int = 0) -> float | None:
    """PhysicalSize{axis} of an OME image in microns, or None."""
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    images = [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Image"]
    if not images:
        return None
    image = images[min(image_index, len(images) - 1)]
    for el in image.iter():
        if el.tag.rsplit("}", 1)[-1] == "Pixels":
            size = el.get(f"PhysicalSize{axis}")
            if size is None:
                return None
            factor = _MICRONS.get(el.get(f"PhysicalSize{axis}Unit", "µm"))
            if factor is None:
                return None
            try:
                return float(size) * factor
            except ValueError:
                return None
    return None
