"""Synthetic HER2 IHC (DAB + haematoxylin) with exact ground truth.

The generator is a function of global coordinates: every pixel, cell and
texture value depends only on (seed, position), so an image patch and any
block of a whole slide are windows onto one consistent, infinite world.

- :mod:`her2kit.synth.noise`      hashed noise (white, value, fbm) of global coordinates
- :mod:`her2kit.synth.stains`     stain vectors and Beer-Lambert rendering
- :mod:`her2kit.synth.categories` score -> category mix, and the ASCO/CAP rule
- :mod:`her2kit.synth.scene`      per-slide parameters (domain default / shifted)
- :mod:`her2kit.synth.tissue`     seed lattice, tissue types, cell geometry
- :mod:`her2kit.synth.render`     one region: RGB, semantic and instance labels, cells
- :mod:`her2kit.synth.images`     a folder of labelled patches
- :mod:`her2kit.synth.slide`      an OME-Zarr whole slide, block by block
"""
