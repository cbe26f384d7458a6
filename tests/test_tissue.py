"""Tissue detection at low resolution (the "tissue-otsu" preprocessor)."""

from __future__ import annotations

import numpy as np
import pytest

from her2kit.preprocess.tissue import TissueDetector, slide_thumbnail, slide_tissue_mask

GLASS = np.array([238, 242, 236], np.uint8)
MPP = 8.0  # microns per thumbnail pixel


def tissue_rgb(shape, seed=0, h=(0.05, 0.35), dab=(0.0, 0.15)) -> np.ndarray:
    """Random stained tissue: haematoxylin and DAB optical densities per pixel."""
    from her2kit.preprocess.stain import HedDeconvolver

    rng = np.random.default_rng(seed)
    od = np.stack([rng.uniform(*h, shape), rng.uniform(*dab, shape), np.zeros(shape)], -1)
    return HedDeconvolver().to_rgb(od)


def glass_rgb(shape, seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(GLASS + rng.normal(0, 1.5, (*shape, 3)), 0, 255).astype(np.uint8)


def disc(shape, cy, cx, r) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_tissue_disc_on_glass():
    shape = (200, 240)
    truth = disc(shape, 100, 120, 60)
    rgb = np.where(truth[..., None], tissue_rgb(shape), glass_rgb(shape))
    mask = TissueDetector()(rgb, mpp=MPP)
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.95


def test_all_tissue_stays_tissue_and_glass_stays_glass():
    """Otsu alone would split an all-tissue thumbnail in two; the clipped threshold does not."""
    pale = tissue_rgb((120, 120), h=(0.04, 0.4), dab=(0.0, 0.05))
    assert TissueDetector()(pale, mpp=MPP).mean() > 0.97
    assert TissueDetector()(glass_rgb((120, 120)), mpp=MPP).sum() == 0


def test_holes_filled_and_specks_removed():
    shape = (200, 200)
    truth = disc(shape, 100, 100, 70)
    hole = disc(shape, 100, 100, 6)  # ~ 90 um across: a small gap inside the tissue
    speck = disc(shape, 10, 10, 2)  # ~ 1000 um^2 of dust
    where = (truth & ~hole) | speck
    rgb = np.where(where[..., None], tissue_rgb(shape), glass_rgb(shape))
    mask = TissueDetector()(rgb, mpp=MPP)
    assert mask[hole].all()  # filled
    assert not mask[speck].any()  # removed
    big_hole = disc(shape, 100, 100, 40)  # a lumen of 640 um: real glass, kept
    rgb = np.where((truth & ~big_hole)[..., None], tissue_rgb(shape), glass_rgb(shape))
    assert not TissueDetector()(rgb, mpp=MPP)[disc(shape, 100, 100, 30)].any()


def test_saturation_method():
    shape = (160, 160)
    truth = disc(shape, 80, 80, 50)
    rgb = np.where(truth[..., None], tissue_rgb(shape, h=(0.2, 0.5), dab=(0.1, 0.4)),
                   glass_rgb(shape))
    mask = TissueDetector("saturation")(rgb, mpp=MPP)
    assert (mask & truth).sum() / (mask | truth).sum() > 0.9
    with pytest.raises(ValueError, match="unknown tissue method"):
        TissueDetector("colour")


def test_plugin_record():
    from her2kit.plugins import registry

    spec = registry().get("preprocessor", "tissue-otsu")
    assert spec.stage == "tissue"
    det = spec.factory(method="od")
    assert isinstance(det, TissueDetector)


def test_slide_mask_reads_a_coarse_level(tmp_path):
    """On a pyramid, the mask comes from the coarse level and has the right downsample."""
    from her2kit import omezarr
    from her2kit.readers import open_slide

    h = w = 2048
    truth = disc((h, w), 700, 1300, 500)
    tissue = tissue_rgb((h, w))
    canvas = np.where(truth[..., None], tissue, glass_rgb((h, w)))
    root = omezarr.create_multiscale_image(str(tmp_path / "s.zarr"), (h, w), 0.5, chunk=512)
    omezarr.write_region(root["0"], 0, 0, canvas)
    omezarr.build_pyramid(root)
    slide = open_slide(str(tmp_path / "s.zarr"))
    assert slide.level_count >= 3
    mask, ds = slide_tissue_mask(slide)
    assert ds == 16.0 and mask.shape == (128, 128)  # 8 um/px from 0.5 um/px
    small = truth[8::16, 8::16]
    assert (mask & small).sum() / (mask | small).sum() > 0.9
    thumb, tds = slide_thumbnail(slide, target_mpp=0.0, max_side=256)
    assert thumb.shape == (256, 256, 3) and tds == 8.0


def test_thumbnail_of_a_wide_single_level_image_reads_bounded_pieces(monkeypatch):
    """A very wide image without a pyramid: reads stay within STRIP_BYTES (QA: a
    1,000,000 px wide Zarr took 22 GB in full-width strips), and the picture
    is the one full-width strips give, but at the pieces' seams."""
    from her2kit.preprocess import tissue

    rng = np.random.default_rng(0)
    img = np.repeat(np.repeat(rng.integers(0, 255, (40, 300, 3), dtype=np.uint8), 8, 0), 8, 1)

    class Wide:
        shape, mpp, level_count = img.shape[:2], 0.5, 1
        reads: list = []

        def level_downsample(self, level):
            return 1.0

        def level_shape(self, level):
            return self.shape

        def read_region(self, y, x, h, w, level=0):
            self.reads.append(h * w * 3)
            return img[y:y + h, x:x + w]

    whole, ds = slide_thumbnail(Wide(), target_mpp=4.0, max_side=4096)
    monkeypatch.setattr(tissue, "STRIP_BYTES", 64 * 1024)
    Wide.reads = []
    pieces, ds2 = slide_thumbnail(Wide(), target_mpp=4.0, max_side=4096)
    assert ds2 == ds and pieces.shape == whole.shape == (40, 300, 3)
    assert len(Wide.reads) > 10 and max(Wide.reads) <= 64 * 1024
    assert np.array_equal(pieces, whole)  # 8 x 8 boxes: every seam falls between boxes


def test_thumbnail_of_a_large_level_shows_progress(monkeypatch, capsys):
    """QA: a large slide without a coarse level spent minutes on its thumbnail in
    silence; a large read now shows a bar (small ones stay quiet)."""
    from her2kit.preprocess import tissue

    img = np.full((4096, 512, 3), 200, np.uint8)

    class Tall:
        shape, mpp, level_count = img.shape[:2], 0.5, 1

        def level_downsample(self, level):
            return 1.0

        def level_shape(self, level):
            return self.shape

        def read_region(self, y, x, h, w, level=0):
            return img[y:y + h, x:x + w]

    slide_thumbnail(Tall(), target_mpp=4.0, progress="tall: tissue")
    assert "tall: tissue" not in capsys.readouterr().err
    monkeypatch.setattr(tissue, "LARGE_READ_PX", 1000)
    thumb, _ = slide_thumbnail(Tall(), target_mpp=4.0, progress="tall: tissue")
    assert "tall: tissue" in capsys.readouterr().err and thumb.shape == (512, 64, 3)
    slide_thumbnail(Tall(), target_mpp=4.0)
    assert capsys.readouterr().err == ""


def test_blank_and_border_glass_are_not_holes():
    """QA: a blank slide's thumbnail (its glass one 'small hole') came out all
    tissue, so every block of a blank slide was segmented."""
    blank = np.full((20, 20, 3), 246, np.uint8)
    assert not TissueDetector()(blank, mpp=MPP).any()
    img = np.full((60, 60, 3), 246, np.uint8)
    img[:, 8:] = 120  # tissue from column 8 on: the glass strip touches the border
    img[30:33, 30:33] = 246  # a small hole inside the tissue
    mask = TissueDetector()(img, mpp=MPP)
    assert not mask[:, :6].any() and mask[30:33, 30:33].all() and mask[:, 10:].all()
