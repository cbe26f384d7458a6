"""Training augmentation: geometry, haematoxylin/DAB stain jitter, blur, noise.

Stain jitter works in optical-density (OD) space: OD = -ln(RGB), split into
haematoxylin, eosin/residual and DAB concentrations with scikit-image's
``hed_from_rgb`` matrix, each concentration scaled and shifted at random
(log alpha ~ U(-ln(1+s), ln(1+s)), beta ~ U(-b, b); strong for H and DAB,
weak for the residual; each stain's colour vector is also perturbed) and mapped back with ``rgb_from_hed``. This covers lab-to-lab
differences in stain strength and hue without touching the labels (Tellez
et al., 2018, "H&E/HED jitter").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

_EPS = 1 / 255


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random changes; ``strength`` 0 turns everything but geometry off."""

    flips: bool = True
    # s per H, residual, DAB: concentrations scaled by a log-uniform factor in
    # [1/(1+s), 1+s]. DAB reaches x4 either way: scikit-image's real IHC image
    # has about 10x the DAB optical density of the synthetic data (95th percentile).
    stain_scale: tuple[float, float, float] = (0.4, 0.1, 3.0)
    stain_shift: tuple[float, float, float] = (0.06, 0.02, 0.06)  # b per H, residual, DAB (OD units)
    stain_vector: float = 0.12  # max change of each stain's OD colour vector components (hue shifts)
    brightness: float = 0.08  # additive, fraction of full scale
    contrast: float = 0.15  # multiplicative around the mean
    blur_probability: float = 0.3
    blur_sigma: float = 1.5  # max Gaussian sigma, pixels
    noise_sigma: float = 0.02  # max Gaussian noise std, fraction of full scale

    def describe(self) -> dict:
        return asdict(self)


DEFAULT_AUGMENT = AugmentConfig()


def _matrices():
    from skimage.color import hed_from_rgb, rgb_from_hed

    return np.asarray(hed_from_rgb, np.float64), np.asarray(rgb_from_hed, np.float64)


def stain_jitter(rgb: np.ndarray, alpha: np.ndarray, beta: np.ndarray,
                 vectors: np.ndarray | None = None) -> np.ndarray:
    """Scale (alpha, 3) and shift (beta, 3, OD units) the H, E, DAB concentrations of float RGB in [0, 1].

    ``vectors`` (3, 3), optional: the stains' OD colour vectors to re-render
    with (rows H, E, DAB; default scikit-image's ``rgb_from_hed``), which
    changes their hue (a bluer haematoxylin, a redder DAB).
    """
    hed_from_rgb, rgb_from_hed = _matrices()
    od = -np.log(np.clip(rgb, _EPS, 1.0))
    conc = od.reshape(-1, 3) @ hed_from_rgb
    conc = conc * alpha + beta
    od2 = conc @ (rgb_from_hed if vectors is None else vectors)
    return np.exp(-od2).reshape(rgb.shape)


def augment(rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
            config: AugmentConfig = DEFAULT_AUGMENT) -> tuple[np.ndarray, np.ndarray]:
    """Randomly transform one square patch: uint8 RGB (P, P, 3), labels (P, P) -> same shapes.

    Geometry (flips, 90-degree rotations) applies to both; colour, blur and
    noise to the image only.
    """
    if config.flips:
        k = int(rng.integers(4))
        rgb, mask = np.rot90(rgb, k), np.rot90(mask, k)
        if rng.random() < 0.5:
            rgb, mask = rgb[:, ::-1], mask[:, ::-1]
    x = rgb.astype(np.float64) / 255.0
    scale = np.asarray(config.stain_scale)
    shift = np.asarray(config.stain_shift)
    alpha = np.exp(rng.uniform(-np.log1p(scale), np.log1p(scale)))
    beta = rng.uniform(-shift, shift)
    _, vectors = _matrices()
    if config.stain_vector:
        vectors = np.clip(vectors + rng.uniform(-config.stain_vector, config.stain_vector, (3, 3)), 0.01, None)
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    x = stain_jitter(x, alpha, beta, vectors)
    if config.contrast or config.brightness:
        c = 1 + rng.uniform(-config.contrast, config.contrast)
        b = rng.uniform(-config.brightness, config.brightness)
        x = (x - x.mean()) * c + x.mean() + b
    if rng.random() < config.blur_probability:
        sigma = rng.uniform(0.3, config.blur_sigma)
        x = ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0))
    if config.noise_sigma:
        x = x + rng.normal(0, rng.uniform(0, config.noise_sigma), x.shape)
    out = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out), np.ascontiguousarray(mask)
