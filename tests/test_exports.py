"""Output files: GeoJSON (spec + QuPath fields), cells.csv, score.json, labels.zarr, overlay, report."""

import csv
import json

import numpy as np
import pytest

from her2kit.scoring import exports
from her2kit.scoring.cells import find_cells, probabilities_from_mask
from her2kit.scoring.phantom import make_phantom


@pytest.fixture(scope="module")
def phantom_result():
    p = make_phantom([0, 1, 2, 3] * 3, stroma=3, seed=1)
    r = find_cells(p.rgb, probabilities_from_mask(p.mask), p.mpp)
    return p, r


def _check_ring(ring):
    assert isinstance(ring, list) and len(ring) >= 4
    assert ring[0] == ring[-1], "ring not closed"
    for pt in ring:
        assert len(pt) == 2 and all(isinstance(v, (int, float)) and np.isfinite(v) for v in pt)


def test_geojson_is_valid_qupath_detections(tmp_path, phantom_result):
    p, r = phantom_result
    polys = exports.cell_polygons(r.cell_labels, r.nucleus_labels, r.table["id"], scale=2.0,
                                  offset=(100.0, 50.0))
    n = exports.write_cells_geojson(tmp_path / "cells.geojson", exports.cell_features(r.table, polys))
    doc = json.loads((tmp_path / "cells.geojson").read_text())
    assert doc["type"] == "FeatureCollection"
    assert len(doc["features"]) == n == len(r)
    names = set()
    for f in doc["features"]:
        assert f["type"] == "Feature"
        assert set(f) >= {"type", "geometry", "properties"}
        assert f["geometry"]["type"] == "Polygon"
        for ring in f["geometry"]["coordinates"]:
            _check_ring(ring)
        props = f["properties"]
        assert props["objectType"] == "cell"
        cls = props["classification"]
        assert isinstance(cls["name"], str)
        assert len(cls["color"]) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in cls["color"])
        names.add(cls["name"])
        assert isinstance(props["measurements"], dict)
        assert all(isinstance(v, float) for v in props["measurements"].values())
        assert {"completeness", "intensity", "area_um2"} <= set(props["measurements"])
        assert f["nucleusGeometry"]["type"] == "Polygon"
        for ring in f["nucleusGeometry"]["coordinates"]:
            _check_ring(ring)
    assert {"HER2 0", "HER2 1+", "HER2 2+", "HER2 3+"} <= names
    assert "Stroma" in names
    # coordinates are full-resolution: scale 2, offset (y 100, x 50)
    xs = [pt[0] for f in doc["features"] for pt in f["geometry"]["coordinates"][0]]
    ys = [pt[1] for f in doc["features"] for pt in f["geometry"]["coordinates"][0]]
    assert min(xs) >= 50 and max(xs) <= 50 + 2 * p.rgb.shape[1]
    assert min(ys) >= 100 and max(ys) <= 100 + 2 * p.rgb.shape[0]


def test_polygon_area_matches_label_area(phantom_result):
    _, r = phantom_result
    polys = exports.cell_polygons(r.cell_labels, r.nucleus_labels, r.table["id"], tolerance=0)
    for cid in r.table["id"][:5]:
        ring = np.array(polys[int(cid)][0])
        x, y = ring[:, 0], ring[:, 1]
        area = 0.5 * abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))
        pixels = int((r.cell_labels == cid).sum())
        assert area == pytest.approx(pixels, rel=0.15)


def test_cells_csv_and_score_json(tmp_path, phantom_result):
    _, r = phantom_result
    exports.write_cells_csv(tmp_path / "cells.csv", r.table)
    rows = list(csv.DictReader(open(tmp_path / "cells.csv")))
    assert len(rows) == len(r)
    assert list(rows[0])[:7] == ["id", "y", "x", "category", "tumour", "completeness", "intensity"]
    assert [int(x["id"]) for x in rows] == list(r.table["id"])
    exports.write_score_json(tmp_path / "score.json", {"score": None, "h": np.float64(1.5),
                                                       "n": np.int64(3), "bad": float("nan")})
    doc = json.loads((tmp_path / "score.json").read_text())
    assert doc == {"score": None, "h": 1.5, "n": 3, "bad": None}
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


def test_labels_zarr_ngff(tmp_path, phantom_result):
    import zarr

    p, r = phantom_result
    exports.write_labels_zarr(tmp_path / "labels.zarr", r.semantic, r.cell_labels, p.mpp, chunk=64)
    root = zarr.open_group(str(tmp_path / "labels.zarr"), mode="r")
    assert list(root["labels"].attrs["labels"]) == ["semantic", "cells"]
    cells = root["labels/cells"]
    ms = cells.attrs["multiscales"][0]
    assert ms["version"] == "0.4"
    level0 = np.asarray(cells["0"])
    assert level0.dtype == np.uint32 and np.array_equal(level0, r.cell_labels)
    assert np.array_equal(np.asarray(root["labels/semantic/0"]), r.semantic)
    assert len(ms["datasets"]) >= 2  # a pyramid
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [p.mpp, p.mpp]


def test_overlay_and_report(tmp_path, phantom_result):
    p, r = phantom_result
    ov = exports.overlay_image(p.rgb, r.cell_labels, r.table)
    assert ov.shape == p.rgb.shape and ov.dtype == np.uint8
    # a category-3 cell's outline is red
    cid = r.table["id"][(r.table["category"] == 3) & r.table["tumour"]][0]
    edge = (r.cell_labels == cid) & (ov == np.array(exports.CATEGORY_COLOURS[3], np.uint8)).all(-1)
    assert edge.sum() > 10
    exports.write_overlay_png(tmp_path / "overlay.png", ov)
    from PIL import Image

    assert Image.open(tmp_path / "overlay.png").size == (p.rgb.shape[1], p.rgb.shape[0])
    summary = {"score": "2+", "subcategory": None, "cells_total": 12, "h_score": 150.0,
               "percent": {"0": 25.0, "1": 25.0, "2": 25.0, "3": 25.0}, "percent_complete": 50.0,
               "input": "x.png"}
    exports.write_report_html(tmp_path / "report.html", p.rgb, ov, summary, r.table)
    page = (tmp_path / "report.html").read_text()
    assert "HER2 2+" in page and page.count("data:image/png;base64,") == 4


def _python_outlines(labels, ids, midpoints):
    """exports.outlines with her2kit's native tracer switched off."""
    import her2kit.scoring.cells as cells

    saved = cells._native
    cells._native = lambda name: None
    try:
        return exports.outlines(labels, ids, midpoints)
    finally:
        cells._native = saved


def _largest_piece(mask):
    from scipy import ndimage as ndi

    pieces, _ = ndi.label(mask)
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    return pieces == np.argmax(sizes)


def _shoelace(ring):
    y, x = ring[:, 0], ring[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def test_outlines_native_equal_python_and_exact():
    """The native tracer equals the Python one on random labels (pinches, holes,
    several pieces); corner rings enclose exactly the largest piece (holes
    filled, background 8-connected) and midpoint rings are skimage's
    find_contours outline of that piece, straight runs merged."""
    from scipy import ndimage as ndi
    from skimage.measure import find_contours

    pytest.importorskip("her2kit._C")
    rng = np.random.default_rng(3)
    for trial in range(60):
        labels = rng.integers(0, 4, (14 + trial % 5, 17)).astype(np.int32)
        ids = [0, 1, 2, 3, 5]
        for midpoints in (False, True):
            native = exports.outlines(labels, ids, midpoints)
            python = _python_outlines(labels, ids, midpoints)
            assert all(np.array_equal(a, b) for a, b in zip(native, python, strict=True))
        corners = exports.outlines(labels, ids, midpoints=False)
        mids = exports.outlines(labels, ids)
        assert len(corners[0]) == len(corners[4]) == len(mids[4]) == 0  # background, absent id
        for i in (1, 2, 3):
            piece = _largest_piece(labels == i)
            filled = ndi.binary_fill_holes(piece, structure=np.ones((3, 3)))
            assert _shoelace(corners[i]) == filled.sum()
            c = max(find_contours(np.pad(piece, 1).astype(np.uint8), 0.5), key=len)[:-1] - 0.5
            a, b = c - np.roll(c, 1, axis=0), np.roll(c, -1, axis=0) - c
            turn = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
            assert sorted(map(tuple, c[np.abs(turn) > 1e-9].tolist())) == \
                sorted(map(tuple, mids[i].tolist()))


def test_outlines_of_a_known_shape():
    labels = np.zeros((6, 7), np.uint32)
    labels[1:4, 2:5] = 7  # a 3x3 square ...
    labels[4, 4] = 7      # ... with a pixel below its bottom-right corner
    labels[5, 5] = 7      # and one touching that only at a corner: a separate piece
    (corners,) = exports.outlines(labels, [7], midpoints=False)
    assert corners.tolist() == [[1, 2], [1, 5], [5, 5], [5, 4], [4, 4], [4, 2]]
    (mids,) = exports.outlines(labels, [7])
    # corners cut; (4.5, 4) lies on the diagonal from (5, 4.5) to (4, 3.5)
    assert mids.tolist() == [[1, 2.5], [1, 4.5], [1.5, 5], [4.5, 5], [5, 4.5],
                             [4, 3.5], [4, 2.5], [3.5, 2], [1.5, 2]]


@pytest.mark.parametrize("native", [True, False])
def test_feature_lines_equal_json_dumps_of_features(phantom_result, native, monkeypatch):
    """The WSI worker's Feature text (rings written by the native writer) is byte for
    byte json.dumps of cell_features, at any scale and offset."""
    import sys

    if not native:
        monkeypatch.setitem(sys.modules, "her2kit._C", None)
    _, r = phantom_result
    ids = np.asarray(r.table["id"])
    for scale, offset in (((1.0, 1.0), (0.0, 0.0)), ((1.0137, 0.9871), (4096.0, 12288.0)),
                          ((2.0, 2.0), (123456.5, 0.25)), (0.5, (7.0, 3.0))):
        polygons = exports.cell_polygons(r.cell_labels, r.nucleus_labels, ids, scale=scale, offset=offset)
        ref = [json.dumps(f, separators=(",", ":")) for f in exports.cell_features(r.table, polygons)]
        cells = exports.ring_texts(r.cell_labels, ids, scale=scale, offset=offset)
        nuclei = exports.ring_texts(r.nucleus_labels, ids, scale=scale, offset=offset)
        assert exports.cell_feature_lines(r.table, cells, nuclei) == ref
        assert len(ref) > 10


def test_ring_text_numbers_and_small_rings():
    """Python's float text (".0" on whole numbers, shortest digits), None under 3 points."""
    json_rings = _native_or_skip("json_rings")
    vertices = np.array([[0, 0], [0, 3], [5, 3], [1, 1], [2, 2], [7, 9], [9, 7], [8, 8]], np.int32)
    starts = np.array([0, 3, 5, 8], np.int64)  # rings of 3, 2 and 3 points
    for scale, offset in ((1.0, 0.0), (0.1, 0.005), (3.3, 99999.99), (1e-3, 1e6)):
        got = json_rings(vertices, starts, 2.0, scale, scale, offset, offset)
        assert got[1] is None
        for k in (0, 2):
            pts = vertices[starts[k]:starts[k + 1]] / 2.0
            ring = np.round(np.column_stack([offset + pts[:, 1] * scale, offset + pts[:, 0] * scale]), 2).tolist()
            assert got[k] == json.dumps(ring + [ring[0]], separators=(",", ":")), (scale, offset)
    with pytest.raises(ValueError, match="starts"):
        json_rings(vertices, np.array([0, 9], np.int64), 2.0, 1.0, 1.0, 0.0, 0.0)


def _native_or_skip(name):
    from her2kit.scoring.cells import _native

    fn = _native(name)
    if fn is None:
        pytest.skip(f"her2kit._C.{name} is not built")
    return fn


def test_slide_heat_map_shows_each_squares_own_score():
    """QA: squares were coloured by the mean category, so a 3+ hot spot among
    unstained cells showed the 1+ yellow; now each shows its own ASCO/CAP score."""
    from her2kit.wsi.report import COLOURS, HeatMap

    heat = HeatMap((20, 40), 10.0, mpp0=0.5)  # 100 um squares = 200 level-0 px: 1 x 2 squares
    assert heat.counts.shape == (4, 1, 2)
    cols = {"y": np.full(100 + 5, 50.0), "x": np.r_[np.full(100, 50.0), np.full(5, 300.0)],
            "category": np.r_[np.zeros(85, int), np.full(15, 3), np.full(5, 1)],
            "tumour": np.ones(105, bool)}
    heat.add(cols)
    assert heat.local_scores().tolist() == [[3, 1]]
    rgba = heat.rgba()
    assert rgba[0, 0, :3].tolist() == COLOURS[3].astype(int).tolist() and rgba[0, 0, 3] == 255
    assert rgba[0, 1, :3].tolist() == COLOURS[1].astype(int).tolist()
    assert rgba[0, 1, 3] == round(255 * 5 / HeatMap.FULL_CELLS)  # 5 cells: fainter
    empty = HeatMap((20, 40), 10.0, mpp0=0.5)
    assert (empty.local_scores() == -1).all() and (empty.rgba()[..., 3] == 0).all()


def test_reports_say_undefined_the_note_and_the_roi(tmp_path):
    """QA: a slide with no tumour cells read "HER2 score: None" with no note, and
    neither report said that --roi limited the cells scored."""
    from her2kit.wsi import report

    thumb = np.full((16, 16, 3), 230, np.uint8)
    heat = report.HeatMap((16, 16), 4.0)
    summary = report.score_counts(np.zeros(4, int)) | {"roi": True}  # what a slide with none writes
    assert summary["h_score"] is None and summary["percent"]["3"] is None
    report.write_report(tmp_path / "slide.html", summary, thumb, heat, "s.zarr")
    page = (tmp_path / "slide.html").read_text()
    assert '<span class="score">undefined</span>' in page and "HER2 None" not in page
    assert "no tumour cells found" in page and report.ROI_NOTE in page
    assert "H-score n/a" in page and "1-3: n/a, 2-3: n/a, 3: n/a" in page
    # counts and the shares the rule compares (QA: 5.0% + 5.02% is 2+)
    summary = report.score_counts(np.array([8998, 0, 500, 502]), complete=1002)
    report.write_report(tmp_path / "slide.html", summary, thumb, heat, "s.zarr")
    page = (tmp_path / "slide.html").read_text()
    assert summary["score"] == "2+" and "<td>502</td>" in page
    assert "2-3: 10.02%" in page and "3: 5.0%" in page
    summary = {"score": "1+", "subcategory": None, "cells_total": 3, "h_score": 100.0, "roi": True,
               "percent": {"0": 0.0, "1": 100.0, "2": 0.0, "3": 0.0}, "percent_complete": 0.0,
               "input": "x.png", "counts": {"0": 0, "1": 3, "2": 0, "3": 0}}
    table = {"category": np.ones(3, int), "tumour": np.ones(3, bool), "completeness": np.full(3, 0.3),
             "intensity": np.full(3, 0.05)}
    exports.write_report_html(tmp_path / "image.html", thumb, thumb, summary, table)
    assert report.ROI_NOTE in (tmp_path / "image.html").read_text()
    summary["roi"] = False
    exports.write_report_html(tmp_path / "image.html", thumb, thumb, summary, table)
    assert report.ROI_NOTE not in (tmp_path / "image.html").read_text()


def test_report_percentages_show_which_side_of_10_percent():
    """QA: 2005 of 20000 cells (10.025 %) is 3+, but the report showed "10.0%"."""
    assert exports.percent_text(10.025) == "10.03%" and exports.percent_text(10.0) == "10.0%"
    assert exports.percent_text(9.96) == "9.96%" and exports.percent_text(9.94) == "9.9%"
    assert exports.percent_text(100.0 * 10_000_001 / 100_000_000) == "10.000001%"  # one cell in 10^8
    assert exports.percent_text(None) == "n/a" and exports.percent_text(0.0) == "0.0%"
