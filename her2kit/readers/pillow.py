"""PNG and JPEG reader through Pillow (one level, decoded whole when opened).

mpp comes from the PNG ``pHYs`` chunk (pixels per metre) or the JPEG JFIF/EXIF
density (dots per inch): mpp = 25400 / dpi. A density that no microscope
image has (72, 96, 300 dpi: editors' defaults) counts as unknown, so the
user is asked for ``--mpp`` instead of the image being resampled wrongly.

Modes: RGB as is; palette images expanded through their palette; RGBA
composited over white, which leaves fully opaque pixels unchanged;
greyscale, 2-channel (LA), 16-bit, 32-bit integer, float, bilevel and CMYK
images are refused. A JPEG's EXIF orientation is applied (pixels as viewers
show them); pixels that are not square (x and y densities differ) are refused.
"""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np

from her2kit.errors import Her2kitError, InputError
from her2kit.readers.pixels import ArraySlide, check_size, one_line, plausible_mpp, square_mpp

# Decoded whole, so cap the pixel count (3 GiB of RGB); larger images belong
# in a tiled TIFF or OME-Zarr.
MAX_PIXELS = 2**30
_pillow_lock = threading.Lock()
_ORIENTATION = 0x0112  # EXIF tag

_REFUSED = {
    "L": "greyscale image (1 channel); her2kit needs RGB brightfield",
    "1": "1-bit (binary) image; her2kit needs 8-bit RGB brightfield",
    "LA": "image has 2 channels (greyscale + alpha); her2kit needs RGB brightfield",
    "La": "image has 2 channels (greyscale + alpha); her2kit needs RGB brightfield",
    "PA": "image has 2 channels (palette + alpha); convert to RGB",
    "I": "32-bit integer image; convert to 8-bit RGB",
    "F": "floating-point image; convert to 8-bit RGB",
    "CMYK": "CMYK image; convert to RGB",
}


class PillowSlide(ArraySlide):
    """A PNG or JPEG file as a one-level Slide (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        from PIL import Image

        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            raise InputError(self.path, "is a directory, not an image file")
        try:
            if os.path.getsize(self.path) == 0:
                raise InputError(self.path, "empty file (0 bytes)")
        except OSError as exc:
            raise InputError(self.path, f"cannot open: {one_line(exc)}") from None
        try:
            with _pillow_lock, warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    with Image.open(self.path) as im:
                        self._load(im)
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
        except Her2kitError:
            raise
        except Image.UnidentifiedImageError:
            raise InputError(self.path, "not a readable image: Pillow does not recognise the format") from None
        except Exception as exc:
            raise InputError(self.path, f"not a readable image: {one_line(exc)}") from None
        self._axes = "YXC"
        self._validate()

    def _load(self, im) -> None:
        from PIL import Image

        width, height = im.size
        check_size(height, width, self.path)
        if height * width > MAX_PIXELS:
            raise InputError(self.path, f"{height}x{width} pixels is too large to decode whole; "
                                        "convert it to a tiled TIFF or OME-Zarr")
        mode = im.mode
        # Pillow opens a 48/64-bit PNG as 8-bit RGB(A), keeping the high bytes
        rawmode = str(im.tile[0].args if im.tile else "")
        if mode.startswith("I;16") or ";16" in rawmode:
            raise InputError(self.path, "16-bit image; convert to 8-bit RGB")
        if mode in _REFUSED:
            raise InputError(self.path, _REFUSED[mode])
        self._mpp = self._find_mpp(im)
        orientation = im.getexif().get(_ORIENTATION, 1)
        if mode == "P":
            has_alpha = "transparency" in im.info or im.palette.mode == "RGBA"
            im = im.convert("RGBA" if has_alpha else "RGB")
        elif mode in ("YCbCr", "LAB", "HSV", "RGBX"):
            im = im.convert("RGB")
        elif mode == "RGBa":  # premultiplied alpha
            im = im.convert("RGBA")
        elif mode not in ("RGB", "RGBA"):
            raise InputError(self.path, f"unsupported image mode {mode!r}; convert to 8-bit RGB")
        im.load()
        # a camera's JPEG stored sideways: cells.csv and the overlay must match
        # the image as viewers show it (ImageOps.exif_transpose's table; its
        # EXIF does not survive the conversions above)
        T = Image.Transpose
        turn = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE,
                6: T.ROTATE_270, 7: T.TRANSVERSE, 8: T.ROTATE_90}.get(orientation)
        if turn is not None:
            im = im.transpose(turn)
        self._levels = [np.asarray(im)]

    def _find_mpp(self, im) -> float | None:
        dpi = im.info.get("dpi")
        if not dpi:
            return None
        mpp = []
        for value in (dpi[0], dpi[1] if len(dpi) > 1 else dpi[0]):
            try:
                per_inch = float(value)
            except (TypeError, ValueError):
                return None
            mpp.append(plausible_mpp(25400.0 / per_inch) if per_inch > 0 else None)
        return square_mpp(mpp[0], mpp[1], self.path)
