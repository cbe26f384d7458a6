"""The native watershed and distance transform of cell finding against skimage and scipy."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.segmentation import watershed as sk_watershed

native = pytest.importorskip("her2kit._C")


def random_case(rng, H, W, n_markers, mask_fraction=0.9, plateaus=False):
    image = rng.random((H, W)).astype(np.float32)
    if plateaus:  # few distinct values: many equal costs, ties broken by age
        image = np.round(image * 4).astype(np.float32) / 4
    markers = np.zeros((H, W), np.int32)
    ys, xs = rng.integers(0, H, n_markers), rng.integers(0, W, n_markers)
    markers[ys, xs] = rng.integers(1, n_markers + 1, n_markers)
    mask = rng.random((H, W)) < mask_fraction
    return image, markers, mask


@pytest.mark.parametrize("compactness", [0.0, 0.01, 0.3, 5.0])
def test_matches_skimage_on_random_images(compactness):
    rng = np.random.default_rng(int(compactness * 100))
    for _ in range(20):
        H, W = rng.integers(3, 70, 2)
        image, markers, mask = random_case(rng, H, W, int(rng.integers(1, 12)))
        ours = native.watershed(image, markers, mask, compactness)
        ref = sk_watershed(image, markers, mask=mask, compactness=compactness)
        assert ours.dtype == np.int32
        np.testing.assert_array_equal(ours, ref)


def test_matches_skimage_with_ties_and_multi_pixel_markers():
    """Plateaus and markers of many pixels of equal cost (the nucleus split's
    case): the heap breaks ties exactly as skimage's."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        H, W = rng.integers(10, 60, 2)
        image, _, mask = random_case(rng, H, W, 1, plateaus=True)
        markers = np.zeros((H, W), np.int32)
        for label in range(1, 5):
            y, x = rng.integers(0, H - 3), rng.integers(0, W - 3)
            markers[y:y + 3, x:x + 3] = label
            image[y:y + 3, x:x + 3] = 0.0
        ours = native.watershed(image, markers, mask, 0.0)
        ref = sk_watershed(image, markers, mask=mask)
        np.testing.assert_array_equal(ours, ref)


def test_large_compact_flood_matches_skimage():
    """Many seeds on a smooth image: the bucketed queue keeps the exact order."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(3)
    image = ndi.gaussian_filter(rng.random((300, 260)), 4).astype(np.float32)
    image -= image.min()
    markers = np.zeros(image.shape, np.int32)
    idx = rng.choice(image.size, 150, replace=False)
    markers.ravel()[idx] = np.arange(1, 151)
    mask = image < np.quantile(image, 0.95)
    ours = native.watershed(image, markers, mask, 0.01)
    ref = sk_watershed(image, markers, mask=mask, compactness=0.01)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("plateaus", [False, True])
def test_compact_flood_with_crowded_buckets_matches_skimage(plateaus):
    """Hundreds of items per bucket of the queue, crowded into clumps of near
    and exactly equal costs (as a block's territory flood has them): each
    bucket's sort (sub-ranges of cost, recursively) keeps skimage's order."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(11)
    image = ndi.gaussian_filter(rng.random((600, 560)), 2).astype(np.float32)
    if plateaus:
        image = np.round(image * 16).astype(np.float32) / 16
    image -= image.min()
    markers = np.zeros(image.shape, np.int32)
    idx = rng.choice(image.size, 400, replace=False)
    markers.ravel()[idx] = np.arange(1, 401)
    # markers of distinct costs (ties between markers are taken in raster
    # order here, in an accident of its heap's layout by skimage)
    image.ravel()[idx] = rng.permutation(400).astype(np.float32) * 1e-5
    mask = rng.random(image.shape) < 0.97
    for compactness in (0.01, 0.5):
        ours = native.watershed(image, markers, mask, compactness)
        ref = sk_watershed(image, markers, mask=mask, compactness=compactness)
        np.testing.assert_array_equal(ours, ref)


def test_queue_takes_a_bucket_by_cost_then_age():
    """The compact flood sorts each bucket by spreading its items over
    sub-ranges of cost, recursively: the order of a plain sort by (cost, age),
    on costs crowded into clumps within clumps, ties and lone outliers."""
    rng = np.random.default_rng(5)
    cases = [np.zeros(0), np.array([0.5]), np.full(300, 0.25), rng.random(20)]
    cases += [rng.integers(0, 4, int(n)) * 0.1 for n in rng.integers(2, 25, 20)]  # small, with ties
    cases.append(np.repeat([0.0, 5e-324, 1e-320], 20))  # a range too narrow to scale
    for _ in range(30):
        n = int(rng.integers(25, 4000))
        scale = 10.0 ** rng.integers(-12, 0, n)  # clumps at many scales
        costs = 0.5 + rng.choice([-1.0, 1.0], n) * scale * rng.random(n)
        costs[rng.random(n) < 0.2] = 0.5  # exact ties
        costs[:2] = 0.5 - 1e-3, 0.5 + 1e-3  # the bucket's edges
        cases.append(costs)
    for costs in cases:
        ages = rng.permutation(costs.size).astype(np.uint32)
        np.testing.assert_array_equal(native.queue_order(costs, ages), np.lexsort((ages, costs)))


def test_markers_outside_mask_and_empty_cases():
    image = np.zeros((5, 6), np.float32)
    markers = np.zeros((5, 6), np.int32)
    mask = np.ones((5, 6), bool)
    assert not native.watershed(image, markers, mask, 0.01).any()  # no markers: nothing labelled
    markers[2, 3] = 4
    mask[2, 3] = False  # the only marker lies outside the mask
    assert not native.watershed(image, markers, mask, 0.0).any()
    mask[:] = True
    out = native.watershed(image, markers, mask, 0.0)
    assert (out == 4).all()


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="shape"):
        native.watershed(np.zeros((4, 4), np.float32), np.zeros((4, 5), np.int32),
                         np.ones((4, 4), bool), 0.0)
    with pytest.raises(ValueError, match="2-D"):
        native.watershed(np.zeros(4, np.float32), np.zeros(4, np.int32), np.ones(4, bool), 0.0)


def test_distance_transform_matches_scipy():
    from scipy import ndimage as ndi

    rng = np.random.default_rng(5)
    for _ in range(100):
        H, W = rng.integers(1, 50, 2)
        mask = rng.random((H, W)) < rng.random()
        if mask.all():
            continue
        ours = native.distance_transform(mask)
        assert ours.dtype == np.float32
        np.testing.assert_array_equal(ours, ndi.distance_transform_edt(mask).astype(np.float32))
    # rows with pixels farther than 16 px from the background take the envelope,
    # the others the offsets' minimum: both in one image, and a column without background
    for shape, holes in (((120, 90), 3), ((60, 200), 1), ((40, 45), 0)):
        mask = np.ones(shape, bool)
        mask[60:, :] = rng.random((max(shape[0] - 60, 0), shape[1])) < 0.8
        mask[rng.integers(0, shape[0], holes), rng.integers(0, shape[1], holes)] = False
        if mask.all():
            continue
        np.testing.assert_array_equal(native.distance_transform(mask),
                                      ndi.distance_transform_edt(mask).astype(np.float32))
    # no background at all: no finite distance
    assert np.isinf(native.distance_transform(np.ones((3, 4), bool))).all()


def test_squared_distance_and_within_match_scipy():
    from scipy import ndimage as ndi

    from her2kit.scoring.cells import _max_sq, _within

    rng = np.random.default_rng(9)
    for _ in range(40):
        H, W = rng.integers(2, 80, 2)
        mask = rng.random((H, W)) < rng.random() * 0.05
        mask[rng.integers(0, H), rng.integers(0, W)] = True
        d2 = native.distance_transform(~mask, squared=True)
        assert d2.dtype == np.int64
        ref = ndi.distance_transform_edt(~mask)
        np.testing.assert_array_equal(np.sqrt(d2.astype(np.float64)), ref)
        for distance in (6.0, 7.5, 30.0):
            np.testing.assert_array_equal(_within(mask, distance), ref <= distance)
            assert _max_sq(distance) >= 0


def test_connected_to_seeds_matches_skimage_pieces():
    from skimage.measure import label

    rng = np.random.default_rng(11)
    for _ in range(30):
        H, W = rng.integers(2, 60, 2)
        labels = rng.integers(0, 4, (H, W)).astype(np.int32)
        seeds = rng.random((H, W)) < 0.05
        pieces = label(labels, background=0, connectivity=1)
        keep = np.zeros(pieces.max() + 1, bool)
        keep[pieces[seeds]] = True
        keep[0] = False
        np.testing.assert_array_equal(native.connected_to_seeds(labels, seeds), keep[pieces])


def test_non_finite_costs_are_refused_natively_and_fall_back_in_cell_finding():
    from her2kit.scoring.cells import _watershed

    image = np.zeros((6, 7), np.float32)
    image[2, 3] = np.inf
    image[4, 1] = np.nan
    markers = np.zeros((6, 7), np.int32)
    markers[0, 0], markers[5, 6] = 1, 2
    mask = np.ones((6, 7), bool)
    with pytest.raises(ValueError, match="non-finite"):
        native.watershed(image, markers, mask, 0.01)
    np.testing.assert_array_equal(_watershed(image, markers, mask, 0.01),
                                  sk_watershed(image, markers, mask=mask, compactness=0.01))


def test_images_beyond_the_native_flood_go_to_skimage(monkeypatch):
    """Over 2^29 pixels the native flood's 32-bit ages could overflow: cell
    finding floods such images with skimage (here the limit is lowered)."""
    import her2kit.scoring.cells as cells

    def native_flood(*args):
        raise AssertionError("the native flood was called")

    rng = np.random.default_rng(11)
    image, markers, mask = random_case(rng, 12, 13, 4)
    monkeypatch.setattr(cells, "_native", lambda name: native_flood)
    with pytest.raises(AssertionError, match="native flood was called"):
        cells._watershed(image, markers, mask, 0.01)  # within the limit: native
    monkeypatch.setattr(cells, "_NATIVE_FLOOD_MAX_PIXELS", image.size - 1)
    np.testing.assert_array_equal(cells._watershed(image, markers, mask, 0.01),
                                  sk_watershed(image, markers, mask=mask, compactness=0.01))


@pytest.mark.parametrize("compactness", [0.0, 0.01])
def test_negative_markers_block_like_pixels_outside_the_mask(compactness):
    """A negative marker is a wall (output 0), as a pixel outside the mask;
    the compact flood's own bookkeeping (queued pixels) must not mistake it
    for a queued pixel."""
    rng = np.random.default_rng(21)
    for _ in range(10):
        image, markers, mask = random_case(rng, 30, 31, 6)
        walls = rng.random(image.shape) < 0.1
        markers = np.where(walls & (markers == 0), -rng.integers(2, 50, image.shape), markers).astype(np.int32)
        ours = native.watershed(image, markers, mask, compactness)
        blocked = native.watershed(image, np.maximum(markers, 0), mask & (markers >= 0), compactness)
        np.testing.assert_array_equal(ours, blocked)
        assert not ours[markers < 0].any()


def test_cell_finding_wrapper_follows_skimage_for_labels_the_kernel_reads_otherwise():
    """QA: ids >= 2^31 were wrapped to int32 and negative markers dropped by the
    native kernels; the wrappers hand such labels to skimage."""
    from skimage.measure import label

    from her2kit.scoring.cells import _pieces_with, _watershed

    rng = np.random.default_rng(5)
    image = rng.random((30, 30)).astype(np.float32)
    markers = np.zeros((30, 30), np.int64)
    markers[5, 5], markers[20, 20] = 1, 2
    mask = np.ones((30, 30), bool)
    for m in (-markers, markers * 2**32):
        np.testing.assert_array_equal(_watershed(image, m, mask), sk_watershed(image, m, mask=mask))
    np.testing.assert_array_equal(_watershed(image, markers, mask, compactness=np.inf),
                                  sk_watershed(image, markers, mask=mask, compactness=np.inf))
    labels = np.zeros((10, 10), np.int64)
    labels[2:5, 2:5] = 2**32
    seeds = np.zeros((10, 10), bool)
    seeds[3, 3] = True
    assert _pieces_with(labels, seeds).sum() == 9 == (label(labels) > 0).sum()
    with pytest.raises(ValueError, match="compactness must be finite"):
        native.watershed(image, markers.astype(np.int32), mask, float("inf"))

