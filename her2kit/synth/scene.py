"""Per-slide (or per-image) parameters of the generator: stain, optics, tissue, cells.

A :class:`Scene` is drawn once from a seed; everything else is a function
of the scene and global coordinates. ``domain="shifted"`` draws stain
vectors, concentrations, blur, noise, cell size and tumour density outside
the default ranges (a held-out domain for generalisation tests).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from her2kit.synth import noise, stains


@dataclass
class Scene:
    """Everything that is constant over one image or slide. Lengths in microns."""

    key: int                  # master hash key (from the seed)
    mpp: float                # microns per pixel
    domain: str
    height: int               # world extent in pixels (ids are unique within it)
    width: int
    spacing_um: float         # seed lattice spacing ~ tumour cell diameter
    angle: float              # lattice rotation, radians
    stain: np.ndarray         # (3, 3) unit OD vectors: H, DAB, residual
    conc: np.ndarray          # (3,) concentration scale per stain
    glass: np.ndarray         # (3,) incident light through bare glass, 0-255
    illum_amp: float          # depth of the smooth illumination fall-off
    blur_um: float            # Gaussian optical blur sigma
    noise_sd: float           # sensor noise sd at full brightness, 0-255 units
    tumour_level: float       # tumour where the nest field exceeds this
    lumen_level: float
    fat_level: float
    tissue_level: float       # glass where the tissue field is below this
    fractions: np.ndarray     # (4,) category probabilities (slides)
    tumour_fraction: float = 0.5  # share of tissue seeds in nests (tumour_level is its fbm quantile)
    nucleus_scale: float = 1.0
    fat_spacing_um: float = 70.0
    jitter: float = 0.3       # seed jitter, lattice units (<= 0.3 keeps the 3x3 search exact)
    power: float = 0.15       # power-diagram weight range, lattice units^2 (cell-size spread)
    lattice: tuple[int, int, int] = field(default=(0, 0, 1))  # (u0, v0, nv) for global ids
    tissue_scale_um: float = 1500.0  # feature size of the tissue/glass field

    @property
    def shifted(self) -> bool:
        return self.domain == "shifted"


@functools.lru_cache(maxsize=1)
def _fbm_sample() -> np.ndarray:
    rng_y = noise.uniform(12345, np.arange(20000), 0) * 1e5
    rng_x = noise.uniform(12345, np.arange(20000), 1) * 1e5
    return np.sort(noise.fbm_points(777, rng_y, rng_x, 100.0))


def fbm_quantile(q: float) -> float:
    """Level below which a fraction ``q`` of a 3-octave fbm field lies (empirical, deterministic)."""
    if q <= 0:
        return -1.0
    if q >= 1:
        return 2.0
    return float(np.quantile(_fbm_sample(), q))


def _outside(rng: np.random.Generator, below: tuple[float, float], above: tuple[float, float]) -> float:
    """A draw from one of two ranges on either side of a default range (shifted domain)."""
    return rng.uniform(*below) if rng.random() < 0.5 else rng.uniform(*above)


def make_scene(seed: int, mpp: float = 0.5, domain: str = "default", height: int = 512,
               width: int = 512, fractions: np.ndarray | None = None, tissue: float = 1.0,
               tumour: float | None = None) -> Scene:
    """Draw the parameters of one image or slide from ``seed``.

    ``tissue`` is the fraction of the area covered by tissue (the rest bare
    glass); ``tumour`` the fraction of tissue seeds in tumour nests (drawn
    when None); ``fractions`` the category probabilities used where counts
    are not imposed.
    """
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5EED])
    shifted = domain == "shifted"
    key = int(noise.hash64(int(seed) * 2654435761 + 17))
    if shifted:
        spacing = _outside(rng, (9.5, 11.5), (18.5, 21.0))
        conc = np.array([_outside(rng, (0.55, 0.75), (1.3, 1.6)),
                         _outside(rng, (0.55, 0.75), (1.3, 1.6)), rng.uniform(0.5, 2.0)])
        blur = rng.uniform(0.6, 0.9)
        noise_sd = rng.uniform(4.0, 7.0)
        tumour_frac = rng.uniform(0.7, 0.85) if tumour is None else tumour
        glass = np.array([rng.uniform(225, 240), rng.uniform(225, 245), rng.uniform(215, 245)])
        illum = rng.uniform(0.06, 0.12)
    else:
        spacing = rng.uniform(12.5, 17.5)
        conc = np.array([rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.15), rng.uniform(0.8, 1.2)])
        blur = rng.uniform(0.28, 0.5)
        noise_sd = rng.uniform(1.0, 3.0)
        tumour_frac = rng.uniform(0.35, 0.65) if tumour is None else tumour
        base = rng.uniform(236, 248)
        glass = base + rng.uniform(-4, 4, size=3)
        illum = rng.uniform(0.0, 0.05)
    fat_frac = rng.uniform(0.05, 0.25) if rng.random() < 0.4 else 0.0
    angle = rng.uniform(0, math.pi / 2)
    stain_m = stains.jittered_matrix(rng, shifted)
    if fractions is None:
        fractions = np.array([0.4, 0.2, 0.2, 0.2])
    # ids: the lattice index range covering the world, padded
    s = spacing
    corners = np.array([[0, 0], [0, width], [height, 0], [height, width]], dtype=float) * mpp
    u = (corners[:, 1] * math.cos(angle) + corners[:, 0] * math.sin(angle)) / s
    v = (-corners[:, 1] * math.sin(angle) + corners[:, 0] * math.cos(angle)) / s
    u0, v0 = int(math.floor(u.min())) - 3, int(math.floor(v.min())) - 3
    nv = int(math.floor(v.max())) + 4 - v0
    scene = Scene(
        key=key, mpp=float(mpp), domain=domain, height=int(height), width=int(width),
        spacing_um=float(spacing), angle=float(angle), stain=stain_m, conc=conc,
        glass=np.clip(glass, 0, 255), illum_amp=float(illum), blur_um=float(blur),
        noise_sd=float(noise_sd),
        # nests: tumour_frac of the (non-fat) tissue; lumina ~6% of nest seeds
        tumour_level=fbm_quantile(1 - tumour_frac), lumen_level=fbm_quantile(0.94),
        fat_level=fbm_quantile(1 - fat_frac), tissue_level=fbm_quantile(1 - tissue),
        fractions=np.asarray(fractions, dtype=float), tumour_fraction=float(tumour_frac),
        nucleus_scale=float(rng.uniform(0.9, 1.1) if not shifted else rng.uniform(0.8, 1.25)),
        fat_spacing_um=float(rng.uniform(55, 90)),
        lattice=(u0, v0, nv),
        tissue_scale_um=tissue_scale(height * mpp, width * mpp),
    )
    if 0.0 < tissue < 1.0:
        scene.tissue_level = tissue_level_for(scene, tissue)
    return scene


def tissue_scale(height_um: float, width_um: float) -> float:
    """Feature size (microns) of the tissue/glass field of a world of this extent:
    1.5 mm on large slides, down to a third of the longer side on small ones
    (so a small slide still has tissue and glass, not one or the other)."""
    return float(min(1500.0, max(100.0, max(height_um, width_um) / 3.0)))


def tissue_level_for(scene: Scene, tissue: float, samples: int = 160) -> float:
    """The tissue-field level above which a fraction ``tissue`` of this scene's own
    area lies (the field's quantile over a grid of points covering the world).

    A global quantile of the field is right only on average over a large
    area; a slide a few field periods wide would get anything from no tissue
    to all tissue.
    """
    from her2kit.synth.tissue import K_TISSUE, field_key

    h_um, w_um = scene.height * scene.mpp, scene.width * scene.mpp
    ys = (np.arange(samples) + 0.5) * h_um / samples
    xs = (np.arange(samples) + 0.5) * w_um / samples
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    values = noise.fbm_points(field_key(scene, K_TISSUE), yy.ravel(), xx.ravel(), scene.tissue_scale_um)
    return float(np.quantile(values, 1.0 - tissue))
