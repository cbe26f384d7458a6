"""The block grid of a slide: block regions, halos, tissue-aware selection.

Blocks are laid out in level-0 pixels (the labels are written at level 0), so
that every block owns an exact, disjoint region of the output and block
borders fall on label-chunk borders (concurrent writers never share a chunk).
A block is ``block`` pixels wide at the segmenter's resolution, which is
``scale`` = model mpp / slide mpp level-0 pixels per model pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Block:
    """One block: its index in the grid and the level-0 region it owns."""

    index: int
    row: int
    col: int
    y: int
    x: int
    h: int
    w: int


@dataclass(frozen=True)
class Grid:
    """A grid of blocks over a level-0 image of ``shape`` (pixels).

    ``block0`` and ``halo0`` are the block side and halo in level-0 pixels;
    ``scale`` is level-0 pixels per segmenter pixel.
    """

    shape: tuple[int, int]
    block0: int
    halo0: int
    scale: float

    @property
    def rows(self) -> int:
        return math.ceil(self.shape[0] / self.block0)

    @property
    def cols(self) -> int:
        return math.ceil(self.shape[1] / self.block0)

    def __len__(self) -> int:
        return self.rows * self.cols

    def block(self, index: int) -> Block:
        """The block with this index (row-major)."""
        row, col = divmod(index, self.cols)
        y, x = row * self.block0, col * self.block0
        return Block(index, row, col, y, x,
                     min(self.block0, self.shape[0] - y), min(self.block0, self.shape[1] - x))

    def blocks(self) -> list[Block]:
        """All blocks, row-major."""
        return [self.block(i) for i in range(len(self))]

    def neighbours(self, index: int) -> list[int]:
        """Indices of the up-to-8 blocks around ``index``."""
        row, col = divmod(index, self.cols)
        out = []
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                r, c = row + dr, col + dc
                if (dr or dc) and 0 <= r < self.rows and 0 <= c < self.cols:
                    out.append(r * self.cols + c)
        return out

    def extent(self, block: Block) -> tuple[int, int, int, int]:
        """(y, x, h, w) level-0 region of the block plus its halo, clipped to the image.

        Clipped, not padded: a block at the slide's edge sees the same image
        edge as the whole slide would, so cells there come out the same.
        """
        y0, x0 = max(0, block.y - self.halo0), max(0, block.x - self.halo0)
        y1 = min(self.shape[0], block.y + block.h + self.halo0)
        x1 = min(self.shape[1], block.x + block.w + self.halo0)
        return y0, x0, y1 - y0, x1 - x0

    def model_shape(self, block: Block) -> tuple[int, int]:
        """(h, w) in segmenter pixels of the block plus halo (:meth:`extent`)."""
        _, _, h, w = self.extent(block)
        return max(1, round(h / self.scale)), max(1, round(w / self.scale))

    def id_stride(self) -> int:
        """Cell-id stride: cell id = block index * stride + local id (< stride).

        2**20 when it fits uint32, fewer bits on grids of over 4095 blocks.
        """
        bits = min(20, int(math.floor(math.log2((2**32 - 1) / (len(self) + 1)))))
        return 2**bits


def label_chunk(block0: int) -> int:
    """Chunk side of the label arrays: a divisor of the block side, <= 1024."""
    for c in (1024, 512, 256):
        if block0 % c == 0:
            return c
    return block0


def make_grid(shape: tuple[int, int], scale: float, block: int = 2048, halo: int = 128) -> Grid:
    """The grid for a level-0 ``shape`` with ``block``/``halo`` in segmenter pixels.

    The level-0 block side is rounded to a multiple of 256 when it is over 256
    (so label chunks align with blocks).
    """
    if block < 16 or halo < 0:
        raise ValueError(f"block must be >= 16 and halo >= 0 pixels (got {block}, {halo})")
    b0 = block * scale
    b0 = int(round(b0 / 256) * 256) if b0 > 256 else int(round(b0))
    return Grid(tuple(int(s) for s in shape), max(16, b0), int(math.ceil(halo * scale)), float(scale))


def tissue_fractions(grid: Grid, mask: np.ndarray, downsample: float) -> np.ndarray:
    """Fraction of each block's region covered by ``mask``, float (len(grid),).

    ``mask`` is boolean at ``downsample`` level-0 pixels per mask pixel. A
    mask pixel counts for a block when its footprint overlaps the block (a
    block with a sliver of tissue at its edge is kept).
    """
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0), axis=1)
    out = np.zeros(len(grid), np.float64)
    for b in grid.blocks():
        r0 = min(mask.shape[0], int(math.floor(b.y / downsample)))
        c0 = min(mask.shape[1], int(math.floor(b.x / downsample)))
        r1 = min(mask.shape[0], max(r0 + 1, int(math.ceil((b.y + b.h) / downsample))))
        c1 = min(mask.shape[1], max(c0 + 1, int(math.ceil((b.x + b.w) / downsample))))
        area = (r1 - r0) * (c1 - c0)
        if area <= 0:
            continue
        s = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
        out[b.index] = s / area
    return out


def roi_boxes(roi: list | None) -> list[tuple[float, float, float, float]]:
    """Bounding boxes (y0, x0, y1, x1) in level-0 pixels of ROI polygons of (x, y) vertices."""
    from her2kit.scoring.roi import as_rings

    boxes = []
    for poly in as_rings(roi or []):
        p = np.asarray(poly[0], dtype=np.float64).reshape(-1, 2)  # the exterior ring
        if len(p):
            boxes.append((p[:, 1].min(), p[:, 0].min(), p[:, 1].max(), p[:, 0].max()))
    return boxes


def select_blocks(
    grid: Grid,
    tissue: np.ndarray | None = None,
    min_tissue: float = 0.0,
    roi: list | None = None,
) -> list[int]:
    """Indices of the blocks to process.

    Args:
        tissue: per-block tissue fractions (:func:`tissue_fractions`), or None
            for all blocks.
        min_tissue: a block is kept when its fraction is above this.
        roi: polygons (lists of (x, y) level-0 vertices); only blocks touching
            a polygon's bounding box (widened by the halo) are kept.
    """
    keep = []
    boxes = roi_boxes(roi)
    for b in grid.blocks():
        if tissue is not None and not tissue[b.index] > min_tissue:
            continue
        if boxes and not any(
            y0 - grid.halo0 < b.y + b.h and y1 + grid.halo0 >= b.y
            and x0 - grid.halo0 < b.x + b.w and x1 + grid.halo0 >= b.x
            for y0, x0, y1, x1 in boxes
        ):
            continue
        keep.append(b.index)
    return keep
