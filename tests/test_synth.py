"""Synthetic HER2 IHC: ground truth consistency, scores, determinism, resolution, slides, CLI errors."""

from __future__ import annotations

import csv
import filecmp
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from her2kit.synth import categories, noise, stains
from her2kit.synth.images import generate, make_patch
from her2kit.synth.scene import make_scene


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate(str(out), n=4, size=128, seed=11, progress=False)
    return out


def test_folder_layout_and_index(folder):
    rows = _read_csv(folder / "index.csv")
    assert len(rows) == 4
    assert sorted(r["score"] for r in rows) == ["0", "1+", "2+", "3+"]  # balanced by default
    for r in rows:
        for key in ("image", "mask", "cells", "instances_cells", "instances_nuclei"):
            assert (folder / r[key]).is_file()
        rgb = np.asarray(Image.open(folder / r["image"]))
        mask = np.asarray(Image.open(folder / r["mask"]))
        assert rgb.shape == (128, 128, 3) and rgb.dtype == np.uint8
        assert mask.shape == (128, 128) and set(np.unique(mask)) <= {0, 1, 2}
        assert float(r["mpp"]) == 0.5 and r["domain"] == "default"
        from her2kit.readers import open_slide

        with open_slide(folder / r["image"]) as slide:  # the PNG says its resolution (no --mpp needed)
            assert slide.mpp == pytest.approx(0.5)


def test_masks_agree_with_cell_table(folder):
    for r in _read_csv(folder / "index.csv"):
        cells = _read_csv(folder / r["cells"])
        inst = tifffile.imread(folder / r["instances_cells"])
        nuc = tifffile.imread(folder / r["instances_nuclei"])
        sem = np.asarray(Image.open(folder / r["mask"]))
        ids = {int(c["id"]) for c in cells}
        assert set(np.unique(inst)) - {0} == ids
        for c in cells:
            yy, xx = np.nonzero(inst == int(c["id"]))
            assert abs(yy.mean() - float(c["y"])) < 0.01 and abs(xx.mean() - float(c["x"])) < 0.01
            assert len(yy) == int(c["area"])
        # every nucleus pixel lies inside its own cell, and is the semantic nucleus class
        assert np.array_equal(nuc > 0, sem == 2)
        assert np.all(inst[nuc > 0] == nuc[nuc > 0])
        # membrane pixels belong to stained tumour cells
        by_id = {int(c["id"]): c for c in cells}
        for i in np.unique(inst[sem == 1]):
            assert i != 0 and by_id[int(i)]["tumour"] == "1" and int(by_id[int(i)]["category"]) >= 1
        for c in cells:
            if c["tumour"] == "1" and int(c["category"]) >= 1:
                assert float(c["intensity"]) > 0 and 0 < float(c["completeness"]) <= 1


def test_ground_truth_score_follows_rule(folder):
    for r in _read_csv(folder / "index.csv"):
        cells = _read_csv(folder / r["cells"])
        cat = [int(c["category"]) for c in cells if c["counted"] == "1"]
        counts = np.bincount(cat, minlength=4)
        assert categories.asco_cap_score(counts) == (r["score"], r["subcategory"] or None)
        pct = 100 * counts / counts.sum()
        assert np.allclose(pct, [float(r[f"pct_{k}"]) for k in range(4)], atol=0.006)
        assert r["score"] == r["requested"]


@pytest.mark.parametrize("score", categories.SCORES)
def test_requested_score_is_the_truth(score):
    for seed in range(3):
        p = make_patch(1000 + seed, 256, score)
        assert p.counts.sum() >= 10
        assert p.score == score
        assert categories.asco_cap_score(p.counts) == (p.score, p.subcategory)


def test_rule_at_the_ten_percent_threshold():
    assert categories.asco_cap_score([89, 0, 0, 11]) == ("3+", None)
    assert categories.asco_cap_score([90, 0, 0, 10])[0] != "3+"  # exactly 10% is not >10%
    assert categories.asco_cap_score([85, 0, 5, 10]) == ("2+", None)
    assert categories.asco_cap_score([88, 0, 11, 1]) == ("2+", None)
    assert categories.asco_cap_score([90, 10, 0, 0]) == ("0", "ultralow")
    assert categories.asco_cap_score([89, 11, 0, 0]) == ("1+", None)
    assert categories.asco_cap_score([100, 0, 0, 0]) == ("0", "null")
    assert categories.asco_cap_score([0, 0, 0, 0]) == ("0", "null")


def test_near_threshold_mixes_occur_and_keep_their_score():
    rng = np.random.default_rng(0)
    near = 0
    for score in categories.SCORES:
        for _ in range(60):
            f, sub, is_near = categories.sample_fractions(score, rng)
            assert abs(f.sum() - 1) < 1e-9 and f.min() >= 0
            for n in (37, 150, 1000):
                c = categories.counts_for(score, f, n)
                assert c.sum() == n and c.min() >= 0
                assert categories.asco_cap_score(c)[0] == score
            if is_near:
                near += 1
                key = {"0": 1, "1+": 1, "2+": None, "3+": 3}[score]
                if key is not None:
                    assert 0.079 <= f[key] <= 0.151
    assert near > 40
    # a near-threshold 3+: 11 of 100 cells intense
    c = categories.counts_for("3+", np.array([0.895, 0, 0, 0.105]), 100)
    assert c[3] == 11 and categories.asco_cap_score(c)[0] == "3+"


def test_same_seed_same_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    generate(str(a), n=2, size=96, seed=5, jpeg=True, progress=False)
    generate(str(b), n=2, size=96, seed=5, jpeg=True, progress=False)
    files = [os.path.relpath(os.path.join(d, f), a) for d, _, fs in os.walk(a) for f in fs]
    assert len(files) == 1 + 2 * 5
    match, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert not mismatch and not errors
    c = tmp_path / "c"
    generate(str(c), n=2, size=96, seed=6, progress=False)
    assert (a / "images/0000.png").read_bytes() != (c / "images/0000.png").read_bytes()


def test_finer_mpp_gives_cells_twice_as_many_pixels_across():
    coarse = make_patch(77, 128, "2+", mpp=0.5)
    fine = make_patch(77, 256, "2+", mpp=0.25)
    ta, tb = coarse.region.table, fine.region.table
    big_a = np.median(ta["area"][ta["tumour"] == 1])
    big_b = np.median(tb["area"][tb["tumour"] == 1])
    assert 3.5 < big_b / big_a < 4.5
    # the same tissue: the same number of cells
    assert abs(len(ta["id"]) - len(tb["id"])) <= 2


def test_noise_grid_equals_points():
    y = np.arange(40) * 0.7 - 3
    x = np.arange(30) * 0.7 + 1000
    g = noise.fbm_grid(9, y, x, 25.0)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    p = noise.fbm_points(9, yy.ravel(), xx.ravel(), 25.0).reshape(g.shape)
    assert np.allclose(g, p, atol=1e-5)


def test_beer_lambert_round_trip():
    m = stains.reference_matrix()
    conc = np.array([[[0.5, 1.0, 0.0]]])
    rgb = stains.od_to_rgb(conc, m, np.array([250.0, 250.0, 250.0]))
    od = stains.rgb_to_od(rgb, 250.0)
    assert np.allclose(od[0, 0], conc[0, 0] @ m, atol=1e-4)
    assert np.allclose(stains.od_to_rgb(np.zeros((1, 1, 3)), m, np.array([240.0, 230.0, 220.0])), [240, 230, 220])


def test_shifted_domain_is_outside_default_ranges():
    for seed in range(20):
        d = make_scene(seed, domain="default")
        s = make_scene(seed, domain="shifted")
        ref = stains.reference_matrix()
        assert 12.5 <= d.spacing_um <= 17.5 and not 11.5 < s.spacing_um < 18.5
        assert d.blur_um < 0.5 < 0.6 <= s.blur_um
        assert d.noise_sd <= 3.0 < 4.0 <= s.noise_sd
        for k in (0, 1):
            assert stains.angle_deg(d.stain[k], ref[k]) <= 5.01 < 8.0 < stains.angle_deg(s.stain[k], ref[k])


# ---------------------------------------------------------------- slides

@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    from her2kit.synth.slide import make_slide

    base = tmp_path_factory.mktemp("slide")
    out = base / "s.zarr"
    info = make_slide(str(out), (600, 520), "3+", seed=4, chunk=256, tiff=str(base / "s.ome.tif"),
                      workers=2, progress=False)
    return out, info


def test_slide_blocks_are_seamless(slide, tmp_path):
    """Rendering with another block size gives the same pixels, labels and cells."""
    import zarr

    from her2kit.synth.slide import make_slide

    out, info = slide
    other = tmp_path / "o.zarr"
    make_slide(str(other), (600, 520), "3+", seed=4, chunk=512, workers=1, progress=False)
    a, b = zarr.open_group(str(out), mode="r"), zarr.open_group(str(other), mode="r")
    for name in ("0", "labels/semantic/0", "labels/cells/0", "labels/nuclei/0"):
        assert np.array_equal(np.asarray(a[name]), np.asarray(b[name])), name
    ra = sorted(map(tuple, csv.reader(open(out / "cells.csv"))))
    rb = sorted(map(tuple, csv.reader(open(other / "cells.csv"))))
    assert ra == rb


def test_slide_ground_truth(slide):
    import zarr

    out, info = slide
    root = zarr.open_group(str(out), mode="r")
    attrs = root.attrs["her2kit"]["synthetic"]
    cells = _read_csv(out / "cells.csv")
    ids = [int(c["id"]) for c in cells]
    assert len(ids) == len(set(ids))  # each cell listed once although blocks overlap
    assert set(np.unique(np.asarray(root["labels/cells/0"]))) - {0} == set(ids)
    counts = np.bincount([int(c["category"]) for c in cells if c["tumour"] == "1"], minlength=4)
    assert list(counts) == attrs["counts"]
    assert categories.asco_cap_score(counts) == (attrs["score"], attrs["subcategory"])
    assert attrs["score"] == info["score"] == "3+"
    lab = np.asarray(root["labels/cells/0"])
    for c in cells[:50]:
        yy, xx = np.nonzero(lab == int(c["id"]))
        assert abs(yy.mean() - float(c["y"])) < 0.01 and abs(xx.mean() - float(c["x"])) < 0.01


def test_slide_readable_by_builtin_and_ome_zarr_readers(slide):
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    from her2kit.readers import open_slide

    out, _ = slide
    root = zarr.open_group(str(out), mode="r")
    with open_slide(str(out)) as s:
        assert type(s).__name__ == "ZarrSlide"
        assert s.shape == (600, 520) and s.mpp == pytest.approx(0.5) and s.level_count >= 2
        region = s.read_region(100, 200, 64, 80)
        assert np.array_equal(region, np.moveaxis(np.asarray(root["0"][:, 100:164, 200:280]), 0, -1))
    nodes = list(Reader(parse_url(str(out)))())
    assert nodes[0].data[0].shape == (3, 600, 520)
    assert nodes[0].metadata["axes"][0]["type"] == "channel"
    label_paths = [str(n.zarr) for n in nodes[1:]]
    assert any("semantic" in p for p in label_paths) and any("cells" in p for p in label_paths)
    sem = zarr.open_group(str(out / "labels" / "semantic"), mode="r")
    assert "image-label" in sem.attrs and sem["1"].shape == (300, 260)


def test_slide_ome_tiff(slide):
    out, _ = slide
    path = out.parent / "s.ome.tif"
    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        assert series.shape == (600, 520, 3) and len(series.levels) >= 2
        assert tf.pages[0].is_tiled
        assert tf.is_ome and "PhysicalSizeX=\"0.5\"" in tf.ome_metadata
        import zarr

        lvl0 = zarr.open_group(str(out), mode="r")["0"]
        assert np.array_equal(series.asarray(), np.moveaxis(np.asarray(lvl0), 0, -1))


def _mean_2x2(a):
    """2 x 2 mean (rounded) of an (h, w, c) uint8 image, an odd last row / column replicated."""
    a = np.pad(a, ((0, a.shape[0] % 2), (0, a.shape[1] % 2), (0, 0)), mode="edge").astype(np.uint16)
    return ((a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2] + 2) // 4).astype(np.uint8)


def test_slide_pyramid_levels_are_downsamples_of_level_0(tmp_path):
    """Every level of a tall, odd-sized slide is the 2 x 2 reduction of the level
    above, for the image, its labels and the OME-TIFF. Levels narrower than the
    chunk have non-square chunks (128 x 102, 128 x 51 here); the pyramid used to be
    built in square tiles of the chunk *width*, several racing on one chunk, and
    left parts of levels 1.. unwritten (white image, zero labels)."""
    import zarr

    from her2kit.synth.slide import make_slide

    out, tif = tmp_path / "p.zarr", tmp_path / "p.ome.tif"
    make_slide(str(out), (1001, 203), "2+", seed=1, chunk=128, tiff=str(tif), workers=4, progress=False)
    root = zarr.open_group(str(out), mode="r")
    paths = [d["path"] for d in root.attrs["multiscales"][0]["datasets"]]
    assert len(paths) == 3 and root["2"].chunks == (3, 128, 51)
    rgb = [np.moveaxis(np.asarray(root[p]), 0, -1) for p in paths]
    with tifffile.TiffFile(tif) as tf:
        tiff_levels = [lvl.asarray() for lvl in tf.series[0].levels]
    assert len(tiff_levels) == len(paths)
    labels0 = {name: np.asarray(root[f"labels/{name}/0"]) for name in ("semantic", "cells", "nuclei")}

    def off(got, want):  # share of pixels that differ (a short message, not two arrays)
        assert got.shape == want.shape
        return float((got != want).reshape(*got.shape[:2], -1).any(-1).mean())

    for level in range(1, len(paths)):
        bad, white = off(rgb[level], _mean_2x2(rgb[level - 1])), float((rgb[level] == 255).all(-1).mean())
        assert bad == 0, f"image level {level}: {bad:.0%} of pixels wrong, {white:.0%} white"
        for name, lab0 in labels0.items():
            bad = off(np.asarray(root[f"labels/{name}/{level}"]), lab0[::2**level, ::2**level])
            assert bad == 0, f"labels/{name} level {level}: {bad:.0%} of pixels wrong"
    for level in range(len(paths)):
        bad = off(tiff_levels[level], rgb[level])
        assert bad == 0, f"OME-TIFF level {level}: {bad:.0%} of pixels differ from the Zarr level"


def test_slide_with_glass(tmp_path):
    from her2kit.synth.slide import make_slide

    info = make_slide(str(tmp_path / "g.zarr"), (400, 400), "0", seed=2, tissue=0.3, mpp=4.0,
                      chunk=256, workers=1, progress=False)
    import zarr

    rgb = np.asarray(zarr.open_group(str(tmp_path / "g.zarr"), mode="r")["0"])
    od = stains.rgb_to_od(np.moveaxis(rgb, 0, -1)).sum(-1)
    glass = od < 0.25
    assert 0.3 < glass.mean() < 0.95
    assert info["score"] == "0"


@pytest.mark.parametrize("shape", [(512, 512), (1024, 3072), (8192, 8192)])
@pytest.mark.parametrize("want", [0.3, 0.7])
def test_slide_tissue_fraction_at_any_size(shape, want):
    """--tissue is the share of the slide's own area, small slides included (the
    tissue field used to be thresholded at a global quantile: a slide a few
    field periods wide got anything from no tissue to all tissue)."""
    from her2kit.synth.slide import slide_scene
    from her2kit.synth.tissue import tissue_mask

    step = max(1, max(shape) // 256)
    for seed in range(3):
        scene, _ = slide_scene(shape, "2+", seed, tissue=want)
        got = tissue_mask(scene, step).mean()
        assert abs(got - want) <= 0.1, (shape, seed, got)


def test_small_slide_tissue_and_glass(tmp_path):
    """The rendered slide follows the tissue mask: glass where it says glass."""
    from her2kit.synth.slide import make_slide, slide_scene
    from her2kit.synth.tissue import tissue_mask

    info = make_slide(str(tmp_path / "t.zarr"), (384, 384), "2+", seed=5, tissue=0.3, chunk=256,
                      workers=1, progress=False)
    assert abs(info["tissue_fraction"] - 0.3) <= 0.1
    import zarr

    rgb = np.moveaxis(np.asarray(zarr.open_group(str(tmp_path / "t.zarr"), mode="r")["0"]), 0, -1)
    scene, _ = slide_scene((384, 384), "2+", 5, tissue=0.3)
    mask = tissue_mask(scene)
    assert abs(mask.mean() - info["tissue_fraction"]) < 0.05
    od = stains.rgb_to_od(rgb).sum(-1)
    inner = ndimage.binary_erosion(~mask, iterations=4)  # glass away from blurred tissue edges
    assert inner.any() and (mask & (od > 0)).any()
    assert np.median(od[inner]) < 0.5 * np.median(od[mask])
    assert np.percentile(np.abs(rgb[inner].astype(float) - scene.glass).max(-1), 90) < 25


# ---------------------------------------------------------------- CLI errors

@pytest.mark.parametrize("argv", [
    ["synth", "images", "OUT", "--n", "2", "--size", "0"],
    ["synth", "images", "OUT", "--n", "-1"],
    ["synth", "images", "OUT", "--n", "1", "--score", "4+"],
    ["synth", "images", "OUT", "--n", "1", "--mpp", "0"],
    ["synth", "slide", "OUT.zarr", "--size", "12", "--score", "1+"],
    ["synth", "slide", "OUT.zarr", "--size", "0x100", "--score", "1+"],
    ["synth", "slide", "OUT.zarr", "--size", "64x64", "--score", "high"],
])
def test_bad_parameters_give_one_line_errors(argv, tmp_path):
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    p = subprocess.run([sys.executable, "-m", "her2kit", *argv], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr and lines[0].startswith("her2kit: error:")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.zarr").exists()


def test_cli_writes_images(tmp_path):
    out = tmp_path / "cli"
    p = subprocess.run([sys.executable, "-m", "her2kit", "synth", "images", str(out), "--n", "2", "--size", "64",
                        "--seed", "3", "--score", "1+", "--domain", "shifted", "--mpp", "0.25"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rows = _read_csv(out / "index.csv")
    assert [r["requested"] for r in rows] == ["1+", "1+"] and rows[0]["domain"] == "shifted"
    assert json.dumps(rows)  # plain strings


# ---------------------------------------------------------------- shared OME-Zarr writer

def test_omezarr_writer_pyramid(tmp_path):
    import zarr

    from her2kit import omezarr

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    lab = rng.integers(0, 50, (300, 200)).astype(np.uint32)
    root = omezarr.create_multiscale_image(tmp_path / "t.zarr", (300, 200), 0.25, chunk=64)
    labels = omezarr.create_labels(root, "cells", (300, 200), 0.25, chunk=64)
    for y, x, h, w in omezarr.chunk_grid((300, 200), 64):
        omezarr.write_region(root["0"], y, x, rgb[y:y + h, x:x + w])
        omezarr.write_region(labels["0"], y, x, lab[y:y + h, x:x + w])
    omezarr.build_pyramid(root, workers=2)
    omezarr.build_pyramid(labels)
    r = zarr.open_group(str(tmp_path / "t.zarr"), mode="r")
    ms = r.attrs["multiscales"][0]
    assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, 0.5, 0.5]
    lvl1 = np.asarray(r["1"])
    expect = (rgb.astype(int).reshape(150, 2, 100, 2, 3).sum((1, 3)) + 2) // 4
    assert np.array_equal(np.moveaxis(lvl1, 0, -1), expect)
    assert np.array_equal(np.asarray(r["labels/cells/1"]), lab[::2, ::2])
    assert r["labels"].attrs["labels"] == ["cells"] and "image-label" in r["labels/cells"].attrs
    assert omezarr.level_shapes((300, 200), 3) == [(300, 200), (150, 100), (75, 50)]


def test_truth_counts_only_cells_whose_nucleus_is_in_the_image():
    p = make_patch(4242, 256, "2+")
    t = p.region.table
    tum = t["tumour"] == 1
    left_out = tum & (t["counted"] == 0)
    assert left_out.any() and (tum & (t["counted"] == 1)).any()
    cells = p.region.cells
    border = np.unique(np.concatenate([cells[0], cells[-1], cells[:, 0], cells[:, -1]]))
    # cells left out of the truth are cut by the image border
    assert np.isin(t["id"][left_out], border).all()
    # and the truth is the rule applied to the counted ones
    counts = np.bincount(t["category"][t["counted"] == 1].astype(int), minlength=4)
    assert np.array_equal(counts, p.counts)


def _synth(*argv):
    return subprocess.run([sys.executable, "-m", "her2kit", "synth", *map(str, argv)],
                          capture_output=True, text=True, timeout=120)


def test_rerun_into_a_data_set_is_refused_and_force_replaces_it_whole(tmp_path, monkeypatch):
    """QA: a rerun into a data set overwrote its images one by one; stopped
    midway, the old index.csv no longer matched them, and a smaller --n left
    stale files behind."""
    from her2kit.synth import images

    out = tmp_path / "d"
    assert _synth("images", out, "--n", "3", "--size", "64", "--seed", "1").returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    p = _synth("images", out, "--n", "2", "--size", "64", "--seed", "2")
    assert p.returncode == 1 and "already holds a data set" in p.stderr and "Traceback" not in p.stderr
    # a run stopped midway leaves the earlier data set whole
    real = images.make_patch

    def stop_at_second(seed, *a, **k):
        if seed == images.image_seed(2, 1):
            raise KeyboardInterrupt
        return real(seed, *a, **k)

    monkeypatch.setattr(images, "make_patch", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        images.generate_into(str(out), 2, 64, 2, progress=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    monkeypatch.undo()
    p = _synth("images", out, "--n", "2", "--size", "64", "--seed", "2", "--force")
    assert p.returncode == 0, p.stderr
    assert not (out / "images" / "0002.png").exists() and len(_read_csv(out / "index.csv")) == 2
    assert not (tmp_path / "d.part").exists()


def test_slide_rerun_refused_tiff_checked_first_and_the_same_bytes(tmp_path):
    """QA: a rerun replaced the slide silently; --tiff naming a folder failed after
    all the work; the OME-TIFF's random UUID made one seed give other bytes."""
    a = _synth("slide", tmp_path / "a.zarr", "--size", "256x256", "--score", "1+", "--seed", "4",
               "--tiff", tmp_path / "a.ome.tif")
    assert a.returncode == 0, a.stderr
    p = _synth("slide", tmp_path / "a.zarr", "--size", "256x256", "--score", "0")
    assert p.returncode == 1 and "already holds a slide" in p.stderr
    (tmp_path / "folder").mkdir()
    p = _synth("slide", tmp_path / "b.zarr", "--size", "256x256", "--score", "0", "--tiff", tmp_path / "folder")
    assert p.returncode == 1 and "is a directory" in p.stderr and not (tmp_path / "b.zarr.part").exists()
    b = _synth("slide", tmp_path / "b.zarr", "--size", "256x256", "--score", "1+", "--seed", "4",
               "--tiff", tmp_path / "b.ome.tif")
    assert b.returncode == 0, b.stderr
    assert (tmp_path / "a.ome.tif").read_bytes() == (tmp_path / "b.ome.tif").read_bytes()
    p = _synth("slide", tmp_path / "a.zarr", "--size", "256x256", "--score", "0", "--tiff",
               tmp_path / "a.ome.tif", "--force")
    assert p.returncode == 0 and "score 0" in p.stdout


def test_near_threshold_only_where_the_truth_is_the_requested_score():
    """QA: small images whose truth fell to another score ("0 null") still said
    near_threshold=1 for the mix they could not hold."""
    moved = 0
    for s in range(60):
        p = make_patch(s, 64, "1+")
        if p.score != p.requested:
            moved += 1
            assert not p.near
    assert moved >= 1


def test_force_never_empties_a_folder_that_synth_did_not_make(tmp_path):
    """QA: --force deleted OUT whole, a user's files with it, and `synth images .
    --force` emptied the working directory; --tiff equal to OUT crashed."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for kind, extra in (("images", ["--n", "1", "--size", "32"]), ("slide", ["--size", "128x128", "--score", "0"])):
        p = _synth(kind, mine, *extra, "--force")
        assert p.returncode == 1 and "holds other files" in p.stderr and "Traceback" not in p.stderr
    assert (mine / "notes.txt").read_text() == "keep me"
    p = subprocess.run([sys.executable, "-m", "her2kit", "synth", "images", ".", "--n", "1", "--size", "32",
                        "--force"], capture_output=True, text=True, timeout=120, cwd=mine)
    assert p.returncode == 1 and "working directory" in p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["mine"]
    assert (mine / "notes.txt").read_text() == "keep me"
    # a data set is not a slide: --force does not turn one into the other
    assert _synth("images", tmp_path / "d", "--n", "1", "--size", "32").returncode == 0
    p = _synth("slide", tmp_path / "d", "--size", "128x128", "--score", "0", "--force")
    assert p.returncode == 1 and "not a slide" in p.stderr and (tmp_path / "d" / "index.csv").is_file()
    p = _synth("slide", tmp_path / "s.zarr", "--size", "128x128", "--score", "0", "--tiff", tmp_path / "s.zarr")
    assert p.returncode == 1 and "other than OUT" in p.stderr and not (tmp_path / "s.zarr").exists()
