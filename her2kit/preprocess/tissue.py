"""Tissue detection at low resolution (the "tissue-otsu" preprocessor).

A whole slide is mostly glass. Before any block is segmented, a thumbnail
(a few microns per pixel) is split into tissue and glass: a per-pixel
"stain strength" (optical density summed over R, G, B, or HSV saturation) is
thresholded with Otsu's method, holes are filled and specks removed.

Otsu alone fails on a slide that is all tissue (it then splits pale stroma
from dark nuclei); the threshold is therefore clipped to a range that glass
never reaches and faint tissue always exceeds (``bounds``).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

#: Default clip range of the Otsu threshold, per method. OD (summed over R, G,
#: B, at ~8 um/px): glass (~240 grey-level, slightly tinted) is ~0.06-0.10;
#: pale stroma with scattered nuclei is ~0.12-0.16, cellular tissue higher.
#: Saturation (0-1): glass < ~0.04, tissue > ~0.1. Otsu picks inside the range
#: (so it adapts to the slide) but never outside it.
BOUNDS = {"od": (0.1, 0.12), "saturation": (0.04, 0.1)}


def _strength(rgb: np.ndarray, method: str) -> np.ndarray:
    rgb = np.asarray(rgb)
    if method == "od":
        table = -np.log10(np.maximum(np.arange(256, dtype=np.float32), 1.0) / 255.0)
        return table[rgb[..., 0]] + table[rgb[..., 1]] + table[rgb[..., 2]]
    if method == "saturation":
        f = rgb.astype(np.float32)
        hi = f.max(axis=-1)
        lo = f.min(axis=-1)
        return np.where(hi > 0, (hi - lo) / np.maximum(hi, 1.0), 0.0).astype(np.float32)
    raise ValueError(f"unknown tissue method {method!r} (use 'od' or 'saturation')")


class TissueDetector:
    """Callable: RGB uint8 thumbnail (H, W, 3) -> boolean tissue mask (H, W).

    Args:
        method: "od" (optical density summed over channels; default) or
            "saturation" (HSV saturation).
        bounds: (low, high) clip of the Otsu threshold, in the method's units.
        min_area_um2: connected tissue pieces smaller than this (square
            microns) are removed, as are holes in tissue smaller than
            ``hole_area_um2``.
        hole_area_um2: holes up to this size (square microns) are filled.
        smooth_um: radius (microns) of a closing that joins loose tissue.
    """

    def __init__(
        self,
        method: str = "od",
        bounds: tuple[float, float] | None = None,
        min_area_um2: float = 2000.0,
        hole_area_um2: float = 40000.0,
        smooth_um: float = 8.0,
    ):
        if method not in BOUNDS:
            raise ValueError(f"unknown tissue method {method!r} (use 'od' or 'saturation')")
        self.method = method
        self.bounds = tuple(bounds) if bounds is not None else BOUNDS[method]
        self.min_area_um2 = float(min_area_um2)
        self.hole_area_um2 = float(hole_area_um2)
        self.smooth_um = float(smooth_um)

    def threshold(self, rgb: np.ndarray) -> float:
        """The clipped Otsu threshold of a thumbnail, in the method's units."""
        from skimage.filters import threshold_otsu

        s = _strength(rgb, self.method)
        if s.size == 0 or float(s.max()) == float(s.min()):
            t = self.bounds[1]
        else:
            t = float(threshold_otsu(s))
        return float(np.clip(t, *self.bounds))

    def __call__(self, rgb: np.ndarray, mpp: float | None = None) -> np.ndarray:
        """Tissue mask of ``rgb`` whose pixels are ``mpp`` microns wide (None: 8)."""
        from scipy import ndimage as ndi
        from skimage import morphology

        mpp = 8.0 if mpp is None else float(mpp)
        s = _strength(rgb, self.method)
        mask = s > self.threshold(rgb)
        radius = int(round(self.smooth_um / mpp))
        if radius >= 1:
            # padded with the edge, so that tissue running off the thumbnail's
            # border is not eroded there (the closing's outside counts as glass)
            padded = np.pad(mask, radius, mode="edge")
            mask = ndi.binary_closing(padded, structure=morphology.disk(radius))[radius:-radius, radius:-radius]
        px_area = mpp * mpp
        max_hole = int(self.hole_area_um2 / px_area)
        if max_hole >= 1:
            # holes are glass enclosed by tissue: remove_small_holes would also
            # fill glass that touches the border (QA: a blank slide's thumbnail,
            # all "small hole", became all tissue)
            holes = ndi.binary_fill_holes(mask) & ~mask
            large = morphology.remove_small_objects(holes, max_size=max_hole)
            mask = mask | (holes & ~large)
        min_size = int(self.min_area_um2 / px_area)
        if min_size >= 1:
            mask = morphology.remove_small_objects(mask, max_size=min_size)
        return mask


#: The most a thumbnail read holds at once (bytes of RGB): a 1,000,000 px wide
#: single-level image read in full-width strips took 22 GB.
STRIP_BYTES = 512 * 2**20
# a level this large (pixels) takes a while to shrink: show a progress bar
LARGE_READ_PX = 2**28


def slide_thumbnail(slide: Any, target_mpp: float = 8.0, max_side: int = 4096,
                    mpp: float | None = None, progress: str | None = None) -> tuple[np.ndarray, float]:
    """A low-resolution RGB picture of a whole slide, read in strips.

    Reads the coarsest pyramid level at least as fine as ``target_mpp``
    microns/pixel (or as a ``max_side``-pixel thumbnail, whichever is coarser)
    and shrinks it to that resolution. ``mpp`` stands in for a slide that does
    not know its own (default 0.5). ``progress``: the label of a progress bar
    over the strips, shown when the level read is large (a slide with no
    coarse level is read whole: minutes).

    Returns:
        (rgb uint8 (h, w, 3), downsample: level-0 pixels per thumbnail pixel).
    """
    from PIL import Image

    h0, w0 = slide.shape
    mpp0 = slide.mpp or mpp or 0.5
    want = max(target_mpp / mpp0, max(h0, w0) / max_side, 1.0)
    level = 0
    for lv in range(slide.level_count):
        if slide.level_downsample(lv) <= want * 1.001:
            level = lv
    lh, lw = slide.level_shape(level)
    ds_level = h0 / lh
    out_h = max(1, int(round(h0 / want)))
    out_w = max(1, int(round(w0 / want)))
    factor = want / ds_level  # level pixels per thumbnail pixel
    strip_rows = max(1, int(2048 // max(factor, 1.0)))  # thumbnail rows per read
    thumb = np.empty((out_h, out_w, 3), np.uint8)
    from tqdm.auto import tqdm

    bar = tqdm(range(0, out_h, strip_rows), desc=progress, unit="strip", leave=False, file=sys.stderr,
               disable=progress is None or lh * lw < LARGE_READ_PX, dynamic_ncols=True)
    for r0 in bar:
        r1 = min(out_h, r0 + strip_rows)
        y0 = int(round(r0 * factor))
        y1 = min(lh, max(y0 + 1, int(round(r1 * factor))))
        # a strip is read whole unless it is huge (a very wide level with no
        # coarser one): then in pieces of whole thumbnail columns
        whole = (y1 - y0) * lw * 3 <= STRIP_BYTES
        piece = out_w if whole else max(1, int(STRIP_BYTES // ((y1 - y0) * 3 * max(factor, 1.0))))
        for c0 in range(0, out_w, piece):
            c1 = min(out_w, c0 + piece)
            if whole:
                x0, x1 = 0, lw
            else:
                x0 = int(round(c0 * factor))
                x1 = min(lw, max(x0 + 1, int(round(c1 * factor))))
            strip = slide.read_region(y0, x0, y1 - y0, x1 - x0, level=level)
            if strip.shape[:2] != (r1 - r0, c1 - c0):
                strip = np.asarray(Image.fromarray(strip).resize((c1 - c0, r1 - r0), Image.Resampling.BOX))
            thumb[r0:r1, c0:c1] = strip
    return thumb, float(want)


def slide_tissue_mask(
    slide: Any,
    detector: Any | None = None,
    target_mpp: float = 8.0,
    max_side: int = 4096,
    mpp: float | None = None,
) -> tuple[np.ndarray, float]:
    """Tissue mask of a :class:`~her2kit.readers.Slide` at low resolution.

    Runs ``detector`` (default :class:`TissueDetector`) on
    :func:`slide_thumbnail`.

    Returns:
        (mask, downsample): boolean (h, w) mask and the level-0 pixels per
        mask pixel.
    """
    thumb, want = slide_thumbnail(slide, target_mpp, max_side, mpp)
    return tissue_mask_of(thumb, want * (slide.mpp or mpp or 0.5), detector), want


def tissue_mask_of(thumb: np.ndarray, thumb_mpp: float, detector: Any | None = None) -> np.ndarray:
    """Run ``detector`` (default :class:`TissueDetector`) on a thumbnail of ``thumb_mpp`` um/px."""
    detector = detector or TissueDetector()
    try:
        mask = detector(thumb, mpp=thumb_mpp)
    except TypeError:  # a plugin detector that takes the image only
        mask = detector(thumb)
    return np.asarray(mask, bool)
