"""Built-in readers: each reads files written here and returns the same pixels and mpp;
bad input of every kind is a one-line InputError naming the file."""

from __future__ import annotations

import logging
import os
import pickle
import re

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from her2kit import cli
from her2kit.errors import InputError, PluginError
from her2kit.readers import Slide, open_slide

# ---------------------------------------------------------------- writers


def write_png(path, img, mpp=None, mode=None):
    im = Image.fromarray(img, mode) if mode else Image.fromarray(img)
    kwargs = {"dpi": (25400 / mpp, 25400 / mpp)} if mpp else {}
    im.save(path, **kwargs)
    return str(path)


def write_ome_tiff(path, img, mpp=0.5, unit="µm", compression="zlib"):
    """Tiled pyramidal OME-TIFF, level 1 (every 2nd pixel) in a SubIFD."""
    size = mpp * {"µm": 1, "nm": 1000, "mm": 1e-3}[unit]
    opts = dict(tile=(64, 64), photometric="rgb", compression=compression)
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(img, subifds=1, metadata={"axes": "YXS", "PhysicalSizeX": size, "PhysicalSizeXUnit": unit,
                                            "PhysicalSizeY": size, "PhysicalSizeYUnit": unit}, **opts)
        tif.write(np.ascontiguousarray(img[::2, ::2]), subfiletype=1, **opts)
    return str(path)


def write_ome_zarr(path, levels, mpp=0.5, axes="cyx", version="0.4", unit="micrometer", labels=True):
    """OME-Zarr written with zarr directly: NGFF 0.4 (Zarr v2) or 0.5 (Zarr v3)."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    datasets = []
    for i, level in enumerate(levels):
        data = {"cyx": level.transpose(2, 0, 1), "yxc": level,
                "tczyx": level.transpose(2, 0, 1)[None, :, None]}[axes]
        chunks = tuple(3 if n == 3 else (1 if n == 1 else 128) for n in data.shape)
        arr = root.create_array(str(i), shape=data.shape, dtype=data.dtype, chunks=chunks)
        arr[...] = data
        scale = [1.0 if a in "tcz" else mpp * 2**i for a in axes]
        datasets.append({"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    axis_meta = [{"name": a, "type": "channel"} if a == "c" else
                 {"name": a, "type": "time"} if a == "t" else
                 {"name": a, "type": "space", "unit": unit} for a in axes]
    ms = {"axes": axis_meta, "datasets": datasets, "name": "image"}
    if version == "0.4":
        root.attrs["multiscales"] = [{"version": "0.4", **ms}]
    else:
        root.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    if labels:  # like `her2kit synth slide`: ground truth beside the image, to be ignored
        lab = root.create_group("labels")
        lab.attrs["labels"] = ["semantic"] if version == "0.4" else None
        sem = lab.create_group("semantic")
        sem.create_array("0", shape=levels[0].shape[:2], dtype="uint8", chunks=(128, 128))[...] = 2
    return str(path)


def pyramid(img):
    return [img, np.ascontiguousarray(img[::2, ::2])]


def region(img, y, x, h, w):
    """Reference for read_region: slice, white outside."""
    out = np.full((h, w, 3), 255, np.uint8)
    H, W = img.shape[:2]
    y0, y1, x0, x1 = max(y, 0), min(y + h, H), max(x, 0), min(x + w, W)
    if y1 > y0 and x1 > x0:
        out[y0 - y:y1 - y, x0 - x:x1 - x] = img[y0:y1, x0:x1]
    return out


REGIONS = [(0, 0, 40, 50), (17, 33, 64, 70), (-10, -20, 30, 40), (280, 360, 50, 50), (-5, -5, 400, 500),
           (1000, 1000, 8, 8), (5, 6, 0, 3)]


def check_slide(slide: Slide, levels: list[np.ndarray], mpp: float | None):
    """Same pixels (regions, whole levels, dask) and same mpp as ``levels``."""
    assert isinstance(slide, Slide)
    assert slide.level_count == len(levels)
    if mpp is None:
        assert slide.mpp is None
    else:
        assert slide.mpp == pytest.approx(mpp, rel=1e-5)
    for level, img in enumerate(levels):
        assert slide.level_shape(level) == img.shape[:2]
        for y, x, h, w in REGIONS:
            y, x = (y // 2**level, x // 2**level) if y > 0 else (y, x)
            got = slide.read_region(y, x, h, w, level)
            assert got.dtype == np.uint8 and got.shape == (h, w, 3)
            np.testing.assert_array_equal(got, region(img, y, x, h, w))
        lazy = slide.to_dask(level)
        assert type(lazy).__name__ == "Array" and lazy.dtype == np.uint8 and lazy.shape == img.shape
        np.testing.assert_array_equal(lazy.compute(), img)
        # the graph pickles (for dask.distributed) and reopens the file by path
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(lazy))[3:40, 5:60].compute(), img[3:40, 5:60])
    if mpp is not None and len(levels) > 1:
        assert slide.level_mpp(1) == pytest.approx(2 * mpp, rel=1e-5)
        assert slide.best_level_for_mpp(2 * mpp) == 1
        assert slide.best_level_for_mpp(mpp) == 0


# ---------------------------------------------------------------- PNG / JPEG


def test_png_pixels_and_mpp_from_phys(tmp_path, rgb):
    path = write_png(tmp_path / "a.png", rgb, mpp=0.5)
    with open_slide(path) as slide:
        assert type(slide).__name__ == "PillowSlide"
        check_slide(slide, [rgb], 0.5)


@pytest.mark.parametrize("mpp", [None, 25400 / 72])  # none, or an editor's 72 dpi default
def test_png_without_believable_mpp_is_unknown(tmp_path, rgb, mpp):
    slide = open_slide(write_png(tmp_path / "a.png", rgb, mpp=mpp))
    assert slide.mpp is None
    np.testing.assert_array_equal(slide.read_region(0, 0, 300, 380), rgb)


def test_jpeg_mpp_from_dpi(tmp_path, rgb):
    # JFIF holds 16-bit dots per inch: 0.5 um/px (50800 dpi) fits, 0.25 does not
    path = tmp_path / "a.jpg"
    Image.fromarray(rgb).save(path, dpi=(25400 / 0.5, 25400 / 0.5), quality=95)
    expected = np.asarray(Image.open(path).convert("RGB"))
    check_slide(open_slide(path), [expected], 0.5)


@pytest.mark.parametrize("orientation,upright", [
    (3, lambda a: a[::-1, ::-1]), (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)),
])
def test_exif_orientation_applied(tmp_path, rgb, orientation, upright):
    # QA: a sideways camera JPEG gave cells.csv in stored, not displayed, orientation
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "turned.png"  # lossless, so pixels compare exactly
    Image.fromarray(rgb).save(path, exif=exif)
    with open_slide(str(path)) as slide:
        np.testing.assert_array_equal(slide.read_region(0, 0, *slide.shape), upright(rgb))


def test_png_16_bit_and_non_square_refused(tmp_path, rgb):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w = 4, 5  # Pillow reads a 48-bit PNG as 8-bit RGB (high bytes): QA found it scored
    rows = b"".join(b"\x00" + np.full((w, 3), 40000, ">u2").tobytes() for _ in range(h))
    (tmp_path / "rgb16.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                                         + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    with pytest.raises(InputError, match="rgb16.png: 16-bit image"):
        open_slide(str(tmp_path / "rgb16.png"))
    Image.fromarray(rgb).save(tmp_path / "stretched.png", dpi=(50800, 25400))
    with pytest.raises(InputError, match="stretched.png: pixels are not square"):
        open_slide(str(tmp_path / "stretched.png"))


def test_png_rgba_composited_over_white(tmp_path, rgb):
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    alpha[:, 100:] = 128
    alpha[:, 200:] = 255
    rgba = np.dstack([rgb, alpha])
    slide = open_slide(write_png(tmp_path / "a.png", rgba))
    got = slide.read_region(0, 0, 300, 380)
    a = alpha[..., None] / 255.0
    expected = np.round(rgb * a + 255 * (1 - a)).astype(np.uint8)
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert (got[:, :100] == 255).all()  # transparent: white, as glass
    np.testing.assert_array_equal(got[:, 200:], rgb[:, 200:])  # opaque: the RGB exactly


def test_png_opaque_rgba_reads_as_rgb(tmp_path, rgb):
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    check_slide(open_slide(write_png(tmp_path / "a.png", rgba, mpp=0.5)), [rgb], 0.5)


def test_palette_png_expanded(tmp_path, rgb):
    path = tmp_path / "p.png"
    Image.fromarray(rgb).quantize(64).save(path)
    expected = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(open_slide(path).read_region(0, 0, 300, 380), expected)


# ---------------------------------------------------------------- TIFF


def test_ome_tiff_pyramid_pixels_and_mpp(tmp_path, rgb):
    path = write_ome_tiff(tmp_path / "a.ome.tif", rgb, mpp=0.5)
    with open_slide(path) as slide:
        assert type(slide).__name__ == "TiffSlide"
        check_slide(slide, pyramid(rgb), 0.5)


def test_ome_tiff_with_a_macro_image_first_reads_the_scan(tmp_path, rgb):
    # QA: the first image (a small macro photo at 2 um/px) was scored instead of the scan
    path = tmp_path / "macro.ome.tif"
    macro = np.ascontiguousarray(rgb[::4, ::4])
    with tifffile.TiffWriter(path, ome=True) as tif:
        for img, mpp, name in ((macro, 2.0, "macro"), (rgb, 0.5, "main")):
            tif.write(img, photometric="rgb", tile=(64, 64),
                      metadata={"axes": "YXS", "Name": name, "PhysicalSizeX": mpp, "PhysicalSizeY": mpp})
    with open_slide(str(path)) as slide:
        assert slide.shape == rgb.shape[:2] and slide.mpp == pytest.approx(0.5)
        np.testing.assert_array_equal(slide.read_region(0, 0, *rgb.shape[:2]), rgb)


def test_rgb_written_as_greyscale_pages_says_so(tmp_path, rgb):
    # QA: "image has extra dimensions (Q=300)"
    tifffile.imwrite(tmp_path / "grey.tif", rgb, photometric="minisblack")
    with pytest.raises(InputError, match="greyscale TIFF with 300 pages of 380x3 pixels; her2kit needs RGB"):
        open_slide(str(tmp_path / "grey.tif"))
    planes = tmp_path / "cyx.ome.tif"  # channel planes named as such are RGB
    tifffile.imwrite(planes, rgb.transpose(2, 0, 1), photometric="minisblack",
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    with open_slide(str(planes)) as slide:
        np.testing.assert_array_equal(slide.read_region(0, 0, 300, 380), rgb)


def test_ome_tiff_units_converted(tmp_path, rgb):
    path = write_ome_tiff(tmp_path / "nm.ome.tif", rgb, mpp=0.25, unit="nm")
    assert open_slide(path).mpp == pytest.approx(0.25)


def test_svs_through_tifffile(svs_file, rgb):
    slide = open_slide(svs_file, reader="tifffile")
    check_slide(slide, pyramid(rgb), 0.252)


@pytest.mark.parametrize("unit,per_unit,mpp", [
    ("CENTIMETER", 1e4 / 0.5, 0.5),
    ("INCH", 25400 / 0.25, 0.25),
    ("INCH", 72.0, None),  # an editor's default, not a microscope's
    ("NONE", 2.0, None),
    (None, None, None),
])
def test_plain_tiff_mpp_from_resolution_tags(tmp_path, rgb, unit, per_unit, mpp):
    path = tmp_path / "a.tif"
    kwargs = {"resolution": (per_unit, per_unit), "resolutionunit": unit} if unit else {}
    tifffile.imwrite(path, rgb, photometric="rgb", **kwargs)
    check_slide(open_slide(path), [rgb], mpp)


def test_ndpi_style_resolution(tmp_path, rgb):
    # NDPI keeps its resolution in the TIFF tags, in pixels per centimetre
    path = tmp_path / "a.tiff"
    tifffile.imwrite(path, rgb, photometric="rgb", tile=(64, 64), compression="jpeg",
                     resolution=(1e4 / 0.2273, 1e4 / 0.2273), resolutionunit="CENTIMETER")
    slide = open_slide(path)
    assert slide.mpp == pytest.approx(0.2273, rel=1e-4)
    expected = tifffile.imread(path)
    np.testing.assert_array_equal(slide.read_region(0, 0, 300, 380), expected)


def test_tiff_rgba_unassociated_alpha(tmp_path, rgb):
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:50] = 0
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, np.dstack([rgb, alpha]), photometric="rgb", extrasamples=["unassalpha"])
    got = open_slide(path).read_region(0, 0, 300, 380)
    assert (got[:50] == 255).all()
    np.testing.assert_array_equal(got[50:], rgb[50:])


def test_tiff_rgba_associated_alpha(tmp_path, rgb):
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:50], alpha[50:100] = 0, 128
    premultiplied = np.round(rgb * (alpha[..., None] / 255.0)).astype(np.uint8)
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, np.dstack([premultiplied, alpha]), photometric="rgb", extrasamples=["assocalpha"])
    got = open_slide(path).read_region(0, 0, 300, 380)
    assert (got[:50] == 255).all()
    expected = np.minimum(premultiplied[50:100].astype(int) + 127, 255)
    np.testing.assert_array_equal(got[50:100], expected)
    np.testing.assert_array_equal(got[100:], rgb[100:])


def test_planar_tiff(tmp_path, rgb):
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, rgb.transpose(2, 0, 1), photometric="rgb", planarconfig="separate")
    check_slide(open_slide(path), [rgb], None)


# ---------------------------------------------------------------- Zarr / OME-Zarr


@pytest.mark.parametrize("axes", ["cyx", "yxc", "tczyx"])
@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_pixels_and_mpp(tmp_path, rgb, axes, version):
    path = write_ome_zarr(tmp_path / "a.ome.zarr", pyramid(rgb), mpp=0.5, axes=axes, version=version)
    with open_slide(path) as slide:
        assert type(slide).__name__ == "ZarrSlide"
        check_slide(slide, pyramid(rgb), 0.5)


def test_ome_zarr_units_converted(tmp_path, rgb):
    path = write_ome_zarr(tmp_path / "a.zarr", pyramid(rgb), mpp=250.0, unit="nanometer")
    assert open_slide(path).mpp == pytest.approx(0.25)


def test_ome_zarr_store_without_zarr_suffix(tmp_path, rgb):
    path = write_ome_zarr(tmp_path / "a.zarr", [rgb])
    os.rename(path, tmp_path / "slide")
    check_slide(open_slide(tmp_path / "slide"), [rgb], 0.5)


def test_ome_zarr_written_by_ome_zarr_package(tmp_path, rgb):
    """The ome-zarr package's own writer (NGFF 0.5 here, its own pyramid, axes without units)."""
    writer = pytest.importorskip("ome_zarr.writer")
    root = zarr.open_group(str(tmp_path / "b.zarr"), mode="w")
    writer.write_image(rgb.transpose(2, 0, 1), group=root, axes="cyx",
                       storage_options={"chunks": (3, 128, 128)})
    attrs = dict(root.attrs)
    ms = (attrs.get("multiscales") or attrs["ome"]["multiscales"])[0]
    levels = [np.asarray(root[d["path"]][:]).transpose(1, 2, 0) for d in ms["datasets"]]
    assert len(levels) >= 2
    np.testing.assert_array_equal(levels[0], rgb)
    slide = open_slide(tmp_path / "b.zarr")
    assert slide.level_count == len(levels) and slide.mpp is None  # no units written: unknown
    for level, img in enumerate(levels):
        np.testing.assert_array_equal(slide.read_region(0, 0, *img.shape[:2], level), img)


@pytest.mark.parametrize("layout", ["yxc", "cyx"])
def test_plain_zarr_array(tmp_path, rgb, layout):
    data = rgb if layout == "yxc" else rgb.transpose(2, 0, 1)
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, dtype="uint8",
                            chunks=tuple(min(n, 100) for n in data.shape))
    arr[...] = data
    check_slide(open_slide(tmp_path / "a.zarr"), [rgb], None)


@pytest.mark.parametrize("names,order,error", [
    (("y", "x", "rgb"), (0, 1, 2), None),  # QA: refused as "extra dimensions (R=3)"
    (("Channel", "y", "x"), (2, 0, 1), None),
    (("z", "y", "x"), (2, 0, 1), "extra dimensions (Z=3)"),  # a z-stack of grey planes stays refused
])
def test_zarr_v3_dimension_names(tmp_path, rgb, names, order, error):
    data = rgb.transpose(order)
    arr = zarr.create_array(str(tmp_path / "n.zarr"), shape=data.shape, dtype="uint8", chunks=data.shape,
                            dimension_names=names)
    arr[...] = data
    if error:
        with pytest.raises(InputError, match=re.escape(error)):
            open_slide(tmp_path / "n.zarr")
    else:
        check_slide(open_slide(tmp_path / "n.zarr"), [rgb], None)


def test_to_dask_is_chunked(tmp_path):
    big = np.random.default_rng(0).integers(0, 256, (2100, 40, 3), dtype=np.uint8)
    path = write_ome_zarr(tmp_path / "big.zarr", [big], labels=False)
    lazy = open_slide(path).to_dask()
    assert len(lazy.chunks[0]) > 1  # not one whole-image chunk
    np.testing.assert_array_equal(lazy[1000:1100].compute(), big[1000:1100])


def test_unknown_reader_name():
    with pytest.raises(PluginError, match="unknown reader 'nope'"):
        open_slide(__file__, reader="nope")


# ---------------------------------------------------------------- bad input


def _text(path):
    path.write_text("this is not an image\n" * 10)
    return path


def _empty(path):
    path.write_bytes(b"")
    return path


def _truncated(fraction, compression="zlib", tiled=True):
    def make(path):
        img = np.random.default_rng(5).integers(0, 256, (300, 380, 3), dtype=np.uint8)
        if tiled:
            write_ome_tiff(path, img, compression=compression)
        else:
            tifffile.imwrite(path, img, photometric="rgb")
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])
        return path
    return make


def _corrupt_tile(path):
    write_ome_tiff(path, np.random.default_rng(5).integers(0, 256, (300, 380, 3), dtype=np.uint8))
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[5], tif.pages[0].databytecounts[5]
    data = bytearray(path.read_bytes())
    data[offset:offset + count] = b"\x55" * count
    path.write_bytes(bytes(data))
    return path


def _tiff(data, **kwargs):
    def make(path):
        tifffile.imwrite(path, data, **kwargs)
        return path
    return make


def _png(data, mode=None):
    def make(path):
        write_png(path, data, mode=mode)
        return path
    return make


def _zarr_array(shape, dtype="uint8"):
    def make(path):
        zarr.create_array(str(path), shape=shape, dtype=dtype, chunks=tuple(max(1, min(n, 64)) for n in shape))
        return path
    return make


def _zarr_scaled_y(path):
    write_ome_zarr(path, [np.zeros((64, 64, 3), np.uint8) + 9], labels=False)
    root = zarr.open_group(str(path), mode="r+")
    ms = root.attrs["multiscales"]
    ms[0]["datasets"][0]["coordinateTransformations"][0]["scale"] = [1.0, 1.0, 0.5]
    root.attrs["multiscales"] = ms
    return path


def _zarr_corrupt_chunk(path):
    write_ome_zarr(path, [np.zeros((256, 256, 3), np.uint8) + 9], labels=False)
    (path / "0" / "0.0.0").write_bytes(b"garbage, not a compressed chunk")
    return path


def _zarr_group_without_multiscales(path):
    zarr.open_group(str(path), mode="w").create_group("something")
    return path


def _directory(path):
    path.mkdir()
    (path / "readme.txt").write_text("hello")
    return path


GREY = np.zeros((32, 40), np.uint8)
BAD = {
    # name: (file name, maker, words the message must contain)
    "missing png": ("gone.png", None, "no such file"),
    "missing tif": ("gone.tif", None, "no such file"),
    "missing zarr": ("gone.zarr", None, "no such file"),
    "directory": ("folder", _directory, "directory"),
    "directory named .zarr": ("fake.zarr", _directory, "zarr store"),
    "directory named .tif": ("fake.tif", _directory, "directory"),
    "zero-byte tif": ("empty.tif", _empty, "empty file"),
    "zero-byte png": ("empty.png", _empty, "empty file"),
    "zero-byte jpg": ("empty.jpg", _empty, "empty file"),
    "text as tif": ("text.tif", _text, "not a readable tiff"),
    "text as png": ("text.png", _text, "not a readable image"),
    "text as ome.tif": ("text.ome.tif", _text, "not a readable tiff"),
    "truncated tiled tiff 1/2": ("cut.ome.tif", _truncated(0.5), "truncated"),
    "truncated tiled tiff 9/10": ("cut.ome.tif", _truncated(0.9), "truncated"),
    "truncated tiled tiff 1/20": ("cut.ome.tif", _truncated(0.05), "tiff"),
    "truncated strip tiff 1/2": ("cut.tif", _truncated(0.5, tiled=False), "truncated"),
    "truncated jpeg tiff 1/2": ("cut.tif", _truncated(0.5, compression="jpeg"), "truncated"),
    "corrupt tile": ("bad.ome.tif", _corrupt_tile, "cannot read pixels"),
    "truncated png": ("cut.png", lambda p: (write_png(p, np.zeros((200, 200, 3), np.uint8) + 7),
                                            p.write_bytes(p.read_bytes()[:300]), p)[-1], "not a readable image"),
    "greyscale tif": ("grey.tif", _tiff(GREY), "greyscale"),
    "greyscale png": ("grey.png", _png(GREY), "greyscale"),
    "2-channel tif": ("two.tif", _tiff(np.zeros((32, 40, 2), np.uint8), photometric="minisblack",
                                        planarconfig="contig"), "2 channels"),
    "2-channel png": ("two.png", _png(np.zeros((32, 40, 2), np.uint8), mode="LA"), "2 channels"),
    "2-channel zarr": ("two.zarr", _zarr_array((32, 40, 2)), "2 channels"),
    "5-channel tif": ("five.tif", _tiff(np.zeros((32, 40, 5), np.uint8), photometric="minisblack",
                                         planarconfig="contig"), "5 channels"),
    "16-bit tif": ("deep.tif", _tiff(np.zeros((32, 40, 3), np.uint16), photometric="rgb"), "16-bit"),
    "16-bit png": ("deep.png", _png(np.zeros((32, 40), np.uint16)), "16-bit"),
    "16-bit zarr": ("deep.zarr", _zarr_array((32, 40, 3), "uint16"), "16-bit"),
    "float tif": ("float.tif", _tiff(np.zeros((32, 40, 3), np.float32), photometric="rgb"), "floating-point"),
    "float zarr": ("float.zarr", _zarr_array((32, 40, 3), "float64"), "floating-point"),
    "z-stack tif": ("stack.tif", _tiff(np.zeros((4, 32, 40, 3), np.uint8), photometric="rgb"), "extra dimensions"),
    "greyscale zarr": ("grey.zarr", _zarr_array((32, 40)), "greyscale"),
    "0-pixel zarr": ("zero.zarr", _zarr_array((0, 40, 3)), "empty image"),
    "absurd zarr": ("huge.zarr", _zarr_array((2**21 + 1, 40, 3)), "absurd image size"),
    "absurd zarr, 2M square (QA)": ("square.zarr", _zarr_array((2_000_000, 2_000_000, 3)), "absurd image size"),
    "absurd zarr, 600k square": ("area.zarr", _zarr_array((600_000, 600_000, 3)), "absurd image size"),
    "corrupt zarr chunk": ("bad.zarr", _zarr_corrupt_chunk, "cannot read pixels"),
    # QA: pixels twice as tall as wide were taken as square (cells stretched)
    "non-square OME-TIFF": ("tall.ome.tif", _tiff(np.zeros((32, 40, 3), np.uint8), photometric="rgb",
                                                  metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 1.0}),
                            "not square"),
    "non-square TIFF": ("tall.tif", _tiff(np.zeros((32, 40, 3), np.uint8), photometric="rgb",
                                          resolution=(20000, 10000), resolutionunit="CENTIMETER"),
                        "not square"),
    "non-square OME-Zarr": ("tall.ome.zarr", _zarr_scaled_y, "not square"),
    "zarr group, no multiscales": ("group.zarr", _zarr_group_without_multiscales, "multiscales"),
}


def _open_and_read_all(path):
    """Open, then read every level whole: a problem must surface at one or the other."""
    with open_slide(path) as slide:
        for level in range(slide.level_count):
            slide.read_region(0, 0, *slide.level_shape(level), level)


def _make(tmp_path, case):
    name, maker, _ = BAD[case]
    path = tmp_path / name
    if maker is not None:
        maker(path)
    return str(path)


def _assert_one_line(message: str, path: str, words: str):
    assert path in message
    assert "\n" not in message.strip()
    assert "Traceback" not in message
    assert words.lower() in message.lower(), message


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_input_error(tmp_path, caplog, case):
    path = _make(tmp_path, case)
    caplog.clear()
    with pytest.raises(InputError) as info:
        _open_and_read_all(path)
    _assert_one_line(str(info.value), path, BAD[case][2])
    assert info.value.path == path
    # nothing else reaches the user: libraries' log lines would print beside the error
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("case", ["missing tif", "directory", "zero-byte png", "text as tif",
                                  "truncated tiled tiff 1/2", "corrupt tile", "2-channel tif", "16-bit png"])
def test_bad_input_through_the_command_line(tmp_path, monkeypatch, capsys, case):
    """A verb that opens its inputs with open_slide (as score/segment do) prints one line, exit 1."""
    path = _make(tmp_path, case)

    def verb(args):
        for item in args.inputs:
            _open_and_read_all(item)
        return 0

    monkeypatch.setattr(cli, "_resolve", lambda name: verb)
    monkeypatch.delenv("HER2KIT_DEBUG", raising=False)
    assert cli.main(["segment", path, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("her2kit: error: ") and err.count("\n") == 1
    _assert_one_line(err, path, BAD[case][2])
