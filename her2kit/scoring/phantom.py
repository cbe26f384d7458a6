"""A tiny cell phantom with known membrane categories, for tests and docs.

Much simpler than :mod:`her2kit.synth` (no texture, no stroma field): cells
on a jittered hexagonal lattice, a round nucleus in each, each cell's own
membrane as the inner edge of its Voronoi region, and DAB on that membrane
according to the cell's category (DAB ODs on the scale the calibrated
thresholds expect). As in :mod:`her2kit.synth`, the mask's membrane class
marks stained membrane only. Useful to check the cell logic without the
full generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: (completeness, DAB OD) drawn for each category.
STAINING = {0: (0.0, 0.0), 1: (0.4, 0.07), 2: (1.0, 0.22), 3: (1.0, 0.6)}


@dataclass
class Phantom:
    rgb: np.ndarray          # uint8 (H, W, 3)
    mask: np.ndarray         # uint8 (H, W): 0 background, 1 membrane, 2 nucleus
    cells: np.ndarray        # uint32 (H, W) cell instances (ids 1..n)
    categories: np.ndarray   # int (n,) category of cell id i+1
    centres: np.ndarray      # float (n, 2) y, x in pixels
    mpp: float


def make_phantom(categories: list[int] | np.ndarray, mpp: float = 0.5, spacing_um: float = 15.0,
                 nucleus_um: float = 7.0, membrane_um: float = 1.0, seed: int = 0,
                 stroma: int = 0) -> Phantom:
    """Cells with the given categories, laid out row by row; image size follows from their number.

    ``stroma`` adds that many small dark round lymphocyte-like nuclei (no
    membrane) to the right of the cells; they must not count as tumour.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    from her2kit.preprocess.stain import HedDeconvolver

    rng = np.random.default_rng(seed)
    cats = np.asarray(categories, dtype=np.int64)
    n = cats.size
    cols = max(1, int(np.ceil(np.sqrt(n))))
    rows = int(np.ceil(n / cols))
    sp = spacing_um / mpp
    margin = int(sp)
    extra_w = int(sp * 2) if stroma else 0
    h = int(rows * sp * 0.87 + 2 * margin)
    w = int(cols * sp + sp / 2 + 2 * margin) + extra_w
    centres = []
    for i in range(n):
        r, c = divmod(i, cols)
        y = margin + sp / 2 + r * sp * 0.87
        x = margin + sp / 2 + c * sp + (sp / 2 if r % 2 else 0)
        centres.append((y + rng.uniform(-1, 1), x + rng.uniform(-1, 1)))
    centres = np.array(centres)
    yy, xx = np.mgrid[0:h, 0:w]
    # Voronoi regions limited to 0.6 spacing from the centre
    seeds = np.zeros((h, w), dtype=np.int32)
    for i, (y, x) in enumerate(centres):
        seeds[int(round(y)), int(round(x))] = i + 1
    dist, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    cells = np.where(dist <= 0.6 * sp, seeds[iy, ix], 0).astype(np.uint32)
    mem_px = max(1, int(round(membrane_um / mpp)))
    edge = find_boundaries(cells, mode="inner") & (cells > 0)
    membrane = ndi.binary_dilation(edge, iterations=mem_px - 1) & (cells > 0) if mem_px > 1 else edge
    r_nuc = nucleus_um / 2 / mpp
    nucleus = np.zeros((h, w), dtype=bool)
    for y, x in centres:
        nucleus |= (yy - y) ** 2 + (xx - x) ** 2 <= r_nuc**2
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[nucleus] = 2

    conc = np.zeros((h, w, 3), dtype=np.float64)
    conc[..., 0] = np.where(cells > 0, 0.06, 0.02)
    conc[nucleus, 0] = 0.55
    my, mx = np.nonzero(membrane & ~nucleus)
    owner = cells[my, mx].astype(np.int64) - 1
    ang = np.arctan2(my - centres[owner, 0], mx - centres[owner, 1])  # -pi..pi
    start = rng.uniform(-np.pi, np.pi, size=n)
    frac = (np.mod(ang - start[owner], 2 * np.pi)) / (2 * np.pi)
    completeness = np.array([STAINING[int(c)][0] for c in cats])
    od = np.array([STAINING[int(c)][1] for c in cats])
    on = frac < completeness[owner]
    conc[my[on], mx[on], 1] = od[owner[on]]
    # as in her2kit.synth, the membrane class marks stained membrane only
    mask[my[on], mx[on]] = 1
    if stroma:
        x0 = w - extra_w + sp / 2
        for j in range(stroma):
            y = margin + sp / 2 + j * sp * 0.8
            if y > h - margin:
                break
            disc = (yy - y) ** 2 + (xx - x0) ** 2 <= (2.2 / mpp) ** 2
            mask[disc] = 2
            conc[disc, 0] = 0.9
    conc = ndi.gaussian_filter(conc, sigma=(0.7, 0.7, 0))
    rgb = HedDeconvolver().to_rgb(conc).astype(np.int16)
    rgb += rng.integers(-2, 3, size=rgb.shape).astype(np.int16)
    return Phantom(rgb=np.clip(rgb, 0, 255).astype(np.uint8), mask=mask, cells=cells,
                   categories=cats, centres=centres, mpp=mpp)
