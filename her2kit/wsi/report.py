"""The slide report: score, percentages, thumbnail and a HER2 local score map.

The map (:class:`HeatMap`) bins tumour cells into squares of about 100
microns and colours each square by the score its own cells would get by the
ASCO/CAP rule (0 blue, 1+ yellow, 2+ orange, 3+ red), paler with few cells;
squares without cells stay transparent. It is built from
the blocks' cell records as they are read, so memory does not grow with the
number of cells.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

# category -> RGB, shared with the GeoJSON classes
COLOURS = np.array([[70, 130, 230], [250, 220, 60], [245, 140, 30], [215, 40, 40]], np.float64)
BIN_UM = 100.0
#: said by both reports when --roi limited the cells scored
ROI_NOTE = "Scored within the regions of interest given (--roi) only, not the whole image."


class HeatMap:
    """Per-bin counts of tumour cells in each category, (4, rows, cols).

    Bins are squares of ``bin0`` level-0 pixels; ``thumb_shape`` and
    ``thumb_ds`` (level-0 pixels per thumbnail pixel) place it on the thumbnail.
    """

    def __init__(self, thumb_shape: tuple[int, int], thumb_ds: float, mpp0: float = 0.5):
        self.thumb_shape = thumb_shape
        self.thumb_ds = thumb_ds
        h0, w0 = thumb_shape[0] * thumb_ds, thumb_shape[1] * thumb_ds
        self.bin0 = max(BIN_UM / mpp0, max(h0, w0) / 512.0, thumb_ds)
        self.counts = np.zeros((4, max(1, math.ceil(h0 / self.bin0)),
                                max(1, math.ceil(w0 / self.bin0))), np.int64)

    def add(self, cols: dict[str, np.ndarray]) -> None:
        """Count cells of a block's columns (y, x level-0; category; tumour)."""
        if "category" not in cols or "y" not in cols:
            return
        keep = np.ones(len(cols["y"]), bool)
        if "tumour" in cols:
            keep &= cols["tumour"].astype(bool)
        cat = np.clip(cols["category"][keep].astype(np.int64), 0, 3)
        r = np.clip((cols["y"][keep] / self.bin0).astype(np.int64), 0, self.counts.shape[1] - 1)
        c = np.clip((cols["x"][keep] / self.bin0).astype(np.int64), 0, self.counts.shape[2] - 1)
        np.add.at(self.counts, (cat, r, c), 1)

    #: a square with this many tumour cells or more is drawn opaque; fewer, fainter
    FULL_CELLS = 20

    def local_scores(self) -> np.ndarray:
        """int (rows, cols): the ASCO/CAP score (0-3) of each square's own tumour
        cells, by the slide's rule (:func:`her2kit.scoring.rules.score_levels`),
        -1 where a square has none."""
        from her2kit.scoring.rules import score_levels

        return score_levels(*self.counts)

    def rgba(self) -> np.ndarray:
        """uint8 (rows, cols, 4): each square in the colour of its local score
        (a 3+ hot spot among unstained cells shows red, where a mean category
        showed the 1+ yellow: QA), opacity growing with its tumour cells up to
        :attr:`FULL_CELLS`, clear where there are none."""
        score = self.local_scores()
        total = self.counts.sum(axis=0)
        rgb = COLOURS[np.clip(score, 0, 3)]
        alpha = np.where(total > 0, 255 * np.clip(total / self.FULL_CELLS, 0.25, 1.0), 0)
        return np.concatenate([rgb, alpha[..., None]], axis=-1).round().astype(np.uint8)

    def on_thumbnail(self) -> np.ndarray:
        """The heat map resized (nearest) to the thumbnail, uint8 RGBA."""
        from PIL import Image

        h, w = self.thumb_shape
        img = Image.fromarray(self.rgba(), "RGBA")
        full = (round(self.counts.shape[2] * self.bin0 / self.thumb_ds),
                round(self.counts.shape[1] * self.bin0 / self.thumb_ds))
        big = np.asarray(img.resize((max(1, full[0]), max(1, full[1])), Image.Resampling.NEAREST))
        out = np.zeros((h, w, 4), np.uint8)
        hh, ww = min(h, big.shape[0]), min(w, big.shape[1])
        out[:hh, :ww] = big[:hh, :ww]
        return out


def score_counts(counts: np.ndarray, complete: int | None = None) -> dict[str, Any]:
    """score.json fields (ASCO/CAP 2018) from tumour-cell counts per category (n0..n3)
    and how many of them have complete staining (None: unknown, see ``percent_complete``)."""
    from her2kit.scoring.rules import asco_cap_from_counts

    return asco_cap_from_counts(counts, complete).to_dict()


def blend(thumb: np.ndarray, rgba: np.ndarray, opacity: float = 0.55) -> np.ndarray:
    """Thumbnail with an RGBA layer on top."""
    a = rgba[..., 3:4].astype(np.float32) / 255.0 * opacity
    return (thumb * (1 - a) + rgba[..., :3] * a).round().astype(np.uint8)


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # zlib's fastest level: 3x faster than the default on a 1024^2 thumbnail, 11 % larger
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_overlay(path: str | Path, thumb: np.ndarray, heat: HeatMap) -> None:
    """overlay.png: the thumbnail under the local score map."""
    from her2kit.wsi.resume import atomic_write_bytes

    atomic_write_bytes(path, _png(blend(thumb, heat.on_thumbnail())))


def _img(rgb: np.ndarray, alt: str, max_w: int = 900) -> str:
    data = base64.b64encode(_png(rgb)).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width:{max_w}px;width:100%;image-rendering:pixelated">'


def slide_image(thumb: np.ndarray) -> str:
    """The report's picture of the slide (an <img> tag with the PNG inline)."""
    return _img(thumb, "thumbnail")


def write_report(path: str | Path, summary: dict, thumb: np.ndarray, heat: HeatMap,
                 source: str, slide_img: str | None = None,
                 histograms: tuple[bytes, bytes] | None = None) -> None:
    """report.html: score, counts, percentages, H-score, thumbnail, local score map and (given)
    the completeness and intensity histograms as PNG bytes, as an image's
    report has them (one self-contained file). ``slide_img``:
    :func:`slide_image` of ``thumb``, if already made."""
    from her2kit.scoring.exports import CATEGORY_LABELS, rule_shares
    from her2kit.scoring.exports import percent_text as share
    from her2kit.wsi.resume import atomic_write_bytes

    pct = summary.get("percent") or {}
    h_score = "n/a" if summary.get("h_score") is None else f"{float(summary['h_score']):.0f}"
    legend = ", ".join(f"<span class=sw style='background:rgb{tuple(int(v) for v in COLOURS[i])}'></span> {name}"
                       for i, name in enumerate(["0", "1+", "2+", "3+"]))
    rows = "".join(
        f"<tr><td><span class=sw style='background:rgb{tuple(int(v) for v in COLOURS[i])}'></span>"
        f" {label}</td><td>{(summary.get('counts') or {}).get(str(i), '')}</td><td>{share(pct.get(str(i)))}</td></tr>"
        for i, label in CATEGORY_LABELS.items()
    )
    wsi = summary.get("wsi", {})
    run = summary.get("run", {})
    timings = run.get("timings_s", {})
    sub = summary.get("subcategory")
    # (no tumour cells: "undefined", as an image's report says; QA: "None")
    score = ("undefined" if summary.get("score") is None else html.escape(str(summary["score"]))) \
        + (f" ({html.escape(str(sub))})" if sub else "")
    notes = "".join(f"<p><b>{html.escape(str(text))}</b></p>\n" for text in
                    (summary.get("note"), ROI_NOTE if summary.get("roi") else None) if text)
    hist_html = ""
    if histograms is not None:
        from her2kit.scoring.exports import _img as png_img

        hist_html = ("<h2>Membrane staining of tumour cells</h2>\n<p>What the categories were "
                     "drawn from (docs/scoring.md).</p>\n"
                     + "".join(f"<div>{png_img(png, alt, '450px')}</div>" for png, alt in
                               zip(histograms, ("completeness histogram", "intensity histogram"), strict=True))
                     + "\n")
    text = f"""<!doctype html><html><head><meta charset="utf-8">
<title>HER2 {score} - {html.escape(Path(source).name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}td{{padding:2px 12px}}
.sw{{display:inline-block;width:12px;height:12px;border:1px solid #555}}
.score{{font-size:2.5em;font-weight:bold}}</style></head><body>
<h1>HER2 score: <span class="score">{score}</span></h1>
{notes}<p>{html.escape(source)}<br>model {html.escape(str(summary.get('model')))} at
{summary.get('model_mpp')} &micro;m/px; slide {summary.get('mpp')} &micro;m/px,
{wsi.get('shape', ['?', '?'])[0]} x {wsi.get('shape', ['?', '?'])[1]} px</p>
<p>ASCO/CAP 2018 (reaffirmed 2023) over invasive tumour cells:
{summary.get('cells_total', 0)} tumour cells of
{summary.get('cells_detected', 0)}; H-score {h_score};
complete staining (any intensity) {share(summary.get('percent_complete'))}.</p>
<table><tr><th>membrane category</th><th>tumour cells</th><th>share</th></tr>{rows}</table>
<p>{html.escape(rule_shares(summary))}</p>
<h2>Local score map</h2>
<p>Each {BIN_UM:.0f} &micro;m square in the colour of the HER2 score its own tumour cells
would get by the same rule ({legend}); paler where it holds fewer than
{HeatMap.FULL_CELLS} tumour cells, clear where it holds none.</p>
{_img(blend(thumb, heat.on_thumbnail(), 0.8), "local score map")}
{hist_html}<h2>Slide</h2>
{slide_img or slide_image(thumb)}
<h2>Run</h2>
<p>{wsi.get('blocks_tissue', '?')} of {wsi.get('blocks_total', '?')} blocks with tissue
(grid {wsi.get('grid', {}).get('rows')} x {wsi.get('grid', {}).get('cols')});
{run.get('blocks_run', '?')} run now, {run.get('blocks_resumed', 0)} finished by an earlier, interrupted run;
times of this run (s): {html.escape(', '.join(f'{k} {v}' for k, v in timings.items()))}</p>
</body></html>
"""
    atomic_write_bytes(path, text.encode())
