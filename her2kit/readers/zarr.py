"""Zarr reader: a plain RGB array, or an OME-Zarr multiscale image (NGFF 0.4 / 0.5).

OME-Zarr: the image group's ``multiscales`` attribute (NGFF 0.4, Zarr v2) or
``ome.multiscales`` (NGFF 0.5, Zarr v3) lists the levels
(``datasets[i].path``), the axes and each level's ``scale``; mpp is the x
axis scale of level 0 in microns (other length units converted). Singleton
axes (t, z) are dropped; the channel axis may be anywhere ((c, y, x) or
(y, x, c)). Other groups (``labels/``) are ignored.

A plain array must be (H, W, 3|4) or (3|4, H, W); its mpp is unknown unless
its attributes carry ``"mpp"``.
"""

from __future__ import annotations

import os
from typing import Any

from her2kit.errors import Her2kitError, InputError
from her2kit.readers.pixels import ArraySlide, one_line, square_mpp

# microns per unit, for NGFF (UDUNITS-2) length units
# dimension names that mean the colour channel ("rgb" was read as an R axis)
_CHANNEL_NAMES = {n: "C" for n in ("c", "ch", "channel", "channels", "rgb", "rgba", "s", "sample", "samples",
                                   "color", "colour", "band", "bands")}
_MICRONS = {
    "angstrom": 1e-4, "picometer": 1e-6, "nanometer": 1e-3, "micrometer": 1.0,
    "micron": 1.0, "millimeter": 1e3, "centimeter": 1e4, "meter": 1e6,
}


def looks_like_zarr(path: str) -> bool:
    """True for a directory holding Zarr v2 or v3 metadata at its root."""
    return any(os.path.exists(os.path.join(path, name))
               for name in ("zarr.json", ".zgroup", ".zarray", ".zattrs"))


def can_open(path: str) -> bool:
    """A local directory with Zarr metadata, or a URL ending in .zarr."""
    if "://" in path:
        return path.rstrip("/").lower().endswith(".zarr")
    return os.path.isdir(path) and looks_like_zarr(path)


class ZarrSlide(ArraySlide):
    """A Zarr store opened as a Slide (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        import zarr

        self.path = os.fspath(path)
        is_url = "://" in self.path
        if not is_url:
            if not os.path.isdir(self.path):
                raise InputError(self.path, "not a Zarr store (not a directory)")
            if not looks_like_zarr(self.path):
                raise InputError(self.path, "is a directory, not a Zarr store (no .zgroup, .zarray or zarr.json)")
        try:
            node = zarr.open(self.path, mode="r")
        except Exception as exc:
            raise InputError(self.path, f"cannot open Zarr store: {one_line(exc)}") from None
        try:
            if isinstance(node, zarr.Array):
                self._open_array(node)
            else:
                self._open_multiscales(node)
            self._validate()
        except Her2kitError:
            raise
        except Exception as exc:
            raise InputError(self.path, f"unreadable Zarr metadata: {one_line(exc)}") from None

    def missing_chunks(self) -> tuple[int, int] | None:
        """(missing, total) chunks of level 0 in a local store, or None when
        unknown (a URL): missing chunks read as the fill value, which a writer
        may mean (empty chunks left out) or a copy may have lost."""
        if "://" in self.path:
            return None
        try:
            arr = self._levels[0]
            total = int(arr.nchunks)
            return total - int(arr.nchunks_initialized), total
        except Exception:  # a store that cannot list its keys
            return None

    def _open_array(self, arr: Any) -> None:
        shape = arr.shape
        if len(shape) == 2:
            raise InputError(self.path, "greyscale image (1 channel); her2kit needs RGB brightfield")
        if len(shape) != 3:
            raise InputError(self.path, f"Zarr array of shape {shape}; expected (H, W, 3) or (3, H, W)")
        names = arr.metadata.dimension_names if hasattr(arr.metadata, "dimension_names") else None
        if names and all(names):  # Zarr v3 dimension_names, e.g. ("y", "x", "rgb")
            axes = "".join(_CHANNEL_NAMES.get(str(n).strip().lower(), str(n).strip()[:1].upper()) for n in names)
        elif shape[0] <= 4 < shape[2]:
            axes = "CYX"
        else:
            axes = "YXC"
        self._axes = axes
        self._levels = [arr]
        mpp = arr.attrs.get("mpp")
        self._mpp = float(mpp) if isinstance(mpp, (int, float)) else None

    def _open_multiscales(self, group: Any) -> None:
        attrs = dict(group.attrs)
        multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
        if not multiscales:
            raise InputError(self.path, "Zarr group without OME-Zarr 'multiscales' metadata")
        ms = multiscales[0]
        axes = ms.get("axes")
        datasets = ms.get("datasets") or []
        if not datasets:
            raise InputError(self.path, "OME-Zarr multiscales lists no datasets")
        self._levels = []
        for ds in datasets:
            try:
                self._levels.append(group[ds["path"]])
            except KeyError:
                raise InputError(self.path, f"OME-Zarr dataset {ds['path']!r} is missing") from None
        ndim = len(self._levels[0].shape)
        if axes is None:  # NGFF 0.1-0.3: always 5-D tczyx
            axes = ["t", "c", "z", "y", "x"][-ndim:]
        self._axes = "".join(_axis_letter(a) for a in axes)
        self._mpp = square_mpp(_ngff_mpp(ms, axes, datasets[0], "x"), _ngff_mpp(ms, axes, datasets[0], "y"),
                               self.path)


def _axis_letter(axis: dict | str) -> str:
    """One letter per NGFF axis: Y, X, C (type "channel"), T, Z, or the name's first letter."""
    name = str(axis.get("name", "") if isinstance(axis, dict) else axis).lower()
    kind = axis.get("type") if isinstance(axis, dict) else None
    if kind == "channel" or name in ("c", "channel"):
        return "C"
    if kind == "time":
        return "T"
    return name[:1].upper() or "?"


def _scale_of(transforms: list[dict] | None, ndim: int) -> list[float]:
    scale = [1.0] * ndim
    for t in transforms or []:
        if t.get("type") == "scale" and "scale" in t:
            scale = [a * float(b) for a, b in zip(scale, t["scale"], strict=True)]
    return scale


def _ngff_mpp(ms: dict, axes: list, dataset: dict, name: str = "x") -> float | None:
    """Level-0 scale of axis ``name`` in microns, or None when the units are not lengths."""
    if not axes:
        return None
    ndim = len(axes)
    scale = _scale_of(dataset.get("coordinateTransformations"), ndim)
    overall = _scale_of(ms.get("coordinateTransformations"), ndim)
    for i, axis in enumerate(axes):
        if not isinstance(axis, dict) or axis.get("name", "").lower() != name:
            continue
        unit = axis.get("unit")
        factor = _MICRONS.get(str(unit).lower()) if unit else None
        if factor is None:
            return None
        return scale[i] * overall[i] * factor
    return None
