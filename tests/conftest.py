"""Shared fixtures. Keep this small; put a fixture here only when two test files need it."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def rgb() -> np.ndarray:
    """A 300 x 380 uint8 RGB test image: smooth gradients plus noise, no two rows alike."""
    rng = np.random.default_rng(1234)
    yy, xx = np.mgrid[0:300, 0:380]
    base = np.stack([yy * 255 // 299, xx * 255 // 379, (yy + xx) % 256], axis=-1)
    noise = rng.integers(0, 40, base.shape)
    return ((base + noise) % 256).astype(np.uint8)


@pytest.fixture(scope="session")
def svs_file(tmp_path_factory, rgb) -> str:
    """An Aperio-style SVS written by tifffile: tiled baseline (MPP = 0.2520),
    a stripped thumbnail, a tiled half-resolution level; uncompressed, so
    every reader must return the exact pixels. OpenSlide opens it as "aperio".
    """
    import tifffile

    path = tmp_path_factory.mktemp("svs") / "slide.svs"
    h, w = rgb.shape[:2]
    desc = (f"Aperio Image Library v12.0.15 \n{w}x{h} [0,0 {w}x{h}] (256x256) RAW|"
            "AppMag = 40|MPP = 0.2520")
    # metadata=None: without it tifffile adds a second ImageDescription (its JSON
    # shape), and OpenSlide then takes the file for a generic TIFF without MPP
    opts = dict(photometric="rgb", compression=None, metadata=None)
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(128, 128), description=desc, **opts)
        tif.write(np.ascontiguousarray(rgb[::4, ::4]), description="Aperio Image Library v12.0.15 \nthumbnail", **opts)
        tif.write(np.ascontiguousarray(rgb[::2, ::2]), tile=(128, 128),
                  description=f"Aperio Image Library v12.0.15 \n{w}x{h} -> {w // 2}x{h // 2}|MPP = 0.504", **opts)
    return str(path)
