"""Haematoxylin/DAB colour deconvolution (Ruifrok & Johnston, 2001).

An RGB pixel's optical density (OD = -log10(I / I0)) is a linear mix of the
stains' OD vectors. With the three unit vectors of haematoxylin, DAB and a
residual (their cross product) as rows of a 3x3 matrix M, the stain amounts
are ``od @ inv(M)``. The vectors are skimage's (``skimage.color.hed_from_rgb``
uses the same ones), but the output here is in OD units along each stain's
unit vector, not skimage's rescaled logarithm.

Speed matters on whole slides: a uint8 intensity has only 256 values, so the
logarithm is a 256-entry float32 lookup table (``np.take``), and the
projection is a float32 (N, 3) x (3, 3) matrix product into a preallocated
output; both run on chunks of 65536 pixels that stay in cache. One stain
alone is three table look-ups (per channel, the log already multiplied by
that stain's column) and two additions. See benchmarks/bench_wsi.py
(section ``hed``) for the speed against ``skimage.color.rgb2hed``.
"""

from __future__ import annotations

import numpy as np

#: Stain OD vectors (R, G, B) from Ruifrok & Johnston (2001), as in skimage.
HAEMATOXYLIN = (0.65, 0.70, 0.29)
DAB = (0.27, 0.57, 0.78)


def stain_matrix(haematoxylin=HAEMATOXYLIN, dab=DAB) -> np.ndarray:
    """Rows: unit OD vectors of haematoxylin, DAB and residual (H x DAB), (3, 3)."""
    h = np.asarray(haematoxylin, dtype=np.float64)
    d = np.asarray(dab, dtype=np.float64)
    h = h / np.linalg.norm(h)
    d = d / np.linalg.norm(d)
    r = np.cross(h, d)
    r = r / np.linalg.norm(r)
    return np.stack([h, d, r])


def _native_channel():
    """her2kit's native one-pass stain look-up, or None when the extension is not built."""
    try:
        from her2kit._C import stain_channel
    except ImportError:
        return None
    return stain_channel


class HedDeconvolver:
    """Callable: RGB uint8 (..., 3) -> stain amounts float32 (..., 3), in OD units.

    Channels of the result: haematoxylin, DAB, residual (0 = none; a strong
    DAB membrane is ~0.5-1.5). Intensities are taken as (I + 1) / 256 so that
    black stays finite. Amounts are not clipped: colours outside the stain
    model give small negative values (clip with ``np.maximum(x, 0)`` where a
    picture needs it); ``dab()`` and ``haematoxylin()`` do clip.
    """

    def __init__(self, haematoxylin=HAEMATOXYLIN, dab=DAB):
        self.matrix = stain_matrix(haematoxylin, dab)
        # amounts = od @ inverse, od = -log10((I + 1) / 256) = ln((I + 1) / 256) * (-1 / ln 10)
        self.inverse = np.linalg.inv(self.matrix)
        self._project = (-self.inverse / np.log(10.0)).astype(np.float32)
        # ln((I + 1) / 256) for every uint8 I, and per channel c and stain s the
        # product ln(...) * project[c, s] (one stain = sum of three look-ups)
        log_i = np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)
        self._log_lut = log_i.astype(np.float32)
        self._stain_lut = np.ascontiguousarray(
            (log_i[None, :, None] * (-self.inverse / np.log(10.0))[:, None, :]).transpose(2, 0, 1),
            dtype=np.float32)  # (stain, channel, 256)

    @staticmethod
    def _check(rgb: np.ndarray) -> np.ndarray:
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim < 1 or rgb.shape[-1] != 3:
            raise ValueError(f"expected uint8 RGB (..., 3), got {rgb.dtype} {rgb.shape}")
        return rgb

    #: pixels per chunk: a chunk's uint8 input, float32 logs and output stay in cache
    CHUNK = 1 << 16

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        rgb = self._check(rgb)
        flat = np.ascontiguousarray(rgb).reshape(-1, 3)
        out = np.empty((flat.shape[0], 3), dtype=np.float32)
        buf = np.empty((min(self.CHUNK, flat.shape[0]), 3), dtype=np.float32)
        for start in range(0, flat.shape[0], self.CHUNK):
            stop = min(start + self.CHUNK, flat.shape[0])
            logs = buf[: stop - start]
            np.take(self._log_lut, flat[start:stop], out=logs)
            np.matmul(logs, self._project, out=out[start:stop])
        return out.reshape(rgb.shape)

    def channel(self, rgb: np.ndarray, index: int) -> np.ndarray:
        """One stain (0 haematoxylin, 1 DAB, 2 residual) as float32 (...,); stains clipped at 0."""
        rgb = self._check(rgb)
        lut = self._stain_lut[index]
        native = _native_channel()
        if native is not None:  # one pass, the same float32 sums (6x faster)
            return native(np.ascontiguousarray(rgb), lut, index < 2)
        flat = np.ascontiguousarray(rgb).reshape(-1, 3)
        out = np.empty(flat.shape[0], dtype=np.float32)
        tmp = np.empty(min(self.CHUNK, flat.shape[0]), dtype=np.float32)
        for start in range(0, flat.shape[0], self.CHUNK):
            stop = min(start + self.CHUNK, flat.shape[0])
            o, t = out[start:stop], tmp[: stop - start]
            np.take(lut[0], flat[start:stop, 0], out=o)
            np.take(lut[1], flat[start:stop, 1], out=t)
            o += t
            np.take(lut[2], flat[start:stop, 2], out=t)
            o += t
        if index < 2:
            np.maximum(out, 0.0, out=out)
        return out.reshape(rgb.shape[:-1])

    def dab(self, rgb: np.ndarray) -> np.ndarray:
        """DAB optical density, float32 (...,), >= 0."""
        return self.channel(rgb, 1)

    def haematoxylin(self, rgb: np.ndarray) -> np.ndarray:
        """Haematoxylin optical density, float32 (...,), >= 0."""
        return self.channel(rgb, 0)

    def to_rgb(self, stains: np.ndarray) -> np.ndarray:
        """Inverse: stain amounts (..., 3) in OD -> RGB uint8 (for pictures and tests)."""
        od = np.asarray(stains, dtype=np.float64) @ self.matrix
        rgb = 256.0 * np.power(10.0, -od) - 1.0
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
