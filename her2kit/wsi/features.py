"""QuPath GeoJSON cells of a whole slide, written block by block.

Each block task writes its own cells as JSON lines (one Feature per line, in
level-0 pixel coordinates); the run concatenates the blocks' lines into one
FeatureCollection at the end, streaming, so memory does not grow with the
number of cells.
"""

from __future__ import annotations

from pathlib import Path


def write_block_features(path: str | Path, lines: list[str]) -> None:
    """One Feature's JSON text per line, written to a temporary name and renamed."""
    from her2kit.wsi.resume import atomic_write_bytes

    atomic_write_bytes(path, "".join(line + "\n" for line in lines).encode())


def concatenate(paths: list[Path], out: Path) -> int:
    """Stream per-block JSON-lines files into one GeoJSON FeatureCollection; returns the count."""
    n = 0
    with open(out, "wb") as f:
        f.write(b'{"type":"FeatureCollection","features":[\n')
        for p in paths:
            if not p.exists():
                continue
            # a block's whole text at once (a few MB): one Feature per non-empty line
            lines = [line for line in p.read_bytes().split(b"\n") if line]
            if lines:
                f.write((b",\n" if n else b"") + b",\n".join(lines))
                n += len(lines)
        f.write(b"\n]}\n")
    return n
