"""A model-free segmenter from colour deconvolution, for tests and benchmarks.

It has the segmenter interface (``mpp``, ``name``, ``predict``) that the
whole-slide pipeline runs, so it doubles as the smallest example of plugging
one's own model in. Nucleus probability rises with haematoxylin optical
density, membrane probability with DAB; it is a per-pixel function, so it
gives identical results however an image is cut into blocks. It is no
substitute for a trained network on real slides.
"""

from __future__ import annotations

import numpy as np


class StainSegmenter:
    """Pixel classes from H/DAB optical density (logistic ramps).

    Args:
        mpp: microns per pixel it claims to work at.
        nucleus_od: haematoxylin OD at which nucleus probability is 1/2.
        membrane_od: DAB OD at which membrane probability is 1/2.
        width: OD over which the ramps rise (logistic scale).
    """

    def __init__(self, mpp: float = 0.5, nucleus_od: float = 0.13, membrane_od: float = 0.09,
                 width: float = 0.02, name: str = "stain-threshold"):
        self.mpp = float(mpp)
        self.name = name
        self.nucleus_od = nucleus_od
        self.membrane_od = membrane_od
        self.width = width
        self._deconvolver = None

    @property
    def fingerprint(self) -> str:
        """What sets its output (a resumed run must use the same)."""
        return (f"stain-threshold mpp={self.mpp} nucleus_od={self.nucleus_od} "
                f"membrane_od={self.membrane_od} width={self.width}")

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """Probabilities (3, H, W) float32 (background, membrane, nucleus) of uint8 RGB (H, W, 3)."""
        from her2kit.preprocess.stain import HedDeconvolver

        if self._deconvolver is None:
            self._deconvolver = HedDeconvolver()
        d = self._deconvolver
        out = np.empty((3, *rgb.shape[:2]), np.float32)
        h = d.haematoxylin(rgb)
        h -= self.nucleus_od
        h *= -1.0 / self.width
        np.exp(h, out=h)
        h += 1.0
        np.reciprocal(h, out=out[2])  # nucleus
        del h
        m = d.dab(rgb)
        m -= self.membrane_od
        m *= -1.0 / self.width
        np.exp(m, out=m)
        m += 1.0
        np.reciprocal(m, out=m)
        m *= 1.0 - out[2]
        out[1] = m
        np.subtract(1.0, out[1], out=out[0])
        out[0] -= out[2]
        np.maximum(out[0], 0.0, out=out[0])
        return out
