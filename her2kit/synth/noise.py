"""Deterministic noise as a pure function of (key, global coordinates).

Nothing here holds state: the value at a point depends only on the integer
key and the point, so any window of a slide can be rendered on its own and
agrees with its neighbours.
"""

from __future__ import annotations

import math

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_K = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F),
      np.uint64(0x165667B19E3779F9), np.uint64(0x27D4EB2F165667C5))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def hash64(key: int, *coords: np.ndarray | int) -> np.ndarray:
    """A 64-bit hash of an integer key and up to four integer coordinate arrays."""
    h = np.asarray(_mix(np.asarray([key & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)))
    for k, c in zip(_K, coords, strict=False):
        c = np.asarray(c, dtype=np.int64).astype(np.uint64)
        h = _mix(h ^ (c * k))
    if not coords:
        return h[0]
    return h.reshape(np.broadcast_shapes(*(np.shape(c) for c in coords)))


def uniform(key: int, *coords: np.ndarray | int) -> np.ndarray:
    """Uniform floats in [0, 1) hashed from a key and integer coordinates."""
    return (hash64(key, *coords) >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def subkey(key: int, name: str) -> int:
    """A derived key for one named random stream."""
    h = 1469598103934665603
    for ch in name.encode():
        h = ((h ^ ch) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return int(hash64(key ^ h))


def pixel_hash(key: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A 64-bit hash per pixel (len(rows), len(cols)) of global pixel indices (|index| < 2**31).

    splitmix64 of an injective packing of (row, col): one mixing round, a
    fraction of the cost of :func:`hash64`, plenty for pixel noise.
    """
    k = hash64(key)
    r = (np.asarray(rows, dtype=np.int64)[:, None].astype(np.uint64) << np.uint64(32))
    c = np.asarray(cols, dtype=np.int64)[None, :].astype(np.uint64) & np.uint64(0xFFFFFFFF)
    return _mix((r | c) * _K[0] + k)


def white(key: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Per-pixel uniform noise in [0, 1), float32 (len(rows), len(cols)); rows/cols are global pixel indices."""
    h = pixel_hash(key, rows, cols)
    return ((h >> np.uint64(40)).astype(np.float32)) * np.float32(1.0 / 16777216.0)


def gaussian(key: int, rows: np.ndarray, cols: np.ndarray, channels: int = 3) -> np.ndarray:
    """Per-pixel, per-channel zero-mean, unit-variance noise, float32 (h, w, channels <= 3).

    Each value is the sum of two 10-bit uniforms from one pixel hash (a
    triangular distribution, close enough to Gaussian for sensor noise).
    """
    h = pixel_hash(key, rows, cols)
    out = np.empty((len(rows), len(cols), channels), np.float32)
    mask = np.uint64(0x3FF)
    scale = np.float32(math.sqrt(6.0) / 1024.0)
    for ch in range(channels):
        a = ((h >> np.uint64(20 * ch)) & mask).astype(np.float32)
        b = ((h >> np.uint64(20 * ch + 10)) & mask).astype(np.float32)
        out[..., ch] = (a + b - 1023.0) * scale
    return out


def _smooth_weights(coord_um: np.ndarray, scale_um: float) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(coord_um, dtype=np.float64) / scale_um
    i = np.floor(t)
    f = t - i
    f = f * f * (3.0 - 2.0 * f)  # smoothstep: C1 across lattice lines
    return i.astype(np.int64), f


def value_points(key: int, y_um: np.ndarray, x_um: np.ndarray, scale_um: float) -> np.ndarray:
    """Value noise in [0, 1) at points (microns): hashed lattice of spacing ``scale_um``, smoothstep-interpolated."""
    iy, fy = _smooth_weights(y_um, scale_um)
    ix, fx = _smooth_weights(x_um, scale_um)
    v00 = uniform(key, iy, ix)
    v01 = uniform(key, iy, ix + 1)
    v10 = uniform(key, iy + 1, ix)
    v11 = uniform(key, iy + 1, ix + 1)
    return (1 - fy) * ((1 - fx) * v00 + fx * v01) + fy * ((1 - fx) * v10 + fx * v11)


def value_grid(key: int, y_um: np.ndarray, x_um: np.ndarray, scale_um: float) -> np.ndarray:
    """Value noise on the grid ``y_um`` x ``x_um`` (1-D, microns); equals :func:`value_points` there.

    Separable: interpolate the small hashed lattice along x, then along y.
    """
    iy, fy = _smooth_weights(y_um, scale_um)
    ix, fx = _smooth_weights(x_um, scale_um)
    y0, x0 = int(iy.min()), int(ix.min())
    ly = np.arange(y0, int(iy.max()) + 2)[:, None]
    lx = np.arange(x0, int(ix.max()) + 2)[None, :]
    lattice = uniform(key, ly, lx).astype(np.float32)
    jx = ix - x0
    fx = fx.astype(np.float32)
    along_x = lattice[:, jx] * (1 - fx) + lattice[:, jx + 1] * fx
    jy = iy - y0
    fy = fy.astype(np.float32)[:, None]
    return along_x[jy] * (1 - fy) + along_x[jy + 1] * fy


def fbm_points(key: int, y_um: np.ndarray, x_um: np.ndarray, scale_um: float, octaves: int = 3) -> np.ndarray:
    """Fractal sum of value noise at points, normalised to [0, 1)."""
    total, amp, norm = 0.0, 1.0, 0.0
    for o in range(octaves):
        total = total + amp * value_points(key + 7919 * o, y_um, x_um, scale_um / 2**o)
        norm += amp
        amp *= 0.5
    return total / norm


def fbm_grid(key: int, y_um: np.ndarray, x_um: np.ndarray, scale_um: float, octaves: int = 3) -> np.ndarray:
    """Grid version of :func:`fbm_points` (same values)."""
    total, amp, norm = 0.0, 1.0, 0.0
    for o in range(octaves):
        total = total + amp * value_grid(key + 7919 * o, y_um, x_um, scale_um / 2**o)
        norm += amp
        amp *= 0.5
    return (total / norm).astype(np.float32)
