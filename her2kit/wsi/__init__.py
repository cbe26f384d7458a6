"""Whole-slide inference: tissue-aware block grid, one Dask task per block,
stitched OME-Zarr labels, resumable block ledger, slide report.

Light at import (no dask/torch): import :mod:`her2kit.wsi.pipeline` to run.
"""
