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
    with open(out, "w") as f:
        f.write('{"type":"FeatureCollection","features":[\n')
        for p in paths:
            if not p.exists():
                continue
            with open(p) as src:
                for line in src:
                    line = line.rstrip("\n")
                    if not line:
                        continue
                    f.write((",\n" if n else "") + line)
                    n += 1
        f.write("\n]}\n")
    return n
