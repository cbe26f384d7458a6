"""her2kit reader plugin for whole-slide formats that OpenSlide reads.

Importing this package (or its ``plugin`` module) does not import openslide:
her2kit imports plugin modules at discovery, and discovery must stay fast.
"""

__version__ = "0.1.0"
