"""Render one rectangular region of a scene: RGB, semantic and instance labels, cell table.

Every value is a function of the scene and the global pixel position, and
the region is rendered with a halo wide enough for blur and texture
filters, so adjacent regions agree exactly at their borders.

Semantic labels: 0 background, 1 membrane (the stained part of a tumour
cell's membrane band, categories 1-3), 2 nucleus. Cell instance ids are the
scene's global cell ids (tumour cells: the whole polygon; stromal cells and
lymphocytes: the nucleus with a thin rim).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from her2kit.synth import noise, stains, tissue
from her2kit.synth.scene import Scene
from her2kit.synth.tissue import FAT, GLASS, LUMEN, NUC_FIBRO, NUC_LYMPH, NUC_TUMOUR, STROMA, TUMOUR

TYPE_NAMES = {NUC_TUMOUR: "tumour", NUC_FIBRO: "fibroblast", NUC_LYMPH: "lymphocyte"}
K_TEXF, K_TEXM, K_NOISE, K_ILLUM = 101, 102, 103, 104

CountsFn = Callable[[int], np.ndarray]


@dataclass
class Region:
    """A rendered region. Arrays are (h, w[, 3]); the table holds one entry per cell touching the region."""

    rgb: np.ndarray          # uint8 (h, w, 3)
    semantic: np.ndarray     # uint8 (h, w): 0 background, 1 membrane, 2 nucleus
    cells: np.ndarray        # uint32 (h, w): cell id, 0 none
    nuclei: np.ndarray       # uint32 (h, w): id of the cell owning the nucleus, 0 none
    table: dict[str, np.ndarray]  # id, y, x (centroid, global pixels), area, category, tumour,
    #                               completeness, intensity, type, seed_y, seed_x (pixels)


@functools.lru_cache(maxsize=64)
def _texture_sd(sigma_px: float) -> float:
    """Standard deviation of uniform white noise after a 2-D Gaussian blur of ``sigma_px``."""
    delta = np.zeros(int(8 * sigma_px) * 2 + 3)
    delta[len(delta) // 2] = 1.0
    k = ndimage.gaussian_filter1d(delta, sigma_px, mode="constant")
    return float(math.sqrt(1 / 12) * np.sum(k * k))


def _texture(key: int, rows: np.ndarray, cols: np.ndarray, sigma_px: float) -> np.ndarray:
    """Zero-mean, unit-sd smooth noise of global pixel position (blurred hashed white noise)."""
    t = noise.white(key, rows, cols)
    t = ndimage.gaussian_filter(t, sigma_px, mode="reflect", truncate=3.0)
    return (t - 0.5) / _texture_sd(sigma_px)


def halo_px(scene: Scene) -> int:
    """Pixels of context a region needs on each side for exact blur and textures."""
    return int(math.ceil(4 * scene.blur_um / scene.mpp + 3 * 1.5 / scene.mpp)) + 2


def assign_categories(scene: Scene, seeds: tissue.Seeds, present: np.ndarray | None = None,
                      counts: CountsFn | None = None) -> np.ndarray:
    """Membrane category per seed (-1 for non-tumour seeds).

    With ``counts``, the tumour cells in ``present`` (seed indices) get exactly
    ``counts(n)`` cells per category: stronger categories go to cells with a
    higher key (random, plus a smooth field so positive cells cluster within
    nests). Other tumour seeds (all of them in slides) take the category of
    their key's quantile in ``scene.fractions``: the expected mix is
    ``fractions``, with the same spatial clustering.
    """
    cat = np.full(len(seeds.kind), -1, np.int8)
    tum = seeds.kind == TUMOUR
    f = scene.fractions
    key = 0.6 * seeds.prop["u_cat"] + 0.4 * seeds.prop["cluster"]
    # thresholds at quantiles of the key's distribution keep the expected mix equal to f
    t3, t2, t1 = (_key_quantile(1 - q) for q in (f[3], f[3] + f[2], f[3] + f[2] + f[1]))
    drawn = np.where(key >= t3, 3, np.where(key >= t2, 2, np.where(key >= t1, 1, 0)))
    cat[tum] = drawn[tum]
    if counts is not None and present is not None:
        idx = present[tum[present]]
        n = len(idx)
        c = counts(n)
        order = idx[np.argsort(-key[idx], kind="stable")]
        cats = np.repeat(np.array([3, 2, 1, 0], np.int8), [c[3], c[2], c[1], c[0]])
        cat[order] = cats
    return cat


@functools.lru_cache(maxsize=1)
def _key_sample() -> np.ndarray:
    n = np.arange(40000)
    y, x = noise.uniform(4242, n, 0) * 1e5, noise.uniform(4242, n, 1) * 1e5
    return np.sort(0.6 * noise.uniform(4242, n, 2) + 0.4 * noise.fbm_points(99, y, x, 60.0, octaves=2))


def _key_quantile(q: float) -> float:
    """Quantile of the category key (0.6 uniform + 0.4 smooth field); +inf / -inf beyond [0, 1]."""
    if q >= 1 - 1e-12:
        return np.inf
    if q <= 0:
        return -np.inf
    return float(np.quantile(_key_sample(), q))


def _membrane_params(scene: Scene, seeds: tissue.Seeds, cat: np.ndarray) -> dict[str, np.ndarray]:
    """Completeness, DAB intensity (OD), half-width (microns), arcs and phase per seed."""
    p = seeds.prop
    ui, uc, uw = p["u_int"], p["u_comp"], p["u_width"]
    frac = (uc * 7.31) % 1.0
    comp = np.select(
        [cat == 1, cat == 2, cat == 3],
        [0.25 + 0.5 * uc,
         np.where(uc < 0.55, 1.0, np.where(uc < 0.88, 0.9 + 0.1 * frac, 0.6 + 0.3 * frac)),
         np.where(uc < 0.7, 1.0, 0.92 + 0.08 * frac)], 0.0)
    inten = np.select([cat == 1, cat == 2, cat == 3],
                      [0.3 + 0.3 * ui, 0.7 + 0.8 * ui, 2.0 + 1.2 * ui], 0.0) * scene.conc[1]
    hw = np.select([cat == 1, cat == 2, cat == 3],
                   [0.25 + 0.12 * uw, 0.4 + 0.2 * uw, 0.6 + 0.3 * uw], 0.3)
    arcs = np.where(cat == 1, 1 + np.floor(3 * p["u_arcs"]), np.where(comp < 1, 1 + np.floor(2 * p["u_arcs"]), 1))
    blush = np.select([cat == 1, cat == 2, cat == 3],
                      [0.04 * p["u_blush"], 0.08 + 0.17 * p["u_blush"], 0.25 + 0.45 * p["u_blush"]], 0.0)
    return {"comp": comp.astype(np.float32), "int": inten.astype(np.float32), "hw": hw.astype(np.float32),
            "arcs": arcs.astype(np.float32), "phase": p["u_phase"].astype(np.float32),
            "blush": (blush * scene.conc[1]).astype(np.float32)}


def render_region(scene: Scene, y0: int, x0: int, h: int, w: int, counts: CountsFn | None = None,
                  margin: int = 0) -> Region:
    """Render pixels [y0, y0+h) x [x0, x0+w) (global pixel indices) of ``scene``.

    ``margin`` (pixels) widens the area over which the cell table is
    measured (clipped to the scene's world), so a caller can take complete
    cells whose seed lies in the region. ``counts`` imposes the category
    counts of the tumour cells in the table (see :func:`assign_categories`).
    """
    mpp = scene.mpp
    pad = max(halo_px(scene), margin)
    rows = np.arange(y0 - pad, y0 + h + pad)
    cols = np.arange(x0 - pad, x0 + w + pad)
    y_um = (rows + 0.5) * mpp
    x_um = (cols + 0.5) * mpp
    seeds = tissue.seeds_for_region(scene, y_um[0], x_um[0], y_um[-1] - y_um[0], x_um[-1] - x_um[0])
    i1, _i2, bd = tissue.nearest_two(seeds, scene, y_um, x_um)
    kind = seeds.kind[i1]

    # the world (image or slide) clips the table's area
    wr0, wr1 = max(0, y0 - margin) - (y0 - pad), min(scene.height, y0 + h + margin) - (y0 - pad)
    wc0, wc1 = max(0, x0 - margin) - (x0 - pad), min(scene.width, x0 + w + margin) - (x0 - pad)
    # the window in microns; a cell belongs to it when its nucleus centre does (a cell
    # cut by the edge with its nucleus outside cannot be scored from the window)
    win_um = ((y0 - pad + wr0) * mpp, (y0 - pad + wr1) * mpp, (x0 - pad + wc0) * mpp, (x0 - pad + wc1) * mpp)
    present = None
    if counts is not None:
        present = np.unique(i1[wr0:wr1, wc0:wc1])
        present = present[_nucleus_inside(seeds, present, win_um)]
    cat = assign_categories(scene, seeds, present, counts)
    mp = _membrane_params(scene, seeds, cat)

    yy = y_um[:, None].astype(np.float32)
    xx = x_um[None, :].astype(np.float32)
    tum = kind == TUMOUR
    tex_f = _texture(scene.key + K_TEXF, rows, cols, max(0.45 / mpp, 0.6))
    tex_m = _texture(scene.key + K_TEXM, rows, cols, 1.5 / mpp)
    hw = mp["hw"][i1]
    dab_memb, memb_label = _membrane(seeds, mp, cat, i1, bd, hw, tum, yy, xx, tex_f)
    nucleus, h_nuc, stromal_cell = _nuclei(seeds, i1, bd, hw, tum, yy, xx, tex_f)
    del hw
    conc = _concentrations(scene, seeds, mp, i1, kind, bd, y_um, x_um, tex_m, dab_memb, nucleus, h_nuc)
    del dab_memb, h_nuc, tex_f, tex_m

    illum = 1.0 - scene.illum_amp * noise.fbm_grid(scene.key + K_ILLUM, y_um, x_um, 600.0, octaves=2)
    i0 = illum[..., None] * scene.glass.astype(np.float32)
    rgb = stains.od_to_rgb(conc, scene.stain, i0)
    del conc, i0
    sig = scene.blur_um / mpp
    rgb = ndimage.gaussian_filter(rgb, (sig, sig, 0), mode="reflect", truncate=4.0)
    rgb += scene.noise_sd * np.sqrt(np.maximum(rgb, 1.0) / 255.0) * noise.gaussian(scene.key + K_NOISE, rows, cols)

    core = (slice(pad, pad + h), slice(pad, pad + w))
    out_rgb = np.clip(np.rint(rgb[core]), 0, 255).astype(np.uint8)
    gid = seeds.gid.astype(np.uint32)
    cell_ids = np.where(tum | stromal_cell, gid[i1], 0).astype(np.uint32)
    nuc_ids = np.where(nucleus, gid[i1], 0).astype(np.uint32)
    semantic = np.where(nucleus, 2, np.where(memb_label, 1, 0)).astype(np.uint8)

    table = _cell_table(scene, seeds, cat, mp, cell_ids[wr0:wr1, wc0:wc1], i1[wr0:wr1, wc0:wc1],
                        rows[wr0:wr1], cols[wc0:wc1], win_um)
    return Region(out_rgb, semantic[core], cell_ids[core], nuc_ids[core], table)



def _membrane(seeds: tissue.Seeds, mp: dict[str, np.ndarray], cat: np.ndarray, i1: np.ndarray,
              bd: np.ndarray, hw: np.ndarray, tum: np.ndarray, yy: np.ndarray, xx: np.ndarray,
              tex_f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DAB OD of the membrane band and its label mask.

    The band runs along the cell border (``bd``: distance to it, microns)
    with a Gaussian profile of half-width ``hw``; it is stained on ``arcs``
    arcs that together cover ``comp`` of the ring, seen from the seed.
    """
    dy = yy - seeds.y[i1].astype(np.float32)
    dx = xx - seeds.x[i1].astype(np.float32)
    ang = np.arctan2(dy, dx) * np.float32(1 / (2 * math.pi))
    del dy, dx
    arc = ((ang * mp["arcs"][i1] + mp["phase"][i1]) % 1.0) < mp["comp"][i1]
    stained = tum & (cat[i1] >= 1) & arc
    prof = np.exp(np.float32(-0.7) * (bd / hw) ** 2)
    dab = np.where(stained & (bd < 2.5 * hw), mp["int"][i1] * prof * (0.8 + 0.2 * tex_f), 0).astype(np.float32)
    return dab, stained & (bd < hw)


def _nuclei(seeds: tissue.Seeds, i1: np.ndarray, bd: np.ndarray, hw: np.ndarray, tum: np.ndarray,
            yy: np.ndarray, xx: np.ndarray, tex_f: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nucleus mask, its haematoxylin OD, and the mask of stromal cells (nucleus plus a thin rim).

    Nuclei are ellipses with a radius modulated by 2nd and 3rd harmonics
    (irregular outlines), chromatin texture, a darker rim and sometimes a
    nucleolus; they stay inside their cell's membrane.
    """
    pr = seeds.prop
    has = seeds.nuc[i1] > 0
    a = np.where(has, pr["na"][i1], 1.0).astype(np.float32)
    b = np.where(has, pr["nb"][i1], 1.0).astype(np.float32)
    ndy = yy - pr["ny"][i1].astype(np.float32)
    ndx = xx - pr["nx"][i1].astype(np.float32)
    cs, sn = pr["ncos"][i1], pr["nsin"][i1]
    p = (ndx * cs + ndy * sn) / a
    q = (-ndx * sn + ndy * cs) / b
    del ndy, ndx, cs, sn
    rho = np.sqrt(p * p + q * q) + np.float32(1e-6)
    cx, cy = p / rho, q / rho
    p1, p2 = pr["p1"][i1], pr["p2"][i1]
    rlim = (1 + pr["e1"][i1] * ((cx * cx - cy * cy) * np.cos(p1) - 2 * cx * cy * np.sin(p1))
            + pr["e2"][i1] * (cx * (4 * cx * cx - 3) * np.cos(p2) - cy * (3 - 4 * cy * cy) * np.sin(p2)))
    del cx, cy, p1, p2
    r = rho / rlim
    del rho, rlim
    clear = np.where(tum, bd > hw + 0.4, bd > 0.3)
    nucleus = has & (r < 1.0) & clear
    stromal_cell = has & ~tum & (r < 1.25) & (bd > 0.2)
    rim = np.clip((r - 0.7) / 0.3, 0, 1)
    soft = np.clip((1.0 - r) * 6.0, 0, 1)
    nl_r = pr["nl_r"][i1]
    nl_d2 = ((p - pr["nl_p"][i1]) * a) ** 2 + ((q - pr["nl_q"][i1]) * b) ** 2
    nucleolus = np.float32(0.45) * np.exp(-nl_d2 / np.maximum(nl_r * nl_r, 1e-3)) * (nl_r > 0)
    h_nuc = nucleolus + pr["hdark"][i1] * (0.72 + 0.28 * np.clip(1 + 0.9 * tex_f, 0, 2)) * (1 + 0.3 * rim) * (0.5 + 0.5 * soft)
    return nucleus, h_nuc.astype(np.float32), stromal_cell


def _concentrations(scene: Scene, seeds: tissue.Seeds, mp: dict[str, np.ndarray], i1: np.ndarray,
                    kind: np.ndarray, bd: np.ndarray, y_um: np.ndarray, x_um: np.ndarray, tex_m: np.ndarray,
                    dab_memb: np.ndarray, nucleus: np.ndarray, h_nuc: np.ndarray) -> np.ndarray:
    """Stain concentrations (h, w, 3): haematoxylin, DAB, residual, per tissue compartment."""
    # stroma fibres: level sets of a smooth field, so they run in wavy parallel bundles
    kf = tissue.field_key(scene, tissue.K_FIBRE)
    phi = noise.fbm_grid(kf, y_um, x_um, 90.0)
    wobble = noise.fbm_grid(kf + 5, y_um, x_um, 25.0, octaves=2)
    fibre = (0.5 + 0.5 * np.cos((phi * 22 + 1.5 * wobble) * np.float32(2 * math.pi))) ** 3
    del phi, wobble
    fibre = fibre * np.clip(0.7 + 0.3 * tex_m, 0, 2)

    H = np.zeros(kind.shape, np.float32)
    D = np.zeros(kind.shape, np.float32)
    R = np.zeros(kind.shape, np.float32)
    stroma = kind == STROMA
    H = np.where(stroma, 0.035 * (0.8 + 0.3 * tex_m) + 0.05 * fibre, H)
    R = np.where(stroma, 0.01 + 0.03 * fibre, R)
    D = np.where(stroma, 0.01 * np.clip(1 + tex_m, 0, 3), D)
    del stroma, fibre
    tum = kind == TUMOUR
    cyto = seeds.prop["cyto"][i1]
    # unstained cell borders stay faintly visible (a thin counterstained line)
    border_line = np.float32(0.05) * np.exp(-(bd / 0.5) ** 2)
    H = np.where(tum, cyto * (0.75 + 0.25 * np.clip(1 + tex_m, 0, 3)) + border_line, H)
    del cyto, border_line
    R = np.where(tum, 0.02 + 0.01 * tex_m, R)
    D = np.where(tum, mp["blush"][i1] * np.clip(1 + 0.5 * tex_m, 0, 3) + dab_memb, D)
    del tum
    lumen = kind == LUMEN
    H = np.where(lumen, 0.02, H)
    R = np.where(lumen, 0.03 + 0.02 * tex_m, R)
    fat = kind == FAT
    if fat.any():
        fscene = dataclasses.replace(scene, spacing_um=scene.fat_spacing_um, angle=scene.angle + 0.7,
                                     key=scene.key + 31337)
        fseeds = tissue.seeds_for_region(fscene, y_um[0], x_um[0], y_um[-1] - y_um[0], x_um[-1] - x_um[0])
        _f1, _f2, fbd = tissue.nearest_two(fseeds, fscene, y_um, x_um)
        wall = np.exp(-(fbd / 0.6) ** 2)
        H = np.where(fat, 0.005 + 0.07 * wall, H)
        R = np.where(fat, 0.005 + 0.06 * wall, R)
    H = np.where(nucleus, h_nuc, H)
    D = np.where(nucleus, 0.3 * D, D)
    R = np.where(nucleus, R + 0.05, R)
    conc = np.stack([H * scene.conc[0], D, R * scene.conc[2]], axis=-1).astype(np.float32)
    conc[kind == GLASS] = 0.0
    return conc


def _nucleus_inside(seeds: tissue.Seeds, idx: np.ndarray, win_um: tuple[float, float, float, float]) -> np.ndarray:
    """Whether the nucleus centres of seeds ``idx`` lie in the window (y0, y1, x0, x1), microns."""
    ny, nx = seeds.prop["ny"][idx], seeds.prop["nx"][idx]
    return (ny >= win_um[0]) & (ny < win_um[1]) & (nx >= win_um[2]) & (nx < win_um[3])


def _cell_table(scene: Scene, seeds: tissue.Seeds, cat: np.ndarray, mp: dict[str, np.ndarray],
                cells: np.ndarray, owner: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                win_um: tuple[float, float, float, float]) -> dict[str, np.ndarray]:
    flat = cells.ravel()
    sel = flat > 0
    ids, first, inv, area = np.unique(flat[sel], return_index=True, return_inverse=True, return_counts=True)
    rr = np.broadcast_to(rows[:, None], cells.shape).ravel()[sel]
    cc = np.broadcast_to(cols[None, :], cells.shape).ravel()[sel]
    cy = np.bincount(inv, weights=rr, minlength=len(ids)) / area
    cx = np.bincount(inv, weights=cc, minlength=len(ids)) / area
    si = owner.ravel()[sel][first]
    is_tum = seeds.kind[si] == TUMOUR
    category = np.where(is_tum, cat[si], 0).astype(np.int8)
    return {
        "id": ids.astype(np.uint32), "y": cy, "x": cx, "area": area.astype(np.int64),
        "category": category, "tumour": is_tum.astype(np.int8),
        "completeness": np.where(is_tum, mp["comp"][si], 0.0).astype(np.float64),
        "intensity": np.where(is_tum & (category > 0), mp["int"][si], 0.0).astype(np.float64),
        "type": seeds.nuc[si].astype(np.int8),
        "seed_y": seeds.y[si] / scene.mpp - 0.5, "seed_x": seeds.x[si] / scene.mpp - 0.5,
        "nucleus_inside": _nucleus_inside(seeds, si, win_um).astype(np.int8),
    }
