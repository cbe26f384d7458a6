"""Cells from probabilities, stain deconvolution, ROI, the score command and its bad inputs."""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from her2kit.preprocess.stain import HedDeconvolver
from her2kit.scoring.cells import CellParams, categorise, find_cells, probabilities_from_mask
from her2kit.scoring.phantom import make_phantom


def _cli(*args, cwd=None):
    env = dict(os.environ, HER2KIT_DISABLE_PLUGINS="1")
    return subprocess.run([sys.executable, "-m", "her2kit", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=env)


# --- stain ---------------------------------------------------------------------------------


def test_hed_round_trip_and_channels():
    d = HedDeconvolver()
    stains = np.array([[[0.3, 0.0, 0.0], [0.0, 0.6, 0.0], [0.2, 0.4, 0.0], [0.0, 0.0, 0.0]]])
    rgb = d.to_rgb(stains)
    back = d(rgb)
    assert back.dtype == np.float32 and back.shape == (1, 4, 3)
    assert np.allclose(back[..., :2], stains[..., :2], atol=0.02)
    assert np.allclose(d.dab(rgb), stains[..., 1], atol=0.02)
    assert np.allclose(d.haematoxylin(rgb), stains[..., 0], atol=0.02)
    assert d.dab(np.full((2, 2, 3), 255, np.uint8)).max() == 0.0  # glass: no stain
    with pytest.raises(ValueError):
        d(np.zeros((2, 2), np.uint8))


def test_stain_channel_native_equals_numpy(monkeypatch):
    """The native one-pass look-up gives the numpy path's values bit for bit
    (signs of zero too), for every channel and odd shapes; not (..., 3) is refused."""
    import her2kit.preprocess.stain as stain

    if stain._native_channel() is None:
        pytest.skip("her2kit._C not built")
    d = HedDeconvolver()
    rng = np.random.default_rng(3)
    every = np.stack(np.meshgrid(*[np.arange(0, 256, 5, dtype=np.uint8)] * 3, indexing="ij"), -1)
    images = [every, rng.integers(0, 256, (37, 41, 3), dtype=np.uint8), np.zeros((0, 3), np.uint8),
              np.full((3, 4, 3), 255, np.uint8), every[::2, 1::3]]  # (the last not contiguous)
    native = {(i, k): d.channel(im, k) for i, im in enumerate(images) for k in range(3)}
    monkeypatch.setattr(stain, "_native_channel", lambda: None)
    for (i, k), got in native.items():
        ref = d.channel(images[i], k)
        assert got.dtype == ref.dtype and got.shape == ref.shape == images[i].shape[:-1]
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(ref))
    with pytest.raises(ValueError):
        d.channel(np.zeros((2, 2), np.uint8), 0)


def test_hed_plugin_record():
    from her2kit.plugins import registry

    fn = registry().get("preprocessor", "hed").factory()
    assert isinstance(fn, HedDeconvolver)


# --- cells ---------------------------------------------------------------------------------


def _match(phantom, result):
    """True category of each detected cell, via the phantom cell under its centroid (-1: none)."""
    ys = np.clip(np.round(result.table["y"]).astype(int), 0, phantom.cells.shape[0] - 1)
    xs = np.clip(np.round(result.table["x"]).astype(int), 0, phantom.cells.shape[1] - 1)
    tid = phantom.cells[ys, xs].astype(int)
    return np.where(tid > 0, phantom.categories[np.maximum(tid, 1) - 1], -1)


def test_find_cells_on_phantom_categories_and_stroma():
    # categories in bands (as HER2 staining clusters in tissue), so most cells have
    # neighbours of their own category
    cats = [0] * 6 + [1] * 6 + [2] * 6 + [3] * 6
    p = make_phantom(cats, stroma=4, seed=3)
    r = find_cells(p.rgb, probabilities_from_mask(p.mask, seed=1), p.mpp)
    truth = _match(p, r)
    tumour = r.table["tumour"]
    # every phantom cell found once, stroma nuclei found and excluded
    assert sorted(truth[truth >= 0]) == sorted(cats)
    assert (~tumour).sum() >= 3 and (truth[~tumour] == -1).all()
    pred, true = r.table["category"][truth >= 0], truth[truth >= 0]
    # complete membranes (2+, 3+) exactly; faint and unstained cells next to stained
    # neighbours pick up some of their DAB (see docs/scoring.md), so 80% overall
    assert (pred[true >= 2] == true[true >= 2]).all(), (pred, true)
    assert (pred == true).mean() >= 0.8, (pred, true)
    assert (pred[true == 0] <= 1).all()
    assert r.cell_labels.dtype == np.uint32 and r.nucleus_labels.dtype == np.uint32
    assert set(np.unique(r.cell_labels)) - {0} == set(r.table["id"])
    assert r.semantic.dtype == np.uint8 and r.semantic.max() <= 2
    # every nucleus lies inside its own cell
    nz = r.nucleus_labels > 0
    assert (r.cell_labels[nz] == r.nucleus_labels[nz]).mean() > 0.99


def test_find_cells_on_empty_and_bad_input():
    rgb = np.full((64, 64, 3), 240, np.uint8)
    probs = np.zeros((3, 64, 64), np.float32)
    probs[0] = 1
    r = find_cells(rgb, probs, 0.5)
    assert len(r) == 0 and r.cell_labels.max() == 0
    with pytest.raises(ValueError):
        find_cells(rgb, probs[:2], 0.5)
    with pytest.raises(ValueError):
        find_cells(rgb, probs, 0.0)


def test_categorise_rule():
    p = CellParams(any_fraction=0.2, complete_fraction=0.9, weak_od=0.1, moderate_od=0.3, intense_od=0.5)
    comp = np.array([0.1, 0.5, 0.5, 1.0, 1.0, 1.0])
    inten = np.array([0.9, 0.2, 0.4, 0.05, 0.2, 0.6])
    assert list(categorise(comp, inten, p)) == [0, 1, 2, 1, 2, 3]


def _two_cells(shared: bool):
    """Two touching 16 x 16 um cells, A (left) and B (right), at 0.5 um/px: (rgb, mask).

    ``shared=False``: only A is stained, its band lies inside A against its
    right, top and bottom borders (as her2kit.synth draws it), B is unstained.
    ``shared=True``: one membrane centred on the cell borders, stained all
    round both cells (as in tissue, where neighbours share a membrane).
    """
    from scipy import ndimage as ndi

    h, w = 56, 88
    yy, xx = np.mgrid[:h, :w]
    a = (yy >= 12) & (yy < 44) & (xx >= 12) & (xx < 44)
    box = (yy >= 12) & (yy < 44) & (xx >= 12) & (xx < 76)
    if shared:
        d = np.minimum.reduce([np.abs(yy - 11.5), np.abs(yy - 43.5), np.abs(xx - 11.5),
                               np.abs(xx - 43.5), np.abs(xx - 75.5)])
        d = np.where((yy >= 10) & (yy < 46) & (xx >= 10) & (xx < 78), d, np.inf)
        dab, band = np.exp(-0.7 * (d / 1.5) ** 2), d < 1.5
    else:
        d = np.where(a, np.minimum.reduce([43 - xx, yy - 12, 43 - yy]), np.inf)
        dab, band = 1.2 * np.exp(-0.7 * (d / 2.0) ** 2), d < 2
    nuc = ((yy - 28) ** 2 + (xx - 28) ** 2 <= 49) | ((yy - 28) ** 2 + (xx - 60) ** 2 <= 49)
    stains = np.zeros((h, w, 3))
    stains[..., 0] = np.where(nuc, 0.35, np.where(box, 0.06, 0.0))
    stains[..., 1] = ndi.gaussian_filter(np.where(nuc, 0.0, dab) + 0.02, 0.7)  # optical blur
    mask = np.zeros((h, w), np.uint8)
    mask[band & ~nuc] = 1
    mask[nuc] = 2
    return HedDeconvolver().to_rgb(stains), mask


def _categories_left_right(rgb, mask, params):
    r = find_cells(rgb, probabilities_from_mask(mask, seed=0), 0.5, params)
    assert len(r) == 2 and r.tumour.all()
    order = np.argsort(r.table["x"])
    return [int(c) for c in r.table["category"][order]], r.table["completeness"][order]


def test_unstained_cell_next_to_stained_band_stays_zero():
    rgb, mask = _two_cells(shared=False)
    cats, comp = _categories_left_right(rgb, mask, CellParams())
    assert cats[0] >= 2  # A: intense, 3 of 4 sides
    assert cats[1] == 0 and comp[1] < 0.15  # B: the neighbour's band is not B's staining
    # the old ring (watershed split mid-band, band pixels measured up to the border)
    # reads B as stained: this is what the side rule and the guard fix
    old = CellParams(side_window_um=0, foreign_guard_um=0, enclosed_rings=False, arc_ownership=0)
    assert _categories_left_right(rgb, mask, old)[0][1] >= 1


def test_shared_stained_membrane_counts_for_both_cells():
    rgb, mask = _two_cells(shared=True)
    cats, comp = _categories_left_right(rgb, mask, CellParams())
    assert cats == [3, 3] and (comp > 0.9).all()


# --- ROI -----------------------------------------------------------------------------------


def test_roi_parsing_and_filter(tmp_path):
    from her2kit.scoring.roi import inside, load_roi

    square = [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]
    hole = [[40, 40], [60, 40], [60, 60], [40, 60], [40, 40]]
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square, hole]},
         "properties": {"objectType": "annotation"}},
        {"type": "Feature", "geometry": {"type": "MultiPolygon",
                                         "coordinates": [[[[200, 200], [210, 200], [210, 210], [200, 200]]]]}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}},
    ]}
    f = tmp_path / "roi.geojson"
    f.write_text(json.dumps(doc))
    polys = load_roi(f)
    assert len(polys) == 2
    got = inside(polys, np.array([10, 50, 150, 208]), np.array([10, 50, 150, 202]))
    assert list(got) == [True, False, False, True]
    # a bare list of features and a single Feature are accepted too
    f.write_text(json.dumps(doc["features"][:1]))
    assert len(load_roi(f)) == 1
    f.write_text('{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}}')
    from her2kit.errors import InputError

    with pytest.raises(InputError, match="no Polygon"):
        load_roi(f)
    f.write_text("not json")
    with pytest.raises(InputError, match="GeoJSON"):
        load_roi(f)


class TruthSegmenter:
    """Stands in for the network: one-hot probabilities of a known mask."""

    name = "truth-masks"

    def __init__(self, mask, mpp):
        self.mask, self.mpp = mask, mpp

    def predict(self, rgb):
        assert rgb.shape[:2] == self.mask.shape
        return probabilities_from_mask(self.mask)


def test_analyse_image_with_roi_and_resampling():
    from her2kit.scoring.commands import analyse_image
    from her2kit.scoring.roi import parse_roi

    p = make_phantom([2] * 16, seed=2)
    seg = TruthSegmenter(p.mask, p.mpp)
    full, _ = analyse_image(p.rgb, p.mpp, seg)
    h, w = p.mask.shape
    roi = parse_roi({"type": "Polygon", "coordinates": [[[0, 0], [w / 2, 0], [w / 2, h], [0, h], [0, 0]]]})
    half, _ = analyse_image(p.rgb, p.mpp, seg, roi=roi)
    assert 0 < len(half) < len(full)
    assert (half.table["x"] < w / 2).all()
    assert set(np.unique(half.cell_labels)) - {0} == set(half.table["id"])
    # an input at twice the model's resolution: labels back at input size, coordinates in input pixels
    from skimage.transform import rescale

    big = np.clip(rescale(p.rgb, 2, channel_axis=-1, preserve_range=True, order=1), 0, 255).astype(np.uint8)
    res, _ = analyse_image(big, p.mpp / 2, seg)
    assert res.cell_labels.shape == big.shape[:2]
    assert len(res) == len(full)
    assert np.allclose(np.sort(res.table["x"]), np.sort(full.table["x"] * 2 + 0.5), atol=1.5)


def test_synthetic_image_scores_right(tmp_path, capsys):
    """A synthetic 3+ image (her2kit.synth) scored with ground-truth probabilities, through run()."""
    from PIL import Image

    from her2kit.scoring.commands import run
    from her2kit.synth.images import make_patch

    patch = make_patch(7, 384, "3+")
    assert patch.score == "3+"
    img = tmp_path / "case.png"
    Image.fromarray(patch.region.rgb).save(img)
    seg = TruthSegmenter(patch.region.semantic, 0.5)
    args = argparse.Namespace(inputs=[str(img)], out=str(tmp_path / "out"), model=None, mpp=0.5,
                              force=False, roi=None, scorer="asco-cap-2018", device=None,
                              workers=1, scheduler=None)
    assert run(args, get_segmenter=lambda: seg) == 0
    out = tmp_path / "out" / "case"
    doc = json.loads((out / "score.json").read_text())
    assert doc["score"] == "3+"
    assert doc["cells_total"] > 20 and doc["model"] == "truth-masks"
    assert set(doc["percent"]) == {"0", "1", "2", "3"}
    for name in ("cells.csv", "cells.geojson", "labels.zarr", "overlay.png", "report.html"):
        assert (out / name).exists(), name
    # percent_complete: the tumour rows of cells.csv with complete staining of any intensity
    import csv

    with open(out / "cells.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["tumour"] == "1"]
    complete = [r for r in rows if r["complete"] == "1"]
    from her2kit.scoring.cells import CellParams

    assert all(float(r["completeness"]) >= CellParams().complete_fraction and r["category"] != "0"
               for r in complete)
    assert any(float(r["completeness"]) >= CellParams().complete_fraction for r in rows)
    assert doc["percent_complete"] == pytest.approx(100.0 * len(complete) / len(rows))
    # run again with other weights under the same name: nothing is redone, and it says why
    before = (out / "score.json").read_bytes()
    other = TruthSegmenter(patch.region.semantic, 0.5)
    other.fingerprint = "other-weights"
    capsys.readouterr()
    assert run(args, get_segmenter=lambda: other) == 0
    said = capsys.readouterr()
    assert "made with another model (truth-masks " in said.out + said.err
    assert (out / "score.json").read_bytes() == before
    assert run(args, get_segmenter=lambda: seg) == 0  # the same model: plainly complete
    said = capsys.readouterr()
    assert "complete already, skipped" in said.out + said.err and "another" not in said.out + said.err
    # outputs made under other cell-finding thresholds (an earlier her2kit) say so too
    doc_before = json.loads((out / "score.json").read_text())
    assert doc_before["cell_params_fingerprint"]
    (out / "score.json").write_text(json.dumps(doc_before | {"cell_params_fingerprint": "older"}))
    assert run(args, get_segmenter=lambda: seg) == 0
    said = capsys.readouterr()
    assert "made with other cell-finding thresholds" in said.out + said.err
    (out / "score.json").write_bytes(before)
    # `segment` writes labels.zarr alone: the fingerprint travels in its attributes
    (out / "score.json").unlink()
    assert run(args, segment_only=True, get_segmenter=lambda: other) == 0
    said = capsys.readouterr()
    assert "made with another model (truth-masks " in said.out + said.err


# --- command line: bad input gets one line, not a traceback ---------------------------------


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("bad")
    Image.fromarray(np.full((64, 64, 3), 245, np.uint8)).save(d / "blank.png")
    (d / "empty.png").write_bytes(b"")
    (d / "garbage.png").write_bytes(b"this is not a png at all")
    return d


def _one_line_error(proc, *words):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("her2kit: error")]
    assert errors, proc.stderr
    for w in words:
        assert any(w in e for e in errors), (w, proc.stderr)


def test_cli_mpp_missing_and_zero(bad_inputs, tmp_path):
    blank = str(bad_inputs / "blank.png")
    _one_line_error(_cli("score", blank, "--out", str(tmp_path)), "blank.png", "--mpp")
    _one_line_error(_cli("score", blank, "--out", str(tmp_path), "--mpp", "0"), "implausible")
    _one_line_error(_cli("score", blank, "--out", str(tmp_path), "--mpp", "50"), "implausible")
    _one_line_error(_cli("score", blank, "--out", str(tmp_path), "--mpp", "0.011"), "expected 0.05 to 4")
    _one_line_error(_cli("score", blank, "--out", str(tmp_path), "--mpp", "20"), "20x is about 0.5")  # QA: 40x upsampling


def test_cli_file_resolution_wins_unless_it_cannot_be_scored(tmp_path):
    from PIL import Image

    blank = np.full((64, 64, 3), 245, np.uint8)
    Image.fromarray(blank).save(tmp_path / "fine.png", dpi=(101600, 101600))  # 0.25 um/px
    Image.fromarray(blank).save(tmp_path / "coarse.jpg", dpi=(2540, 2540))  # 10 um/px
    _one_line_error(_cli("score", str(tmp_path / "coarse.jpg"), "--out", str(tmp_path / "a")),
                    "coarse.jpg", "implausible resolution 10")
    for name, mpp, said in (("fine.png", 0.25, "--mpp 0.5 ignored"), ("coarse.jpg", 0.5, "using --mpp 0.5")):
        proc = _cli("score", str(tmp_path / name), "--out", str(tmp_path / "b"), "--mpp", "0.5")
        assert proc.returncode == 0, proc.stderr
        assert said in proc.stderr and name in proc.stderr
        summary = json.loads((tmp_path / "b" / name.split(".")[0] / "score.json").read_text())
        assert summary["mpp"] == pytest.approx(mpp, rel=1e-3)
        assert summary["mpp_from"] == ("file" if mpp == 0.25 else "--mpp")


def test_cli_refuses_outputs_inside_the_input_and_goes_on_past_a_file_in_the_way(bad_inputs, tmp_path):
    import zarr

    store = tmp_path / "myslide"
    arr = zarr.open_array(str(store), mode="w", shape=(64, 64, 3), dtype="uint8", chunks=(64, 64, 3))
    arr[...] = 245
    arr.attrs["mpp"] = 0.5
    (store / "cells.csv").write_text("the store's own\n")
    before = sorted(p.name for p in store.iterdir())
    for out in (".", "myslide"):  # QA: --out . wrote score.json and cells.csv into the store
        _one_line_error(_cli("score", "myslide", "--out", out, cwd=tmp_path), "myslide", "inside the input")
    assert sorted(p.name for p in store.iterdir()) == before
    assert (store / "cells.csv").read_text() == "the store's own\n"
    # an output folder name taken by a file: that input fails, the next one is scored
    out = tmp_path / "out"
    out.mkdir()
    (out / "blank").write_text("x")
    other = tmp_path / "other.png"
    other.write_bytes((bad_inputs / "blank.png").read_bytes())
    proc = _cli("score", str(bad_inputs / "blank.png"), str(other), "--out", str(out), "--mpp", "0.5")
    _one_line_error(proc, "blank.png", "is a file")
    assert (out / "other" / "score.json").is_file() and "1 of 2 inputs failed" in proc.stderr


def test_an_image_scores_as_a_one_block_slide_of_the_same_pixels(tmp_path):
    """QA: a flat TIFF and a pyramid of the same pixels gave different cells
    (the image path tiled the network 512 px at a time, a slide's block in one
    pass): both now use the block's tiles, with the shipped Her2Net."""
    import tifffile
    from PIL import Image

    from her2kit.synth.images import make_patch

    rgb = make_patch(11, 700, "2+").region.rgb
    Image.fromarray(rgb).save(tmp_path / "flat.png", dpi=(50800, 50800))
    with tifffile.TiffWriter(tmp_path / "pyramid.ome.tif", ome=True) as tif:
        opts = dict(tile=(128, 128), photometric="rgb")
        tif.write(rgb, subifds=1, metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}, **opts)
        tif.write(np.ascontiguousarray(rgb[::2, ::2]), subfiletype=1, **opts)
    proc = _cli("score", str(tmp_path / "flat.png"), str(tmp_path / "pyramid.ome.tif"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    flat, pyramid = ((tmp_path / "o" / d / "cells.csv").read_text() for d in ("flat", "pyramid"))
    assert flat.count("\n") > 100 and flat == pyramid


def test_an_output_folder_held_by_another_run_is_skipped_with_a_note(bad_inputs, tmp_path):
    """QA: two jobs of one batch scoring the same slide wrote one work folder;
    one of them failed half-way. Now the second says the first has it."""
    import fcntl

    out = tmp_path / "o"
    (out / "blank").mkdir(parents=True)
    fd = os.open(out / "blank" / ".her2kit-lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another run, holding it
    try:
        proc = _cli("score", str(bad_inputs / "blank.png"), "--out", str(out), "--mpp", "0.5")
    finally:
        os.close(fd)
    assert proc.returncode == 0 and "another her2kit run is writing its outputs" in proc.stderr
    assert not (out / "blank" / "score.json").exists()
    proc = _cli("score", str(bad_inputs / "blank.png"), "--out", str(out), "--mpp", "0.5")
    assert proc.returncode == 0 and (out / "blank" / "score.json").is_file()
    assert not (out / "blank" / ".her2kit-lock").exists()
    # an input that fails leaves no empty folder made for its lock
    _one_line_error(_cli("score", str(bad_inputs / "garbage.png"), "--out", str(out), "--mpp", "0.5"), "garbage.png")
    assert not (out / "garbage").exists()


def test_a_finished_folder_is_skipped_without_taking_its_lock(bad_inputs, tmp_path, monkeypatch, capsys):
    """Review: the lock was taken before the skip, so a read-only finished folder
    (archived results) failed instead of being skipped."""
    from her2kit.scoring import commands

    args = argparse.Namespace(inputs=[str(bad_inputs / "blank.png")], out=str(tmp_path / "o"), model=None,
                              mpp=0.5, force=False, roi=None, scorer="asco-cap-2018", device=None,
                              workers=1, scheduler=None)
    assert commands.run(args, get_segmenter=lambda: None) == 0

    def no_lock(out_dir, path):
        raise AssertionError("the lock was taken")

    monkeypatch.setattr(commands, "output_lock", no_lock)
    assert commands.run(args, get_segmenter=lambda: None) == 0
    assert "complete already, skipped" in capsys.readouterr().out


def test_cli_empty_and_unreadable(bad_inputs, tmp_path):
    proc = _cli("score", str(bad_inputs / "empty.png"), str(bad_inputs / "garbage.png"),
                "--out", str(tmp_path), "--mpp", "0.5")
    _one_line_error(proc, "empty.png", "garbage.png")
    assert "2 of 2 inputs failed" in proc.stderr


def test_cli_all_background_gives_no_score_and_others_continue(bad_inputs, tmp_path):
    proc = _cli("score", str(bad_inputs / "garbage.png"), str(bad_inputs / "blank.png"),
                "--out", str(tmp_path), "--mpp", "0.5")
    _one_line_error(proc, "garbage.png")  # the bad one fails ...
    doc = json.loads((tmp_path / "blank" / "score.json").read_text())  # ... the blank one is answered
    assert doc["score"] is None and doc["cells_total"] == 0
    assert "no tissue" in doc["note"]
    assert "score is undefined" in proc.stderr
    assert (tmp_path / "blank" / "report.html").exists()


def test_cli_inputs_with_one_name_and_bad_out(bad_inputs, tmp_path):
    """Two inputs that would share an output folder: the first is scored, the
    second is a one-line error (QA: it was silently skipped as "complete");
    the same path twice is done once. An --out that is a file, or --workers 0,
    is a one-line error before any work."""
    import shutil

    blank = str(bad_inputs / "blank.png")
    (tmp_path / "other").mkdir()
    twin = shutil.copy(blank, tmp_path / "other" / "blank.png")
    out = tmp_path / "o"
    proc = _cli("score", blank, blank, str(twin), "--out", str(out), "--mpp", "0.5")
    _one_line_error(proc, "other/blank.png", "inputs with one name")
    assert "1 of 3 inputs failed" in proc.stderr and "given twice" in proc.stderr
    assert json.loads((out / "blank" / "score.json").read_text())["input"] == blank
    afile = tmp_path / "afile"
    afile.write_text("")
    _one_line_error(_cli("score", blank, "--out", str(afile), "--mpp", "0.5"), "is a file, not a folder")
    _one_line_error(_cli("score", blank, "--out", str(afile / "sub"), "--mpp", "0.5"), "cannot create")
    _one_line_error(_cli("score", blank, "--out", str(out), "--workers", "0"), "--workers 0")


def test_cli_a_bad_model_stops_the_run_once(tmp_path):
    """A model every input would need and that cannot load is one error, not one per input."""
    from PIL import Image
    from skimage.data import immunohistochemistry

    paths = []
    for name in ("a.png", "b.png"):
        Image.fromarray(immunohistochemistry()[:96, :96]).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    proc = _cli("score", *paths, "--out", str(tmp_path / "o"), "--mpp", "0.5", "--model", "bogusname")
    _one_line_error(proc, "unknown model 'bogusname'")
    assert proc.stderr.count("her2kit: error") == 1 and "inputs failed" not in proc.stderr


def test_cli_finished_folder_of_another_input_or_roi(bad_inputs, tmp_path):
    """Across runs: a finished folder made from another input with the same stem
    is an error, not "complete already"; one made for another ROI says so (QA)."""
    from PIL import Image

    blank = str(bad_inputs / "blank.png")
    out = tmp_path / "o"
    assert _cli("score", blank, "--out", str(out), "--mpp", "0.5").returncode == 0
    other = tmp_path / "blank.tif"
    Image.open(blank).save(other)
    _one_line_error(_cli("score", str(other), "--out", str(out), "--mpp", "0.5"),
                    "holds the outputs of another input")
    # the same file name in another folder, another file: told apart by its size
    (tmp_path / "elsewhere").mkdir()
    namesake = tmp_path / "elsewhere" / "blank.png"
    Image.open(blank).convert("RGB").resize((40, 40)).save(namesake)
    assert namesake.stat().st_size != (bad_inputs / "blank.png").stat().st_size
    proc = _cli("score", str(namesake), "--out", str(out), "--mpp", "0.5")
    _one_line_error(proc, "holds the outputs of another input")
    assert "bytes" in proc.stderr
    roi = tmp_path / "roi.geojson"
    roi.write_text(json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [30, 0], [30, 30], [0, 0]]]}))
    proc = _cli("score", blank, "--out", str(out), "--mpp", "0.5", "--roi", str(roi))
    assert proc.returncode == 0 and "for another --roi" in proc.stdout + proc.stderr
    proc = _cli("score", blank, "--out", str(out), "--mpp", "0.5")
    assert proc.returncode == 0 and "complete already, skipped" in proc.stdout + proc.stderr


def test_cli_roi_outside_the_image_is_an_error(bad_inputs, tmp_path):
    roi = tmp_path / "far.geojson"
    roi.write_text(json.dumps({"type": "Polygon",
                               "coordinates": [[[500, 500], [600, 500], [600, 600], [500, 500]]]}))
    proc = _cli("score", str(bad_inputs / "blank.png"), "--out", str(tmp_path / "o"), "--mpp", "0.5",
                "--roi", str(roi))
    _one_line_error(proc, "blank.png", "--roi lies outside the image (64x64 pixels)")


@pytest.mark.parametrize("path,stem", [("a/b/slide.ome.tiff", "slide"), ("slide.OME.ZARR/", "slide"),
                                       ("x/img.npy", "img"), ("case 1.svs", "case 1"),
                                       ("noext", "noext"), (".hidden", ".hidden"), ("s3://b/k.zarr", "k")])
def test_output_folder_names(path, stem):
    """One rule for images and slides; a plugin reader's own format loses its
    extension too (QA: img.npy went to OUT/img.npy/)."""
    from her2kit.scoring.commands import stem_of

    assert stem_of(path) == stem


def test_cli_finished_folder_at_another_mpp_or_scorer_says_so(bad_inputs, tmp_path):
    """QA: a rerun with another --mpp (for a file without one) or --scorer was
    "complete already, skipped" as if nothing had changed."""
    blank = str(bad_inputs / "blank.png")
    out = tmp_path / "o"
    assert _cli("score", blank, "--out", str(out), "--mpp", "0.5").returncode == 0
    done = json.loads((out / "blank" / "score.json").read_text())
    assert done["mpp_from"] == "--mpp" and done["mpp"] == 0.5
    proc = _cli("score", blank, "--out", str(out), "--mpp", "0.25")
    assert proc.returncode == 0 and "made at another --mpp (0.5), skipped" in proc.stdout
    proc = _cli("score", blank, "--out", str(out), "--mpp", "0.5", "--scorer", "h-score")
    assert proc.returncode == 0 and "made with another --scorer (asco-cap-2018)" in proc.stdout
    proc = _cli("score", blank, "--out", str(out), "--mpp", "0.25", "--scorer", "h-score")
    assert proc.returncode == 0 and ("made at another --mpp (0.5); made with another --scorer "
                                     "(asco-cap-2018), skipped") in proc.stdout  # every difference
    proc = _cli("score", blank, "--out", str(out), "--mpp", "0.5")
    assert proc.returncode == 0 and "complete already, skipped" in proc.stdout
    proc = _cli("score", blank, "--out", str(out), "--mpp", "0.25", "--force")
    assert proc.returncode == 0 and json.loads((out / "blank" / "score.json").read_text())["mpp"] == 0.25


@pytest.mark.parametrize("glass", [(255, 255, 255), (240, 243, 247), (224, 230, 242), (238, 232, 228),
                                   (0, 0, 0), "noisy"])
def test_glass_in_the_field_does_not_raise_the_staining(glass):
    """QA: a HER2 0 image padded with pure white (as scanners clip glass and
    exports pad) scored 1+: the white read 0 DAB OD and pulled the unstained
    baseline down, so every cell's membrane looked stained. Then the same with
    tinted glass (the image's own glass colour): 79 % faint, 1+; then (review)
    darker bluish glass, warm glass, black padding and noisy glass."""
    from her2kit.scoring.cells import find_cells, probabilities_from_mask
    from her2kit.synth.images import make_patch

    p = make_patch(7, 384, "0")
    probs = probabilities_from_mask(p.mask if hasattr(p, "mask") else p.region.semantic)
    rgb = np.empty((768, 768, 3), np.uint8)
    if glass == "noisy":
        rng = np.random.default_rng(0)
        rgb[:] = np.clip(rng.normal((230, 233, 240), 4, (768, 768, 3)), 0, 255).astype(np.uint8)
    else:
        rgb[:] = glass
    rgb[:384, :384] = p.region.rgb
    padded = np.zeros((3, 768, 768), np.float32)
    padded[0] = 1.0
    padded[:, :384, :384] = probs
    alone = find_cells(p.region.rgb, probs, 0.5).table
    framed = find_cells(rgb, padded, 0.5).table
    tum_a, tum_f = alone["tumour"] == 1, framed["tumour"] == 1
    assert tum_a.sum() > 20 and tum_a.sum() == tum_f.sum()
    # the cells whose rings cannot reach the padding (glass that reads DAB, e.g.
    # warm or black, stains a border cell's outer band: a cell's own matter)
    inner_a = tum_a & (alone["x"] < 360) & (alone["y"] < 360)
    inner_f = tum_f & (framed["x"] < 360) & (framed["y"] < 360)
    hist_a = np.bincount(alone["category"][inner_a].astype(int), minlength=4)
    hist_f = np.bincount(framed["category"][inner_f].astype(int), minlength=4)
    assert inner_a.sum() > 20 and np.array_equal(hist_a, hist_f), (hist_a, hist_f)
    # and the baseline itself stays (all background pixels: 0 to 2.0 OD here)
    from her2kit.preprocess.stain import HedDeconvolver
    from her2kit.scoring import cells as C

    def baseline(image, pr):
        near = C._within(C.segment_nuclei(pr[2], 0.5, C.CellParams()) > 0, C._px(8.0, 0.5))
        return C.dab_baseline(HedDeconvolver().dab(image), pr, near)

    assert abs(baseline(rgb, padded) - baseline(p.region.rgb, probs)) < 0.002


def test_roi_bom_nan_and_zero_area(tmp_path):
    """QA: a GeoJSON with a byte-order mark was "not readable"; NaN coordinates
    read as "outside the image"; a zero-area polygon gave "no score", exit 0."""
    from her2kit.errors import InputError
    from her2kit.scoring.roi import load_roi

    square = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}
    bom = tmp_path / "bom.geojson"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(square).encode())
    assert len(load_roi(bom)) == 1
    for name, coords, message in (
            ("nan", [[[0, 0], [float("nan"), 0], [10, 10], [0, 0]]], "not a finite number"),
            ("flat", [[[0, 0], [5, 5], [10, 10], [0, 0]]], "encloses no area")):
        f = tmp_path / f"{name}.geojson"
        f.write_text(json.dumps({"type": "Polygon", "coordinates": coords}))
        with pytest.raises(InputError, match=message):
            load_roi(f)
