"""Regions of interest as pathologists draw them in QuPath (GeoJSON polygons).

Accepted: a FeatureCollection, a single Feature, a bare Polygon/MultiPolygon
geometry, or a JSON list of any of these (QuPath's "Export objects as
GeoJSON" writes a FeatureCollection or a list). Coordinates are [x, y] in
full-resolution pixels. A polygon's holes are honoured: a point in a hole is
outside.
"""

from __future__ import annotations

import json
import os

import numpy as np

from her2kit.errors import InputError

#: A polygon: exterior ring first, then holes; each ring an (n, 2) array of x, y.
Polygon = list[np.ndarray]


def _polygons_of_geometry(geom: dict, path: str) -> list[Polygon]:
    kind = geom.get("type") if isinstance(geom, dict) else None
    coords = geom.get("coordinates") if isinstance(geom, dict) else None
    try:
        if kind == "Polygon":
            polys = [coords]
        elif kind == "MultiPolygon":
            polys = list(coords)
        elif kind == "GeometryCollection":
            return [p for g in geom.get("geometries", []) for p in _polygons_of_geometry(g, path)]
        else:
            return []
        out = []
        for rings in polys:
            arrs = [np.asarray(r, dtype=np.float64)[:, :2] for r in rings]
            if not arrs or len(arrs[0]) < 3:
                raise ValueError("a polygon needs at least 3 vertices")
            if not all(np.isfinite(a).all() for a in arrs):
                raise ValueError("a coordinate is not a finite number")
            x, y = arrs[0][:, 0], arrs[0][:, 1]
            if abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) == 0:
                raise ValueError("a polygon encloses no area")
            out.append(arrs)
        return out
    except (TypeError, ValueError, IndexError) as exc:
        raise InputError(path, f"bad polygon coordinates in ROI ({exc})") from None


def parse_roi(obj, path: str = "ROI") -> list[Polygon]:
    """Polygons of a parsed GeoJSON object (see module docstring)."""
    if isinstance(obj, list):
        return [p for item in obj for p in parse_roi(item, path)]
    if not isinstance(obj, dict):
        return []
    kind = obj.get("type")
    if kind == "FeatureCollection":
        return [p for f in obj.get("features", []) for p in parse_roi(f, path)]
    if kind == "Feature":
        return _polygons_of_geometry(obj.get("geometry") or {}, path)
    return _polygons_of_geometry(obj, path)


def load_roi(path: str | os.PathLike) -> list[Polygon]:
    """Read a GeoJSON ROI file; InputError when unreadable or without any polygon."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark, as Windows editors write, is fine
            obj = json.load(f)
    except FileNotFoundError:
        raise InputError(path, "ROI file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not a readable GeoJSON file ({type(exc).__name__})") from None
    polygons = parse_roi(obj, path)
    if not polygons:
        raise InputError(path, "no Polygon or MultiPolygon in the ROI GeoJSON")
    return polygons


def as_rings(roi: list) -> list[list[list[list[float]]]]:
    """ROI polygons in the whole-slide pipeline's (JSON) form: each polygon a list
    of rings (exterior first, then holes), each ring a list of [x, y]. Takes
    :func:`load_roi`'s polygons, or polygons given as a single ring of (x, y)
    vertices each (no holes)."""
    out = []
    for poly in roi:
        first = poly[0] if len(poly) else []
        single_ring = len(first) == 2 and np.isscalar(first[0])
        rings = [poly] if single_ring else poly
        out.append([[[float(x), float(y)] for x, y in np.asarray(r, np.float64).reshape(-1, 2)]
                    for r in rings])
    return out


def inside(polygons: list[Polygon], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean (n,): points (x, y) in pixels inside any polygon (outside its holes)."""
    from matplotlib.path import Path

    pts = np.column_stack([np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)])
    result = np.zeros(len(pts), dtype=bool)
    if not len(pts):
        return result
    for rings in polygons:
        hit = Path(rings[0]).contains_points(pts)
        for hole in rings[1:]:
            hit &= ~Path(hole).contains_points(pts)
        result |= hit
    return result


def roi_fingerprint(roi: list | None) -> str | None:
    """A short digest of the ROI's polygons (None without one): finished outputs
    record it, so a re-run with another region is not taken for done."""
    if not roi:
        return None
    import hashlib
    import json

    return hashlib.sha256(json.dumps(as_rings(roi)).encode()).hexdigest()[:16]


def overlaps(roi: list, height: int, width: int) -> bool:
    """Whether any polygon's bounding box meets the image (level-0 pixels)."""
    for poly in as_rings(roi):
        ring = np.asarray(poly[0], dtype=np.float64).reshape(-1, 2)
        if len(ring) and ring[:, 0].max() >= 0 and ring[:, 1].max() >= 0 \
                and ring[:, 0].min() < width and ring[:, 1].min() < height:
            return True
    return False
