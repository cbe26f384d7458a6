"""Stain optics: haematoxylin and DAB absorbance vectors and Beer-Lambert rendering.

Optical density (OD) here is in natural-log units, OD = ln(I0 / I), so a
pixel with stain concentrations c (one per stain) transmits
I = I0 * exp(-c @ V), V holding one unit OD vector (R, G, B) per stain.
(skimage.color.rgb2hed uses the same vectors; its OD differs by a constant
factor.)
"""

from __future__ import annotations

import numpy as np

#: Ruifrok & Johnston (2001) vectors, the centre of the per-slide jitter.
RUIFROK_H = np.array([0.650, 0.704, 0.286])
RUIFROK_DAB = np.array([0.268, 0.570, 0.776])
#: A faint third absorber (eosin-like background of tissue), as in skimage's HED.
RESIDUAL = np.array([0.072, 0.990, 0.105])


def unit(v: np.ndarray) -> np.ndarray:
    """Vector(s) scaled to unit length along the last axis."""
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def reference_matrix() -> np.ndarray:
    """(3, 3) stain matrix, rows haematoxylin, DAB, residual; unit OD vectors."""
    return unit(np.stack([RUIFROK_H, RUIFROK_DAB, RESIDUAL]))


def jittered_matrix(rng: np.random.Generator, shifted: bool = False) -> np.ndarray:
    """A per-slide stain matrix near Ruifrok-Johnston.

    The H and DAB vectors are each turned by a random angle in a random
    direction: up to 5 degrees by default, 9-15 degrees in the shifted
    domain (outside the default range: the held-out stain appearance).
    """
    m = reference_matrix().copy()
    for i in range(2):
        d = rng.normal(size=3)
        d -= d.dot(m[i]) * m[i]
        d /= np.linalg.norm(d)
        deg = rng.uniform(9.0, 15.0) if shifted else rng.uniform(0.0, 5.0)
        t = np.deg2rad(deg)
        v = np.cos(t) * m[i] + np.sin(t) * d
        if v.min() < 0.02:  # stay a physical absorber: turn the other way
            v = np.cos(t) * m[i] - np.sin(t) * d
        m[i] = unit(np.maximum(v, 0.02))
    return m


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between two OD vectors, degrees."""
    return float(np.degrees(np.arccos(np.clip(np.dot(unit(a), unit(b)), -1, 1))))


def od_to_rgb(conc: np.ndarray, matrix: np.ndarray, i0: np.ndarray) -> np.ndarray:
    """Beer-Lambert: stain concentrations (..., 3) -> transmitted intensity (..., 3), float32 in [0, 255].

    ``i0`` is the incident light (the glass colour times the illumination),
    broadcastable to the output.
    """
    od = conc.astype(np.float32) @ matrix.astype(np.float32)
    return (i0 * np.exp(-od)).astype(np.float32)


def rgb_to_od(rgb: np.ndarray, i0: float | np.ndarray = 255.0) -> np.ndarray:
    """Optical density ln(I0 / I) of uint8 or float RGB, clipped at I >= 1."""
    return np.log(np.asarray(i0, dtype=np.float32) / np.maximum(np.asarray(rgb, dtype=np.float32), 1.0))
