"""cells.csv of a whole slide, formatted block by block.

Each block task formats its own rows (header line first, the text of
:func:`her2kit.scoring.exports.write_cells_csv`) while the network works on
later blocks; the run then only copies the blocks' text into cells.csv, in
block order. A block whose rows file is missing (recorded by an older
her2kit) or whose header differs from the slide's is formatted again from
its record, with the same result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from her2kit.scoring.exports import csv_columns, csv_header, csv_rows


def write_block_rows(path: str | Path, cols: dict[str, np.ndarray]) -> None:
    """A block's header line and rows, written to a temporary name and renamed."""
    from her2kit.wsi.resume import atomic_write_bytes

    names = csv_columns(cols)
    atomic_write_bytes(path, (csv_header(names) + csv_rows(cols, names)).encode())


def block_rows(path: Path, cols: dict[str, np.ndarray], names: list[str]) -> bytes:
    """The rows of a block under the slide's header ``names``: the block's own
    text when it has the same header, else formatted from its columns."""
    header = csv_header(names).encode()
    try:
        data = path.read_bytes()
    except OSError:
        data = b""
    if data.startswith(header):
        return data[len(header):]
    return csv_rows(cols, names).encode()
