"""Writers of the scoring outputs: score.json, cells.csv, cells.geojson, labels.zarr, overlay.png, report.html.

Every writer writes to a temporary name beside the target and renames it
into place when complete, so a reader never sees half a file. Coordinates
in cells.csv and cells.geojson are full-resolution pixels of the input
(origin top-left; GeoJSON vertices are [x, y] on pixel corners, as QuPath
reads them).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from her2kit.evaluation.metrics import json_safe

CATEGORY_NAMES = {0: "HER2 0", 1: "HER2 1+", 2: "HER2 2+", 3: "HER2 3+"}
#: the membrane categories as the reports name them (not "HER2 3+", the case's score)
CATEGORY_LABELS = {0: "0 (no staining)", 1: "1+ (faint, incomplete)",
                   2: "2+ (weak-moderate, complete)", 3: "3+ (intense, complete)"}
#: RGB colours of the categories (blue, yellow, orange, red) and of non-tumour cells (grey).
CATEGORY_COLOURS = {0: (70, 130, 230), 1: (250, 220, 60), 2: (245, 140, 30), 3: (215, 40, 40)}
STROMA_COLOUR = (150, 150, 150)
STROMA_NAME = "Stroma"


def _temp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _replace(tmp: Path, path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file."""
    path = Path(path)
    tmp = _temp(path)
    tmp.write_text(text, encoding="utf-8")
    _replace(tmp, path)


def write_score_json(path: str | os.PathLike, summary: Mapping) -> None:
    """score.json: ``summary`` (score, subcategory, cells_total, percent, ...) as indented JSON."""
    atomic_write_text(path, json.dumps(json_safe(dict(summary)), indent=2) + "\n")


def write_cells_csv(path: str | os.PathLike, table: Mapping[str, np.ndarray]) -> None:
    """cells.csv: one row per cell, the columns of ``table`` (id, y, x first; pixels, microns, OD)."""
    path = Path(path)
    names = csv_columns(table)
    tmp = _temp(path)
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        f.write(csv_header(names) + csv_rows(table, names))
    _replace(tmp, path)


def csv_columns(table: Mapping[str, np.ndarray]) -> list[str]:
    """cells.csv's columns: her2kit's own in their usual order, then any others."""
    from her2kit.scoring.cells import COLUMNS

    return [c for c in COLUMNS if c in table] + [c for c in table if c not in COLUMNS]


def csv_header(names: list[str]) -> str:
    """cells.csv's header line (csv.writer's text)."""
    buf = io.StringIO()
    csv.writer(buf).writerow(names)
    return buf.getvalue()


def csv_rows(table: Mapping[str, np.ndarray], names: list[str]) -> str:
    """cells.csv's rows (no header) for the columns ``names``: csv.writer's text of
    booleans as 0/1, integers as such, floats with 6 significant digits."""
    arrays = [np.asarray(table[c]) for c in names]
    if arrays and all(a.ndim == 1 and a.dtype.kind in "biuf" for a in arrays):
        # numbers never need quoting: join the columns' texts (2x faster than csv.writer)
        texts = [_number_texts(a) for a in arrays]
        return "".join(",".join(row) + "\r\n" for row in zip(*texts, strict=True))
    buf = io.StringIO()
    writer = csv.writer(buf)
    fmts = [_csv_formatter(a) for a in arrays]
    for row in zip(*arrays, strict=True):
        writer.writerow([fm(v) for fm, v in zip(fmts, row, strict=True)])
    return buf.getvalue()


def _csv_formatter(a: np.ndarray):
    if a.dtype == bool:
        return lambda v: int(v)
    if a.dtype.kind in "iu":
        return int
    if a.dtype.kind == "f":
        return lambda v: f"{v:.6g}"
    return str


def _number_texts(a: np.ndarray) -> list[str]:
    """:func:`_csv_formatter`'s text of every value of a 1-D numeric column."""
    values = a.tolist()  # Python bools, ints and floats (float32 widened exactly)
    if a.dtype.kind == "b":
        return ["1" if v else "0" for v in values]
    if a.dtype.kind in "iu":
        return [str(v) for v in values]
    return [f"{v:.6g}" for v in values]


# --- polygons and GeoJSON -------------------------------------------------------------


def _trace_outline(labels: np.ndarray, label: int) -> np.ndarray:
    """The corners (int32 (k, 2), y, x) of one label's outline (see :func:`outlines`),
    in Python: for when the extension is not built."""
    from scipy import ndimage as ndi

    mask = labels == label
    if label == 0 or not mask.any():
        return np.zeros((0, 2), np.int32)
    pieces, _ = ndi.label(mask)  # 4-connected, numbered in raster order of their first pixel
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    piece = pieces == int(np.argmax(sizes))  # ties: the first in raster order
    h, w = mask.shape

    def inside(y: int, x: int) -> bool:
        return 0 <= y < h and 0 <= x < w and bool(mask[y, x])

    y0, x0 = (int(v) for v in np.argwhere(piece)[0])
    steps = ((0, 1), (1, 0), (0, -1), (-1, 0))  # east, south, west, north
    ring, d, vy, vx = [(y0, x0)], 0, y0, x0 + 1
    while (vy, vx) != (y0, x0):
        ahead = {0: ((vy, vx), (vy - 1, vx)), 1: ((vy, vx - 1), (vy, vx)),
                 2: ((vy - 1, vx - 1), (vy, vx - 1)), 3: ((vy - 1, vx), (vy - 1, vx - 1))}[d]
        right, left = inside(*ahead[0]), inside(*ahead[1])
        turn = 1 if not right else (3 if left else 0)
        if turn:
            ring.append((vy, vx))
            d = (d + turn) % 4
        vy, vx = vy + steps[d][0], vx + steps[d][1]
    return np.asarray(ring, np.int32)


def _midpoints(corners: np.ndarray) -> np.ndarray:
    """A corner ring -> the ring of its edges' midpoints without straight-through points,
    in doubled coordinates (as her2kit's native tracer gives them)."""
    pts = []
    k = len(corners)
    for i in range(k):
        (y0, x0), (y1, x1) = corners[i], corners[(i + 1) % k]
        dy, dx = int(np.sign(y1 - y0)), int(np.sign(x1 - x0))
        pts.append((2 * y0 + dy, 2 * x0 + dx))
        if abs(y1 - y0) + abs(x1 - x0) >= 2:
            pts.append((2 * y1 - dy, 2 * x1 - dx))
    p = np.asarray(pts, np.int64).reshape(-1, 2)
    into = np.sign(p - np.roll(p, 1, axis=0))
    out = np.sign(np.roll(p, -1, axis=0) - p)
    return p[(into != out).any(axis=1)].astype(np.int32)


def outlines(labels: np.ndarray, ids: Iterable[int], midpoints: bool = True) -> list[np.ndarray]:
    """Outline of each id: float64 (k, 2) vertices (y, x) on the pixel-corner grid
    (pixel (r, c) spans [r, r+1] x [c, c+1]); empty where the id is absent.

    The outer boundary of the id's largest 4-connected piece, clockwise on
    screen. ``midpoints`` (default): through the midpoints of its pixel edges,
    i.e. the 0.5 iso-line of marching squares (skimage's find_contours) on the
    piece, with only the points where the direction changes; else its corners
    (lossless: the area is the piece's pixel count, holes included). One pass
    of her2kit's native tracer for all ids when built.
    """
    from her2kit.scoring.cells import _native

    ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64).ravel()
    labels = np.asarray(labels)
    tracer = _native("outlines")
    if tracer is None:
        from scipy import ndimage as ndi

        boxes = ndi.find_objects(labels.astype(np.int64)) if labels.size and labels.max() > 0 else []
        rings = []
        for i in ids:  # each label traced in its bounding box (the same raster order)
            box = boxes[i - 1] if 0 < i <= len(boxes) else None
            if box is None:
                rings.append(np.zeros((0, 2), np.int32))
            else:
                corner = np.array([box[0].start, box[1].start], np.int32)
                rings.append(_trace_outline(labels[box], int(i)) + corner)
        if not midpoints:
            return [r.astype(np.float64) for r in rings]
        return [_midpoints(r) / 2.0 if len(r) else r.astype(np.float64) for r in rings]
    vertices, starts = _trace(tracer, labels, ids, midpoints)
    vertices = vertices / 2.0 if midpoints else vertices.astype(np.float64)
    return [vertices[starts[k]:starts[k + 1]] for k in range(len(ids))]


def _trace(tracer, labels: np.ndarray, ids: np.ndarray, midpoints: bool):
    """The native tracer's (vertices, starts) for ``ids`` of a 2-D label image."""
    if labels.dtype not in (np.int32, np.uint32, np.int64):
        labels = labels.astype(np.int64)
    return tracer(np.ascontiguousarray(labels), ids, midpoints)


def _rings(corners: list[np.ndarray], scale: tuple[float, float], offset: tuple[float, float],
           tolerance: float) -> list[list[list[float]] | None]:
    """Outlines (y, x) -> closed GeoJSON rings [[x, y], ...] in output pixels (None if empty)."""
    if tolerance > 0:
        from skimage.measure import approximate_polygon

        corners = [approximate_polygon(np.vstack([c, c[:1]]), tolerance)[:-1]
                   if len(c) else c for c in corners]
    sizes = [len(c) for c in corners]
    if not sum(sizes):
        return [None] * len(corners)
    allc = np.concatenate([c for c in corners if len(c)])
    xy = np.round(np.column_stack([offset[1] + allc[:, 1] * scale[1],
                                   offset[0] + allc[:, 0] * scale[0]]), 2).tolist()
    out, at = [], 0
    for n in sizes:
        if n < 3:
            out.append(None)
        else:
            ring = xy[at:at + n]
            out.append(ring + [list(ring[0])])
        at += n
    return out


def cell_polygons(cell_labels: np.ndarray, nucleus_labels: np.ndarray, ids: Iterable[int],
                  scale: float | tuple[float, float] = 1.0,
                  offset: tuple[float, float] = (0.0, 0.0), tolerance: float = 0.0,
                  ) -> dict[int, tuple[list | None, list | None]]:
    """Outline rings of cells and their nuclei, {id: (cell ring, nucleus ring)}.

    Rings are closed lists of [x, y] in output pixels: the label images'
    outlines (:func:`outlines`, through the pixel edges' midpoints) times
    ``scale`` (output pixels per label pixel, (y, x)) plus ``offset`` (y, x).
    ``tolerance`` > 0 simplifies them further (Douglas-Peucker, label pixels).
    """
    sc = (float(scale), float(scale)) if np.isscalar(scale) else tuple(float(s) for s in scale)
    off = (float(offset[0]), float(offset[1]))
    ids = [int(i) for i in ids]
    cells = _rings(outlines(cell_labels, ids), sc, off, tolerance)
    nuclei = _rings(outlines(nucleus_labels, ids), sc, off, tolerance)
    return {i: (c, n) for i, c, n in zip(ids, cells, nuclei, strict=True)}


def _cell_properties(table: Mapping[str, np.ndarray]):
    """(row, id, QuPath properties) of every row of a cell table."""
    skip = {"id", "y", "x", "category", "tumour"}
    numeric = [k for k, v in table.items() if np.asarray(v).dtype.kind in "fiub" and k not in skip]
    ids = np.asarray(table["id"])
    cats = np.asarray(table["category"])
    tumour = np.asarray(table.get("tumour", np.ones(len(ids), bool))).astype(bool)
    columns = {k: np.asarray(table[k]) for k in numeric}
    for row, cid in enumerate(ids):
        cat = int(cats[row])
        name, colour = ((CATEGORY_NAMES[cat], CATEGORY_COLOURS[cat]) if tumour[row]
                        else (STROMA_NAME, STROMA_COLOUR))
        measurements = {k: float(v[row]) for k, v in columns.items()}
        measurements["Category"] = float(cat)
        measurements["Tumour"] = float(tumour[row])
        yield row, int(cid), {
            "objectType": "cell",
            "name": f"cell {int(cid)}",
            "classification": {"name": name, "color": list(colour)},
            "measurements": measurements,
        }


def cell_features(table: Mapping[str, np.ndarray],
                  polygons: Mapping[int, tuple[list | None, list | None]]) -> list[dict]:
    """QuPath cell Features for the rows of ``table`` that have a polygon."""
    features = []
    for _, cid, properties in _cell_properties(table):
        cell, nucleus = polygons.get(cid, (None, None))
        if cell is None:
            continue
        feature = {
            "type": "Feature",
            "id": f"cell-{cid}",
            "geometry": {"type": "Polygon", "coordinates": [cell]},
            "properties": properties,
        }
        if nucleus is not None:
            feature["nucleusGeometry"] = {"type": "Polygon", "coordinates": [nucleus]}
        features.append(feature)
    return features


def ring_texts(labels: np.ndarray, ids: Iterable[int], scale: float | tuple[float, float] = 1.0,
               offset: tuple[float, float] = (0.0, 0.0)) -> list[str | None]:
    """The JSON text (``json.dumps(ring, separators=(",", ":"))``) of each id's ring
    of :func:`cell_polygons` (None where it has none), made by her2kit's native
    writer when built: no Python list per point (a tenth of the time)."""
    from her2kit.scoring.cells import _native

    sc = (float(scale), float(scale)) if np.isscalar(scale) else tuple(float(s) for s in scale)
    off = (float(offset[0]), float(offset[1]))
    ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64).ravel()
    labels = np.asarray(labels)
    tracer, json_rings = _native("outlines"), _native("json_rings")
    if tracer is None or json_rings is None or labels.ndim != 2:
        rings = _rings(outlines(labels, ids), sc, off, 0.0)
        return [None if r is None else json.dumps(r, separators=(",", ":")) for r in rings]
    vertices, starts = _trace(tracer, labels, ids, True)
    return json_rings(vertices, starts, 2.0, sc[0], sc[1], off[0], off[1])


def cell_feature_lines(table: Mapping[str, np.ndarray], cells: list[str | None],
                       nuclei: list[str | None]) -> list[str]:
    """``json.dumps(feature, separators=(",", ":"))`` of each of :func:`cell_features`'
    Features, from the rings' JSON text (:func:`ring_texts`, one per table row)."""
    lines = []
    for row, cid, properties in _cell_properties(table):
        cell, nucleus = cells[row], nuclei[row]
        if cell is None:
            continue
        line = (f'{{"type":"Feature","id":"cell-{cid}","geometry":{{"type":"Polygon","coordinates":[{cell}]}},'
                f'"properties":{json.dumps(properties, separators=(",", ":"))}')
        if nucleus is not None:
            line += f',"nucleusGeometry":{{"type":"Polygon","coordinates":[{nucleus}]}}'
        lines.append(line + "}")
    return lines


def write_cells_geojson(path: str | os.PathLike, features: Iterable[dict]) -> int:
    """cells.geojson: a FeatureCollection of ``features``, streamed; returns how many."""
    path = Path(path)
    tmp = _temp(path)
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        f.write('{"type": "FeatureCollection", "features": [\n')
        for feat in features:
            if n:
                f.write(",\n")
            f.write(json.dumps(json_safe(feat), separators=(",", ":")))
            n += 1
        f.write("\n]}\n")
    _replace(tmp, path)
    return n


# --- labels.zarr ------------------------------------------------------------------------


def write_labels_zarr(path: str | os.PathLike, semantic: np.ndarray, cells: np.ndarray,
                      mpp: float | None, chunk: int = 1024, about: dict | None = None) -> None:
    """labels.zarr: OME-Zarr (NGFF 0.4) labels ``semantic`` (uint8) and ``cells`` (uint32), multiscale.

    Level 0 is the input's full resolution; coarser levels take every second
    pixel (labels must not be averaged). ``about`` (the run's summary: model,
    its fingerprint...) goes to the root's ``her2kit`` attribute, as the
    whole-slide pipeline writes it.
    """
    from her2kit.wsi import labelstore

    path = Path(path)
    tmp = _temp(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    labelstore.create(tmp, semantic.shape, chunk, mpp)
    labelstore.write_region(tmp, 0, 0, semantic, cells)
    for level in range(1, labelstore.level_count(tmp)):
        for _, y, x, h, w in labelstore.pyramid_regions(tmp, level, chunk):
            labelstore.downsample_region(tmp, level, y, x, h, w)
    if about is not None:
        import json

        import zarr

        root = zarr.open_group(str(tmp), mode="r+", zarr_format=2)
        root.attrs["her2kit"] = json.loads(json.dumps(about, default=str))
    _replace(tmp, path)


# --- pictures ---------------------------------------------------------------------------


def category_lut(table: Mapping[str, np.ndarray], size: int | None = None) -> np.ndarray:
    """uint8 (max id + 1, 3) colour of each cell id by category (grey: non-tumour, black: none)."""
    ids = np.asarray(table["id"], dtype=np.int64)
    size = int(max(ids.max(initial=0) + 1, size or 0))
    lut = np.zeros((size, 3), dtype=np.uint8)
    cats = np.asarray(table["category"], dtype=np.int64)
    tumour = np.asarray(table.get("tumour", np.ones(ids.size, bool))).astype(bool)
    palette = np.array([CATEGORY_COLOURS[k] for k in range(4)], dtype=np.uint8)
    lut[ids] = np.where(tumour[:, None], palette[np.clip(cats, 0, 3)], STROMA_COLOUR)
    return lut


def overlay_image(rgb: np.ndarray, cell_labels: np.ndarray, table: Mapping[str, np.ndarray],
                  fill: float = 0.25) -> np.ndarray:
    """RGB uint8 picture: each cell's outline (and a light tint) coloured by category."""
    from skimage.segmentation import find_boundaries

    lut = category_lut(table, int(cell_labels.max(initial=0)) + 1)
    colour = lut[cell_labels]
    inside = cell_labels > 0
    out = rgb.astype(np.float32)
    out[inside] = (1 - fill) * out[inside] + fill * colour[inside]
    edge = find_boundaries(cell_labels, mode="inner") & inside
    out[edge] = colour[edge]
    return np.clip(out, 0, 255).astype(np.uint8)


def _png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _fit(rgb: np.ndarray, max_side: int) -> np.ndarray:
    step = int(np.ceil(max(rgb.shape[:2]) / max_side)) if max(rgb.shape[:2]) > max_side else 1
    return rgb[::step, ::step] if step > 1 else rgb


def write_overlay_png(path: str | os.PathLike, overlay: np.ndarray, max_side: int = 8192) -> None:
    """overlay.png from an RGB uint8 picture (subsampled to at most ``max_side`` pixels a side)."""
    path = Path(path)
    tmp = _temp(path)
    tmp.write_bytes(_png_bytes(_fit(overlay, max_side)))
    _replace(tmp, path)


def _histogram_png(values: np.ndarray, categories: np.ndarray, title: str, xlabel: str,
                   bins: np.ndarray, weights: np.ndarray) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 2.8), dpi=100)
    ax = fig.add_subplot()
    stacks = [values[categories == k] for k in range(4)]
    ax.hist(stacks, bins=bins, stacked=True, label=[CATEGORY_LABELS[k] for k in range(4)],
            weights=[weights[categories == k] for k in range(4)],
            color=[np.array(CATEGORY_COLOURS[k]) / 255 for k in range(4)])
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("tumour cells")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


class StainingHistograms:
    """The report's two histograms (membrane completeness and intensity of tumour
    cells, by category) in fixed bins, summed over cell tables: a slide adds
    its blocks one by one, so memory does not grow with the number of cells."""

    COMPLETENESS_BINS = np.linspace(0, 1, 17)
    INTENSITY_BINS = np.linspace(0, 0.6, 25)  # DAB OD; stronger cells go to the last bin

    def __init__(self) -> None:
        self.completeness = np.zeros((4, len(self.COMPLETENESS_BINS) - 1), np.int64)
        self.intensity = np.zeros((4, len(self.INTENSITY_BINS) - 1), np.int64)

    def add(self, cols: Mapping[str, np.ndarray]) -> None:
        if "completeness" not in cols or "intensity" not in cols:
            return
        keep = np.asarray(cols.get("tumour", np.ones(len(cols["category"]), bool))).astype(bool)
        cats = np.clip(np.asarray(cols["category"], np.int64)[keep], 0, 3)
        comp = np.clip(np.asarray(cols["completeness"], np.float64)[keep], 0, 1)
        top = self.INTENSITY_BINS[-1]
        inten = np.clip(np.nan_to_num(np.asarray(cols["intensity"], np.float64)[keep]), 0, top)
        for k in range(4):
            self.completeness[k] += np.histogram(comp[cats == k], self.COMPLETENESS_BINS)[0]
            self.intensity[k] += np.histogram(inten[cats == k], self.INTENSITY_BINS)[0]

    def pngs(self) -> tuple[bytes, bytes]:
        out = []
        for counts, bins, title, xlabel in (
                (self.completeness, self.COMPLETENESS_BINS, "Membrane completeness", "share of sectors stained"),
                (self.intensity, self.INTENSITY_BINS, "Membrane intensity", "DAB OD of stained part (last bin: 0.6 and above)")):
            centres = np.tile((bins[:-1] + bins[1:]) / 2, 4)
            cats = np.repeat(np.arange(4), len(bins) - 1)
            out.append(_histogram_png(centres, cats, title, xlabel, bins, weights=counts.ravel().astype(float)))
        return out[0], out[1]


def _img(data: bytes, alt: str, width: str = "100%") -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img alt="{html.escape(alt)}" style="max-width:{width}" src="data:image/png;base64,{b64}">'


def percent_text(percent: float | None) -> str:
    """A percentage for a report: one decimal, more where one decimal would hide
    which side of the guideline's 10 % it lies on (QA: 10.025 % shown as
    "10.0%" on a 3+ case); "n/a" when undefined (no tumour cells)."""
    if percent is None:
        return "n/a"
    p = float(percent)
    digits = 1
    while digits < 6 and p != 10.0 and round(p, digits) == 10.0:
        digits += 1
    return f"{p:.{digits}f}%"


def rule_shares(summary: Mapping) -> str:
    """The shares the ASCO/CAP rule compares with 10% (categories 1-3, 2-3 and 3),
    for a report: the per-category percentages alone hide them (QA: 5.0% + 5.02%
    in categories 2 and 3 is 2+, shown as "5.0%" and "5.0%")."""
    counts = summary.get("counts") or {}
    c = [int(counts.get(str(k), 0)) for k in range(4)]
    n = sum(c)
    shares = [None if n == 0 else 100.0 * sum(c[k:]) / n for k in (1, 2, 3)]
    return ("tumour cells in categories 1-3: {}, 2-3: {}, 3: {} (each against the 10% of the rule)"
            .format(*(percent_text(v) for v in shares)))


def write_report_html(path: str | os.PathLike, rgb: np.ndarray, overlay: np.ndarray,
                      summary: Mapping, table: Mapping[str, np.ndarray],
                      max_side: int = 1600) -> None:
    """report.html: one self-contained page with the image, the overlay, the score and histograms."""
    histograms = StainingHistograms()  # the same bins as a slide's report
    histograms.add(table)
    hist_c, hist_i = histograms.pngs()
    score = summary.get("score")
    sub = summary.get("subcategory")
    score_text = "undefined" if score is None else (f"{score} ({sub})" if sub else score)
    percent = summary.get("percent", {})
    rows = "".join(
        f"<tr><td style='color:rgb{CATEGORY_COLOURS[k]}'>&#9632;</td><td>{CATEGORY_LABELS[k]}</td>"
        f"<td>{summary.get('counts', {}).get(str(k), '')}</td>"
        f"<td>{percent_text(percent.get(str(k)))}</td></tr>" for k in range(4))
    facts = {
        "tumour cells": summary.get("cells_total"),
        "H-score": "n/a" if summary.get("h_score") is None else f"{summary['h_score']:.0f}",
        "complete staining": percent_text(summary.get("percent_complete")),
        "model": summary.get("model"),
        "microns per pixel": summary.get("mpp"),
        "her2kit": summary.get("her2kit_version"),
    }
    fact_rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                        for k, v in facts.items())
    from her2kit.wsi.report import ROI_NOTE

    notes = "".join(f"<p><b>{html.escape(str(text))}</b></p>\n" for text in
                    (summary.get("note"), ROI_NOTE if summary.get("roi") else None) if text)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>HER2 {html.escape(score_text)} - {html.escape(str(summary.get('input', '')))}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
.score {{ font-size: 2.4em; font-weight: bold; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }} td, th {{ padding: 2px 10px; text-align: left; }}
.pics {{ display: flex; gap: 1em; flex-wrap: wrap; }} .pics div {{ flex: 1 1 45%; }}
</style></head><body>
<h1>HER2 immunohistochemistry: {html.escape(str(summary.get('input', '')))}</h1>
<p class="score">HER2 {html.escape(score_text)}</p>
{notes}<p>ASCO/CAP 2018 (reaffirmed 2023) over tumour cells: 3+ when more than 10% show intense complete
membrane staining; 2+ when more than 10% show complete staining; 1+ when more than 10% show faint
incomplete staining; 0 otherwise (ultralow: some faint staining, at most 10%; null: none).</p>
<table>{rows}</table>
<p>{html.escape(rule_shares(summary))}</p>
<table>{fact_rows}</table>
<div class="pics">
<div><h3>Image</h3>{_img(_png_bytes(_fit(rgb, max_side)), "input image")}</div>
<div><h3>Cells by category</h3>{_img(_png_bytes(_fit(overlay, max_side)), "overlay")}</div>
</div>
<div class="pics">
<div>{_img(hist_c, "completeness histogram")}</div>
<div>{_img(hist_i, "intensity histogram")}</div>
</div>
<p>Grey outlines: cells excluded as stroma. Per-cell numbers: cells.csv; outlines for QuPath: cells.geojson.</p>
</body></html>
"""
    atomic_write_text(path, page)
