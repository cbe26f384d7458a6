"""cells.csv of a whole slide, formatted block by block.

Each block task formats its own rows (header line first) while the network
works on later blocks; the run then only copies the blocks' text into
cells.csv, in block order. The text is what :func:`rows_text` gives for the
block's columns as recorded, so a block whose rows file is missing (recorded
by an older her2kit) or whose header differs from the slide's is formatted
again from its record, with the same result.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np


def column_names(cols: dict[str, np.ndarray]) -> list[str]:
    """cells.csv's columns: her2kit's own in their usual order, then any others."""
    from her2kit.scoring.cells import COLUMNS

    return [c for c in COLUMNS if c in cols] + [c for c in cols if c not in COLUMNS]


def _formatter(a: np.ndarray):
    # the same text as her2kit.scoring.exports.write_cells_csv, so a slide's
    # cells.csv reads like an image's
    if a.dtype == bool:
        return lambda v: int(v)
    if a.dtype.kind in "iu":
        return int
    if a.dtype.kind == "f":
        return lambda v: f"{v:.6g}"
    return str


def header_text(names: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow(names)
    return buf.getvalue()


def rows_text(cols: dict[str, np.ndarray], names: list[str]) -> str:
    """The CSV rows (no header) of ``cols`` in the order of ``names``: what
    csv.writer writes for :func:`_formatter`'s texts."""
    arrays = [np.asarray(cols[c]) for c in names]
    if arrays and all(a.ndim == 1 and a.dtype.kind in "biuf" for a in arrays):
        # numbers never need quoting: join the columns' texts (2x faster than csv.writer)
        texts = [_number_texts(a) for a in arrays]
        return "".join(",".join(row) + "\r\n" for row in zip(*texts, strict=True))
    buf = io.StringIO()
    writer = csv.writer(buf)
    fmts = [_formatter(a) for a in arrays]
    for row in zip(*arrays, strict=True):
        writer.writerow([fm(v) for fm, v in zip(fmts, row, strict=True)])
    return buf.getvalue()


def _number_texts(a: np.ndarray) -> list[str]:
    """:func:`_formatter`'s text of every value of a 1-D numeric column."""
    values = a.tolist()  # Python bools, ints and floats (float32 widened exactly)
    if a.dtype.kind == "b":
        return ["1" if v else "0" for v in values]
    if a.dtype.kind in "iu":
        return [str(v) for v in values]
    return [f"{v:.6g}" for v in values]


def write_block_rows(path: str | Path, cols: dict[str, np.ndarray]) -> None:
    """A block's header line and rows, written to a temporary name and renamed."""
    from her2kit.wsi.resume import atomic_write_bytes

    names = column_names(cols)
    atomic_write_bytes(path, (header_text(names) + rows_text(cols, names)).encode())


def block_rows(path: Path, cols: dict[str, np.ndarray], names: list[str]) -> bytes:
    """The rows of a block under the slide's header ``names``: the block's own
    text when it has the same header, else formatted from its columns."""
    header = header_text(names).encode()
    try:
        data = path.read_bytes()
    except OSError:
        data = b""
    if data.startswith(header):
        return data[len(header):]
    return rows_text(cols, names).encode()
