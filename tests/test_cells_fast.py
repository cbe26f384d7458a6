"""The vectorised pieces of her2kit.scoring.cells against simple references.

Each fast helper must give exactly what the straightforward version gives
(scikit-image / scipy calls on the whole image, or a loop over cells/arcs),
on small constructed images with the awkward cases in them: touching blobs,
tiny blobs near the h of the h-maxima, ties between equidistant labels,
arcs shared by two or three cells, closed rings, pixels at the image border.
"""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import regionprops_table
from skimage.morphology import h_maxima
from skimage.segmentation import expand_labels

from her2kit.scoring import cells as C
from her2kit.scoring.cells import CellParams, find_cells, probabilities_from_mask
from her2kit.scoring.phantom import make_phantom


def _blobs(seed: int, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.random((size, size)), rng.uniform(1.2, 3.5))
    return field > np.quantile(field, rng.uniform(0.6, 0.85))


def _distance_map(mask: np.ndarray) -> np.ndarray:
    # as segment_nuclei builds it: a smoothed distance map, 0 far from the blobs
    return ndi.gaussian_filter(ndi.distance_transform_edt(mask).astype(np.float32), 1.0)


def _random_labels(seed: int, size: int = 64, n: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.zeros((size, size), np.int32)
    ys, xs = rng.integers(0, size, (2, n))
    lab[ys, xs] = np.arange(1, n + 1)
    lab[size // 2, :: 7] = 99  # a row of equidistant seeds: many ties
    return lab


# --- h-maxima ---------------------------------------------------------------------------------


H_MAXIMA = pytest.mark.parametrize("fn", ["_h_maxima_packed", "_h_maxima"])  # numpy / native


@H_MAXIMA
@pytest.mark.parametrize("seed", range(12))
def test_h_maxima_packed_equals_skimage(seed, fn):
    fn = getattr(C, fn)
    dist = _distance_map(_blobs(seed))
    support = dist > 0
    for h in (0.5, 0.75, 1.5, 3.0):
        ref = h_maxima(dist, h).astype(bool) & support
        assert np.array_equal(fn(dist, h), ref), (seed, h)


@H_MAXIMA
def test_h_maxima_packed_small_blobs_and_edges(fn):
    fn = getattr(C, fn)
    # isolated blobs whose peak is just above / below h, one cut by the border,
    # and a big blob, so pieces are decided by both paths (whole piece, and above t)
    mask = np.zeros((80, 120), bool)
    yy, xx = np.mgrid[:80, :120]
    for cy, cx, r in [(10, 10, 2.2), (10, 40, 3.0), (40, 60, 12), (70, 118, 5), (0, 90, 4), (60, 20, 1.5)]:
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    dist = _distance_map(mask)
    for h in (0.5, 1.0, 1.5, 2.0, 2.5):
        ref = h_maxima(dist, h).astype(bool) & (dist > 0)
        got = fn(dist, h)
        assert np.array_equal(got, ref), h
    assert not fn(np.zeros((5, 5), np.float32), 1.0).any()
    flat = np.full((6, 6), 2.0, np.float32)  # no zero pixel: the plain path
    assert np.array_equal(fn(flat, 1.0), h_maxima(flat, 1.0).astype(bool) & (flat > 0))


@H_MAXIMA
@pytest.mark.parametrize("seed", range(8))
def test_h_maxima_packed_quantised_images(seed, fn):
    fn = getattr(C, fn)
    # values on a 0.25 grid: plateaus, exact ties, peaks exactly h above their
    # saddles or exactly at h, zeros between blobs (sparse, so the packed path runs)
    rng = np.random.default_rng(100 + seed)
    img = np.round(ndi.gaussian_filter(rng.random((150, 150)), 2.0) * 40 - 21) / 4
    img = np.clip(img, 0, None).astype(np.float32)
    img[1:10, 1:10] = 0
    img[5, 5] = 1.5  # an isolated peak exactly at h
    img[46:55, 55:67] = 0
    img[50, 60:62] = 1.75
    img[50, 58] = 0.25
    for h in (0.5, 1.0, 1.5, 2.25):
        ref = h_maxima(img, h).astype(bool) & (img > 0)
        assert np.array_equal(fn(img, h), ref), h


# --- distances, expansion, holes --------------------------------------------------------------


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_expand_labels_and_within_equal_scipy_skimage(seed, native, monkeypatch):
    import sys

    if not native:
        monkeypatch.setitem(sys.modules, "her2kit._C", None)
    lab = _random_labels(seed)
    for d in (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 16.0):
        assert np.array_equal(C._expand_labels(lab, d), expand_labels(lab, d)), d
        assert np.array_equal(C._within(lab > 0, d), ndi.distance_transform_edt(lab == 0) <= d), d
    for shape in [(1, 9), (2, 5), (9, 1), (3, 3)]:  # images thinner than the disk
        m = np.zeros(shape, bool)
        m.flat[shape[0] * shape[1] // 2] = True
        for d in (1.5, 3.0):
            assert np.array_equal(C._within(m, d), ndi.distance_transform_edt(~m) <= d), (shape, d)
    empty = np.zeros((5, 7), np.int32)
    assert np.array_equal(C._expand_labels(empty, 2.0), expand_labels(empty, 2.0))
    assert C._max_sq(1.5) == 2 and C._max_sq(2.0) == 4 and C._max_sq(0.0) == 0 and C._max_sq(-1) == -1


@pytest.mark.parametrize("seed", range(6))
def test_expand_labels_at_pixels_follows_scipy_ties(seed):
    # equidistant labels everywhere (a lattice of seeds, labels in blocks): the
    # label chosen at a pixel must be scipy's (lowest column, then lowest row)
    rng = np.random.default_rng(seed)
    lab = np.zeros((48, 56), np.int32)
    step = int(rng.integers(2, 6))
    lab[1::step, 2::step] = rng.integers(1, 6, lab[1::step, 2::step].shape)
    lab[rng.random(lab.shape) < 0.03] = 7
    ys, xs = np.nonzero(rng.random(lab.shape) < 0.2)
    for d in (1.0, 1.5, 2.0, 3.0, 4.0, 5.0):
        ref = expand_labels(lab, d)[ys, xs]
        # int32 / uint32 / int64 take the native scan, a strided view numpy's
        for labels in (lab, lab.astype(np.uint32), lab.astype(np.int64), np.asfortranarray(lab)):
            assert np.array_equal(C._expand_labels_at(labels, d, ys, xs), ref), (d, labels.dtype)
    all_y, all_x = np.nonzero(np.ones(lab.shape, bool))  # every pixel: the whole-transform path
    assert np.array_equal(C._expand_labels_at(lab, 2.0, all_y, all_x), expand_labels(lab, 2.0).ravel())


def test_fill_holes_equals_scipy():
    for seed in range(6):
        m = ~_blobs(seed, 64)  # the complement has many enclosed holes
        assert np.array_equal(C._fill_holes(m), ndi.binary_fill_holes(m)), seed
    assert C._fill_holes(np.ones((4, 4), bool)).all()


# --- per-cell measurements ----------------------------------------------------------------------


def test_nucleus_features_match_regionprops():
    lab, _ = ndi.label(_blobs(3, 80))
    lab[lab == 2] = 0  # a missing id
    h = np.random.default_rng(0).random(lab.shape).astype(np.float32)
    got = C.nucleus_features(lab, h, 0.5)
    props = regionprops_table(lab, properties=("label", "area", "centroid", "axis_major_length",
                                               "axis_minor_length"))
    ids = props["label"]
    assert got["area_um2"][2] == 0 and got["elongation"][2] == 0
    np.testing.assert_array_equal(got["y"][ids], props["centroid-0"])  # exact: integer sums
    np.testing.assert_array_equal(got["x"][ids], props["centroid-1"])
    np.testing.assert_array_equal(got["area_um2"][ids], props["area"] * 0.25)
    elong = props["axis_major_length"] / np.maximum(props["axis_minor_length"], 1.0)
    np.testing.assert_allclose(got["elongation"][ids], elong, rtol=1e-10)
    for i in ids:  # per-cell reference mean
        assert got["h_od"][i] == pytest.approx(float(h[lab == i].astype(np.float64).mean()), rel=1e-12)


# --- ownership rules: the loop versions they replaced ---------------------------------------------


def _arcs_reference(cells, membrane, nuclei, params):
    """Per-arc loop: the arc goes to the owner seeing it over the most sectors."""
    comp, n_comp = ndi.label(membrane & (cells > 0), structure=np.ones((3, 3)))
    n = int(nuclei.max())
    cy = np.zeros(n + 1)
    cx = np.zeros(n + 1)
    for i in range(1, n + 1):
        ys, xs = np.nonzero(nuclei == i)
        if ys.size:
            cy[i], cx[i] = ys.mean(), xs.mean()
    out = cells.copy()
    for c in range(1, n_comp + 1):
        py, px = np.nonzero(comp == c)
        owners = np.unique(cells[py, px])
        if not 2 <= owners.size <= 3:
            continue
        cover = []
        for o in owners:
            ang = np.arctan2(py - cy[o], px - cx[o])
            cover.append(np.unique(((ang + np.pi) / (2 * np.pi) * params.n_sectors).astype(np.int64)).size)
        cover = np.array(cover)
        best = int(np.argmax(cover))
        rest = np.delete(cover, best)
        if cover[best] >= params.arc_ownership * max(rest.max(), 1):
            out[py, px] = owners[best]
    return out


def _enclosing_reference(cells, membrane, nuclei, mpp, params):
    holes = ndi.binary_fill_holes(membrane) & ~membrane
    hole_lab, n_holes = ndi.label(holes)
    owner = np.zeros(n_holes + 1, dtype=np.int64)
    for k in range(1, n_holes + 1):
        inside = np.unique(nuclei[(hole_lab == k) & (nuclei > 0)])
        if inside.size == 1:
            owner[k] = inside[0]
    owned = owner[hole_lab]
    if not owned.any():
        return cells
    grown = expand_labels(owned, distance=params.membrane_width_um / mpp + 1.0)
    return np.where((grown > 0) & (membrane | (owned > 0)), grown, cells)


def _ordered_sum(values) -> float:
    total = 0.0
    for v in values:  # in window order, one by one (as np.bincount adds)
        total += v
    return total


def _stained_side_reference(cells, membrane, nuclei, dab, mpp, params):
    """Pixel by pixel: the adjacent cell whose cytoplasm in the window is most stained."""
    r = max(1, int(round(params.side_window_um / mpp)))
    cyto = np.where(~membrane & (nuclei == 0), cells, 0)
    cyto[ndi.distance_transform_edt(~membrane) < 1.5] = 0
    h, w = cells.shape
    out = cells.copy()
    for y, x in zip(*np.nonzero(membrane & (cells > 0)), strict=True):
        sums: dict[int, list] = {}
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                yy, xx = y + dy, x + dx
                if dy * dy + dx * dx > r * r or not (0 <= yy < h and 0 <= xx < w) or cyto[yy, xx] == 0:
                    continue
                sums.setdefault(int(cyto[yy, xx]), []).append(float(dab[yy, xx]))
        if not sums:
            continue
        means = {k: _ordered_sum(v) / len(v) for k, v in sums.items()}
        own = means.get(int(cells[y, x]), 0.0)
        best = min(means, key=lambda k: (-means[k], k))
        if best != cells[y, x] and means[best] >= own + params.side_margin_od:
            out[y, x] = best
    return out


def _ring_case():
    """A row of cells from a phantom with one stained ring, plus the inputs of the ownership rules."""
    p = make_phantom([0, 3, 0, 2, 1, 3], seed=5, stroma=1)
    probs = probabilities_from_mask(p.mask, seed=2)
    params = CellParams()
    nuclei = C.segment_nuclei(probs[2], p.mpp, params)
    from her2kit.preprocess.stain import HedDeconvolver

    dab = HedDeconvolver().dab(p.rgb)
    dab = np.maximum(dab - C.dab_baseline(dab, probs), 0.0)
    membrane = (probs[1] >= params.membrane_threshold) & (nuclei == 0)
    bare = params.with_(enclosed_rings=False, arc_ownership=0, side_window_um=0)
    cells = C.cell_territories(probs[1], nuclei, p.mpp, bare, dab=dab).astype(np.int64)
    return cells, membrane, nuclei, dab, p.mpp, params


def test_ownership_rules_match_loop_references():
    cells, membrane, nuclei, dab, mpp, params = _ring_case()
    assert nuclei.max() >= 4 and membrane.any()
    arcs = C._claim_wrapping_arcs(cells, membrane, nuclei, params)
    assert np.array_equal(arcs, _arcs_reference(cells, membrane, nuclei, params))
    enclosed = C._claim_enclosing_membrane(cells, membrane, nuclei, mpp, params)
    assert np.array_equal(enclosed, _enclosing_reference(cells, membrane, nuclei, mpp, params))
    side = C._claim_by_stained_side(cells, membrane, nuclei, dab, mpp, params)
    assert np.array_equal(side, _stained_side_reference(cells, membrane, nuclei, dab, mpp, params))
    assert not np.array_equal(side, cells)  # the rule moved something: the comparison means something


def test_arcs_shared_by_three_cells_and_ties():
    # three nuclei around a membrane arc, and one two-owner arc with equal cover (a tie)
    nuclei = np.zeros((40, 40), np.int32)
    nuclei[8:12, 8:12] = 1
    nuclei[8:12, 28:32] = 2
    nuclei[28:32, 18:22] = 3
    nuclei[30:34, 2:6] = 4
    yy, xx = np.mgrid[:40, :40]
    cells = np.where(xx < 20, 1, 2)
    cells[yy >= 22] = np.where(xx[yy >= 22] < 10, 4, 3)
    membrane = np.zeros((40, 40), bool)
    membrane[15:17, 5:35] = True       # between 1/2 and 3
    membrane[22:36, 10] = True         # between 4 and 3
    membrane[0:6, 19:21] = True        # between 1 and 2, symmetric
    membrane[20:24, 12:35] = True      # shared by 1, 2 and 3
    membrane &= nuclei == 0
    params = CellParams()
    moved = []
    for own in (1.0, 1.5, 3.0):
        p = params.with_(arc_ownership=own)
        got = C._claim_wrapping_arcs(cells, membrane, nuclei, p)
        assert np.array_equal(got, _arcs_reference(cells, membrane, nuclei, p)), own
        moved.append(int((got != cells).sum()))
    assert moved[0] > moved[-1]  # a stricter ownership ratio gives fewer arcs away


# --- the whole function ---------------------------------------------------------------------


def test_find_cells_table_matches_per_cell_reference():
    p = make_phantom([0, 1, 2, 3, 3, 2, 0, 1], seed=9, stroma=2)
    r = find_cells(p.rgb, probabilities_from_mask(p.mask, seed=3), p.mpp)
    assert len(r) >= 6
    for row, cid in enumerate(r.table["id"]):
        ys, xs = np.nonzero(r.cell_labels == cid)
        assert r.table["y"][row] == ys.mean() and r.table["x"][row] == xs.mean()
        assert r.table["area_um2"][row] == pytest.approx(ys.size * p.mpp**2)
        ny, nx = np.nonzero(r.nucleus_labels == cid)
        assert r.table["nucleus_area_um2"][row] == pytest.approx(ny.size * p.mpp**2)
    assert r.cell_labels.dtype == np.uint32 and r.nucleus_labels.dtype == np.uint32


def test_labels_only_skips_the_staining_and_nothing_else():
    """``staining=False`` (what `her2kit segment` asks): the same labels and
    cell geometry; staining columns NaN, category -1 (not measured)."""
    p = make_phantom([0, 1, 2, 3, 3, 2, 0, 1], seed=9, stroma=2)
    probs = probabilities_from_mask(p.mask, seed=3)
    full = find_cells(p.rgb, probs, p.mpp)
    bare = find_cells(p.rgb, probs, p.mpp, CellParams(staining=False))
    np.testing.assert_array_equal(bare.cell_labels, full.cell_labels)
    np.testing.assert_array_equal(bare.nucleus_labels, full.nucleus_labels)
    np.testing.assert_array_equal(bare.semantic, full.semantic)
    assert list(bare.table) == list(full.table) == list(C.COLUMNS)
    staining = {"completeness", "intensity", "dab_od_mean", "membrane_fraction"}
    for c in C.COLUMNS:
        if c in staining:
            assert np.isnan(bare.table[c]).all() and not np.isnan(full.table[c]).any(), c
        elif c == "category":
            assert (bare.table[c] == -1).all() and (full.table[c] >= 0).all()
        elif c == "complete":  # not measured: no cell counts as complete
            assert not bare.table[c].any() and full.table[c].any()
        else:
            np.testing.assert_array_equal(bare.table[c], full.table[c])
    assert bare.sector_od.shape == full.sector_od.shape and np.isnan(bare.sector_od).all()


def test_inner_boundaries_equal_find_boundaries():
    from skimage.segmentation import find_boundaries

    rng = np.random.default_rng(5)
    cases = [rng.integers(0, 4, (h, w)).astype(np.uint32) for h, w in
             ((1, 1), (1, 9), (9, 1), (2, 2), (17, 23))]
    cases.append(_random_labels(1))
    cases.append(C._expand_labels(_random_labels(2), 6.0))  # touching territories
    for labels in cases:
        assert np.array_equal(C._inner_boundaries(labels), find_boundaries(labels, mode="inner"))


def test_pixel_classes_equal_argmax_with_ties():
    rng = np.random.default_rng(4)
    p = rng.random((3, 64, 80)).astype(np.float32)
    p[:, :8, :8] = 0.25  # three-way ties -> background
    p[1, 10:20] = p[0, 10:20]  # membrane ties background -> background
    p[2, 20:30] = np.maximum(p[0], p[1])[20:30]  # nucleus ties the best -> the earlier class
    np.testing.assert_array_equal(C.pixel_classes(p), np.argmax(p, axis=0).astype(np.uint8))
    assert C.pixel_classes(p).dtype == np.uint8


@pytest.mark.parametrize("seed", range(4))
def test_stained_side_native_equals_numpy(seed, monkeypatch):
    """The native stained-side rule moves exactly the pixels the numpy one does."""
    import sys

    from skimage.segmentation import find_boundaries

    rng = np.random.default_rng(50 + seed)
    cells = expand_labels(_random_labels(seed, size=96, n=30), 14)
    membrane = find_boundaries(cells, mode="thick")
    nuclei = np.where(rng.random(cells.shape) < 0.05, cells, 0)
    stain = rng.random(cells.max() + 1).astype(np.float32)  # cells stained unequally
    dab = np.round((stain[cells] + rng.random(cells.shape)) * 4).astype(np.float32) / 8  # ties
    params = C.CellParams(side_margin_od=0.0 if seed % 2 else 0.05)
    native = C._claim_by_stained_side(cells, membrane, nuclei, dab, 0.5, params)
    monkeypatch.setitem(sys.modules, "her2kit._C", None)
    numpy_only = C._claim_by_stained_side(cells, membrane, nuclei, dab, 0.5, params)
    assert (native != cells).any()
    np.testing.assert_array_equal(native, numpy_only)


def _native_or_skip(name):
    fn = C._native(name)
    if fn is None:
        pytest.skip(f"her2kit._C.{name} is not built")
    return fn


@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.5])
def test_gaussian_equals_scipy_bit_for_bit(sigma):
    """The native Gaussian gives scipy's float32 values exactly, on shapes smaller
    than the kernel too (where "reflect" folds more than once)."""
    _native_or_skip("gaussian")
    rng = np.random.default_rng(int(sigma * 10))
    for shape in ((1, 1), (1, 7), (3, 2), (5, 9), (33, 17), (130, 301)):
        image = (rng.random(shape) * 10).astype(np.float32)
        got = C._gaussian(image, sigma)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, ndi.gaussian_filter(image, sigma), err_msg=str(shape))
    dist = _distance_map(_blobs(3, 200))  # the image segment_nuclei smooths
    np.testing.assert_array_equal(C._gaussian(dist, sigma), ndi.gaussian_filter(dist, sigma))


def test_gaussian_rejects_asymmetric_weights():
    gaussian = _native_or_skip("gaussian")
    with pytest.raises(ValueError, match="symmetric"):
        gaussian(np.zeros((4, 4), np.float32), np.array([0.2, 0.5, 0.3]))


@pytest.mark.parametrize("diagonal", [False, True])
def test_label_equals_scipy(diagonal):
    """Native labelling: scipy's ids (raster order of first pixels) and count."""
    _native_or_skip("label")
    rng = np.random.default_rng(7 + diagonal)
    structure = np.ones((3, 3)) if diagonal else None
    cases = [rng.random(shape) < density for shape in ((1, 1), (1, 9), (9, 1), (40, 70), (200, 150))
             for density in (0.0, 0.3, 0.55, 1.0)]
    cases += [_blobs(4, 128), ~_blobs(5, 128)]
    # a U that only joins at the bottom, and a diagonal staircase
    u = np.zeros((6, 7), bool)
    u[:, 1] = u[:, 5] = u[5, 1:6] = True
    cases += [u, np.eye(8, dtype=bool)]
    for mask in cases:
        got, n = C._label(mask, diagonal=diagonal)
        ref, n_ref = ndi.label(mask, structure=structure)
        assert got.dtype == np.int32 and n == n_ref
        np.testing.assert_array_equal(got, ref)


def test_dilate_3x3_equals_maximum_filter():
    rng = np.random.default_rng(2)
    for shape in ((1, 1), (1, 5), (5, 1), (2, 3), (64, 80)):
        mask = rng.random(shape) < 0.2
        ref = ndi.maximum_filter(mask.view(np.uint8), size=3, mode="nearest") > 0
        np.testing.assert_array_equal(C._dilate_3x3(mask), ref)


def test_within_native_equals_distance_transform():
    """The native disk dilation, for every radius cell finding uses and the edges of its range."""
    within = _native_or_skip("within")
    rng = np.random.default_rng(11)
    for shape in ((1, 1), (1, 30), (30, 1), (7, 5), (64, 80)):
        for density in (0.0, 0.002, 0.05, 0.5):
            mask = rng.random(shape) < density
            dist2 = ndi.distance_transform_edt(~mask) ** 2 if mask.any() else np.full(shape, np.inf)
            for k in (0, 1, 2, 5, 25, 26, 256, 3000, 62500):
                got = within(mask, k)
                assert got.dtype == bool
                np.testing.assert_array_equal(got, np.round(dist2) <= k, err_msg=f"{shape} {density} {k}")
    with pytest.raises(ValueError, match="max_sq"):
        within(np.ones((3, 3), bool), 62501)


def test_median_equals_numpy():
    """The radix-first median: np.median's value and dtype, odd and even sizes, ties, signs."""
    rng = np.random.default_rng(12)
    for n in (5, 4096, 4097, 10000, 100001):
        base = rng.normal(size=n).astype(np.float32)
        for values in (base, np.round(base * 3) / 3, np.abs(base), -np.abs(base),
                       np.full(n, 0.25, np.float32), base.astype(np.float64)):
            values = np.asarray(values)
            got, ref = C._median(values), np.median(values)
            assert got == ref and np.asarray(got).dtype == np.asarray(ref).dtype, (n, values.dtype)
    with_nan = np.ones(5000, np.float32)
    with_nan[3] = np.nan
    assert np.isnan(C._median(with_nan))


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.int64])
def test_label_sums_native_equal_bincount(dtype, monkeypatch):
    """Centroids and nucleus features from the native per-label sums equal the
    bincount path bit for bit; labels outside [0, size) are refused."""
    import sys

    label_moments = _native_or_skip("label_moments")
    labels = C._expand_labels(_random_labels(3, size=90, n=60), 4.0).astype(dtype)
    haem = np.random.default_rng(1).random(labels.shape).astype(np.float32)
    size = int(labels.max()) + 3  # absent ids too
    native = C._label_centroids(labels, size)
    features = C.nucleus_features(labels, haem, 0.5)
    monkeypatch.setitem(sys.modules, "her2kit._C", None)
    for got, ref in zip(native, C._centroids(*C._label_pixels(labels), size), strict=True):
        np.testing.assert_array_equal(got, ref)
    reference = C.nucleus_features(labels, haem, 0.5)
    for key in reference:
        np.testing.assert_array_equal(features[key], reference[key], err_msg=key)
    with pytest.raises(ValueError, match=r"\[0, size\)"):
        label_moments(labels, int(labels.max()))


@pytest.mark.parametrize("table_dtype", [bool, np.int32, np.uint32, np.int64, np.float32])
@pytest.mark.parametrize("label_dtype", [np.int32, np.uint32, np.int64])
def test_lookup_equals_fancy_indexing(table_dtype, label_dtype, monkeypatch):
    """``_lookup(table, labels)`` is ``table[labels]``: values and dtype, natively
    or by numpy (the dtypes the native gather does not take, or no extension)."""
    import sys

    rng = np.random.default_rng(7)
    labels = rng.integers(0, 500, (61, 47)).astype(label_dtype)
    table = (rng.random(500) * 1000).astype(table_dtype)
    got = C._lookup(table, labels)
    assert got.dtype == table.dtype and got.shape == labels.shape
    np.testing.assert_array_equal(got, table[labels])
    sliced = labels[::2, 1::3]  # not contiguous
    np.testing.assert_array_equal(C._lookup(table, sliced), table[sliced])
    monkeypatch.setitem(sys.modules, "her2kit._C", None)
    np.testing.assert_array_equal(C._lookup(table, labels), table[labels])


def test_native_lookup_refuses_labels_outside_the_table():
    label_lookup = _native_or_skip("label_lookup")
    labels = np.zeros((4, 5), np.int32)
    labels[3, 4] = 10
    with pytest.raises(IndexError, match="len\\(table\\)"):
        label_lookup(np.zeros(10, bool), labels)
    labels[3, 4] = -1
    with pytest.raises(IndexError):
        label_lookup(np.zeros(10, np.uint32), labels)
    np.testing.assert_array_equal(label_lookup(np.arange(11, dtype=np.uint32), np.abs(labels) * 10),
                                  np.abs(labels) * 10)
