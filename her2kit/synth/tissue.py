"""Tissue layout: a jittered, rotated seed lattice, tissue types and cell geometry.

Cells are the cells of a power diagram (a Voronoi tessellation with
weights) of one seed per lattice cell: touching polygons of varied size,
like a tumour nest. Each seed's tissue type comes from smooth fields at
the seed: tumour nests, lumina inside nests, stroma (sparse fibroblasts and
lymphocytes), fat, bare glass. Jitter <= 0.3 and weights <= 0.15 lattice
units make the nearest two seeds of any point lie in its 3 x 3 lattice
neighbourhood, so the search is exact and local.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from her2kit.synth import noise
from her2kit.synth.scene import Scene

GLASS, STROMA, TUMOUR, LUMEN, FAT = 0, 1, 2, 3, 4
NUC_NONE, NUC_TUMOUR, NUC_FIBRO, NUC_LYMPH = 0, 1, 2, 3

# field keys (offsets of the scene key)
K_JIT, K_W, K_NEST, K_LUMEN, K_FAT, K_TISSUE, K_CELL, K_CLUSTER, K_FIBRE = range(9)


@dataclass
class Seeds:
    """Seeds of the lattice cells around a region, flattened in (u - u0, v - v0) order."""

    u0: int
    v0: int
    nu: int
    nv: int
    su: np.ndarray          # seed position, lattice units, from the scene's lattice origin
    sv: np.ndarray
    weight: np.ndarray      # power weight, lattice units^2
    y: np.ndarray           # seed position, microns (global)
    x: np.ndarray
    gid: np.ndarray         # global cell id (>= 1), unique within the scene's world
    kind: np.ndarray        # tissue type (GLASS..FAT)
    nuc: np.ndarray         # nucleus type (NUC_*)
    prop: dict[str, np.ndarray]


def field_key(scene: Scene, what: int) -> int:
    """The hash key of one named random field (K_*) of a scene."""
    return scene.key + 1000003 * (what + 1)


def lattice_coords(scene: Scene, y_um: np.ndarray, x_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Microns -> rotated lattice coordinates (u, v) in lattice units."""
    c, s = math.cos(scene.angle), math.sin(scene.angle)
    return (x_um * c + y_um * s) / scene.spacing_um, (-x_um * s + y_um * c) / scene.spacing_um


def seeds_for_region(scene: Scene, y0_um: float, x0_um: float, h_um: float, w_um: float) -> Seeds:
    """All seeds whose cells can reach the rectangle (microns), with their properties."""
    ys = np.array([y0_um, y0_um, y0_um + h_um, y0_um + h_um])
    xs = np.array([x0_um, x0_um + w_um, x0_um, x0_um + w_um])
    u, v = lattice_coords(scene, ys, xs)
    u0, v0 = int(math.floor(u.min())) - 2, int(math.floor(v.min())) - 2
    nu, nv = int(math.floor(u.max())) + 3 - u0, int(math.floor(v.max())) + 3 - v0
    iu, iv = np.meshgrid(np.arange(u0, u0 + nu), np.arange(v0, v0 + nv), indexing="ij")
    iu, iv = iu.ravel(), iv.ravel()
    j = scene.jitter
    su = iu + 0.5 + j * (2 * noise.uniform(field_key(scene, K_JIT), iu, iv, 0) - 1)
    sv = iv + 0.5 + j * (2 * noise.uniform(field_key(scene, K_JIT), iu, iv, 1) - 1)
    weight = scene.power * (2 * noise.uniform(field_key(scene, K_W), iu, iv) - 1)
    c, s = math.cos(scene.angle), math.sin(scene.angle)
    x = scene.spacing_um * (su * c - sv * s)
    y = scene.spacing_um * (su * s + sv * c)
    lu0, lv0, lnv = scene.lattice
    gid = ((iu - lu0) * lnv + (iv - lv0) + 1).astype(np.int64)
    # float32 positions relative to the scene's fixed lattice origin (not the region's), so
    # every region computes bit-identical distances for the same pixel
    lu0, lv0, _ = scene.lattice
    su32 = (su - lu0).astype(np.float32)
    sv32 = (sv - lv0).astype(np.float32)
    seeds = Seeds(u0, v0, nu, nv, su32, sv32,
                  weight.astype(np.float32), y, x, gid, np.zeros(len(iu), np.uint8),
                  np.zeros(len(iu), np.uint8), {})
    _classify(scene, seeds, iu, iv)
    return seeds


def nest_field(scene: Scene, y_um: np.ndarray, x_um: np.ndarray) -> np.ndarray:
    """The smooth field whose high values are tumour nests, at points (microns)."""
    return noise.fbm_points(field_key(scene, K_NEST), y_um, x_um, 160.0)


def _classify(scene: Scene, seeds: Seeds, iu: np.ndarray, iv: np.ndarray) -> None:
    """Tissue type, nucleus type and per-cell random properties of each seed."""
    y, x = seeds.y, seeds.x
    n = len(y)
    nest = nest_field(scene, y, x)
    fat = noise.fbm_points(field_key(scene, K_FAT), y, x, 300.0)
    lumen = noise.fbm_points(field_key(scene, K_LUMEN), y, x, 45.0, octaves=2)
    tissue = noise.fbm_points(field_key(scene, K_TISSUE), y, x, scene.tissue_scale_um)
    kind = np.full(n, STROMA, np.uint8)
    kind[fat > scene.fat_level] = FAT
    kind[nest > scene.tumour_level] = TUMOUR
    inner = nest > scene.tumour_level + 0.04
    kind[(kind == TUMOUR) & inner & (lumen > scene.lumen_level)
         & (noise.uniform(field_key(scene, K_LUMEN), iu, iv) < 0.6)] = LUMEN
    # empty holes in the stroma (vessels, tears): rendered like lumina
    hole = noise.fbm_points(field_key(scene, K_LUMEN) + 11, y, x, 70.0, octaves=2)
    kind[(kind == STROMA) & (hole > scene.lumen_level + 0.02)] = LUMEN
    kind[tissue < scene.tissue_level] = GLASS
    seeds.kind = kind

    def r(i: int) -> np.ndarray:
        return noise.uniform(field_key(scene, K_CELL), iu, iv, i)

    s = scene.spacing_um
    ns = scene.nucleus_scale
    nuc = np.zeros(n, np.uint8)
    nuc[kind == TUMOUR] = NUC_TUMOUR
    pick = r(0)
    stroma = kind == STROMA
    nuc[stroma & (pick < 0.30)] = NUC_FIBRO
    nuc[stroma & (pick >= 0.30) & (pick < 0.40)] = NUC_LYMPH
    seeds.nuc = nuc

    # nucleus geometry: semi-axes a >= b (microns), angle, centre offset, irregularity
    a = np.where(nuc == NUC_TUMOUR, (0.24 + 0.10 * r(1)) * s * ns, 0.0)
    b = a * (0.65 + 0.35 * r(2))
    lym = nuc == NUC_LYMPH
    a = np.where(lym, 2.3 + 0.9 * r(1), a)
    b = np.where(lym, a * (0.85 + 0.15 * r(2)), b)
    fib = nuc == NUC_FIBRO
    a = np.where(fib, (4.0 + 3.0 * r(1)) * ns, a)
    b = np.where(fib, 0.9 + 0.6 * r(2), b)
    theta = 2 * math.pi * r(3)
    # fibroblasts lie along the collagen fibres: across the fibre field's gradient
    if fib.any():
        k = field_key(scene, K_FIBRE)
        e = 1.0
        gy = noise.fbm_points(k, y + e, x, 90.0) - noise.fbm_points(k, y - e, x, 90.0)
        gx = noise.fbm_points(k, y, x + e, 90.0) - noise.fbm_points(k, y, x - e, 90.0)
        along = np.arctan2(gx, -gy)  # perpendicular to the gradient, measured from +x
        theta = np.where(fib, along + 0.2 * (r(3) - 0.5), theta)
    off = np.where(nuc == NUC_TUMOUR, 0.08 * s, 0.0)
    ny = y + off * (2 * r(4) - 1)
    nx = x + off * (2 * r(5) - 1)
    hdark = np.select([nuc == NUC_TUMOUR, lym, fib], [0.25 + 0.5 * r(6), 0.75 + 0.4 * r(6), 0.4 + 0.35 * r(6)], 0.0)
    seeds.prop = {
        "na": a.astype(np.float32), "nb": b.astype(np.float32),
        "ncos": np.cos(theta).astype(np.float32), "nsin": np.sin(theta).astype(np.float32),
        "ny": ny, "nx": nx,
        "e1": (0.10 * r(7)).astype(np.float32), "p1": (2 * math.pi * r(8)).astype(np.float32),
        "e2": (0.06 * r(9)).astype(np.float32), "p2": (2 * math.pi * r(10)).astype(np.float32),
        "hdark": hdark.astype(np.float32),
        # a nucleolus in about half the tumour nuclei: offset (fraction of the semi-axes), radius (um)
        "nl_r": np.where((nuc == NUC_TUMOUR) & (r(19) < 0.5), 0.45 + 0.35 * r(20), 0.0).astype(np.float32),
        "nl_p": (0.45 * (2 * r(21) - 1)).astype(np.float32), "nl_q": (0.45 * (2 * r(22) - 1)).astype(np.float32),
        "cyto": (0.10 + 0.08 * r(11)).astype(np.float32),
        # membrane draws (uniforms), turned into category-specific values by render
        "u_int": r(12), "u_comp": r(13), "u_width": r(14), "u_phase": r(15), "u_arcs": r(16),
        "u_cat": r(17), "u_blush": r(18),
        "cluster": noise.fbm_points(field_key(scene, K_CLUSTER), y, x, 60.0, octaves=2),
    }


def nearest_two(seeds: Seeds, scene: Scene, y_um: np.ndarray, x_um: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Owner seed, second-nearest seed and distance to their shared border (microns) on a pixel grid.

    ``y_um`` (rows) and ``x_um`` (cols) are 1-D pixel-centre coordinates.
    Returns (i1, i2, border_um), arrays of shape (len(y_um), len(x_um)).
    """
    c, s = math.cos(scene.angle), math.sin(scene.angle)
    sp = scene.spacing_um
    yy = (y_um[:, None] / sp)
    xx = (x_um[None, :] / sp)
    lu0, lv0, _ = scene.lattice
    u = (xx * c + yy * s - lu0).astype(np.float32)
    v = (-xx * s + yy * c - lv0).astype(np.float32)
    iu = np.floor(u).astype(np.int32) - (seeds.u0 - lu0)
    iv = np.floor(v).astype(np.int32) - (seeds.v0 - lv0)
    base = iu * seeds.nv + iv
    big = np.float32(1e9)
    d1 = np.full(u.shape, big, np.float32)
    d2 = np.full(u.shape, big, np.float32)
    i1 = np.zeros(u.shape, np.int32)
    i2 = np.zeros(u.shape, np.int32)
    for du in (-1, 0, 1):
        for dv in (-1, 0, 1):
            idx = base + (du * seeds.nv + dv)
            d = (u - seeds.su[idx]) ** 2 + (v - seeds.sv[idx]) ** 2 - seeds.weight[idx]
            closer = d < d1
            second = d < d2
            i2 = np.where(closer, i1, np.where(second, idx, i2))
            d2 = np.where(closer, d1, np.where(second, d, d2))
            i1 = np.where(closer, idx, i1)
            d1 = np.where(closer, d, d1)
    sep = np.hypot(seeds.su[i1] - seeds.su[i2], seeds.sv[i1] - seeds.sv[i2])
    border = (d2 - d1) / (2 * np.maximum(sep, 1e-3)) * sp
    return i1, i2, border.astype(np.float32)


def tissue_mask(scene: Scene, step: int = 1) -> np.ndarray:
    """Where the scene's world has tissue: bool (ceil(height / step), ceil(width / step)),
    True at pixels (every ``step``-th row and column) whose cell is not bare glass.

    Fat and lumina count as tissue (they lie inside it). Memory is that of the
    returned grid times ~40 bytes; use ``step`` > 1 on large slides.
    """
    step = max(1, int(step))
    y_um = (np.arange(0, scene.height, step) + 0.5) * scene.mpp
    x_um = (np.arange(0, scene.width, step) + 0.5) * scene.mpp
    seeds = seeds_for_region(scene, y_um[0], x_um[0], y_um[-1] - y_um[0], x_um[-1] - x_um[0])
    i1, _i2, _bd = nearest_two(seeds, scene, y_um, x_um)
    return seeds.kind[i1] != GLASS
