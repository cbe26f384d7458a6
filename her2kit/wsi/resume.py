"""The block ledger: what a slide's run has finished, so a killed run resumes.

A run works in ``OUT/<stem>/.her2kit-work/``. ``plan.json`` records what the
run computes (slide, shape, segmenter, grid); a ledger whose plan differs is
discarded. A block is finished when ``blocks/<index>.npz`` exists: it holds
the block's cells (columns) and its spill (pixels of its cells that lie in
neighbouring blocks), and is written to a temporary name and renamed only
after the block's label region is in ``labels.zarr``. A kill at any moment
thus leaves either a finished block or one that is simply done again
(writes are idempotent). Later stages (seams, pyramid levels) leave empty
marker files the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

WORK = ".her2kit-work"


def file_mode() -> int:
    """The usual mode of a new file, 0666 & ~umask (mkstemp and safetensors make 0600 files)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_npz(path: str | Path, compress: bool = True, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` (``np.savez`` unless ``compress``) to a temporary name,
    renamed into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            (np.savez_compressed if compress else np.savez)(f, **arrays)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Ledger:
    """Finished-block records of one slide's run in ``work_dir``."""

    def __init__(self, work_dir: str | Path):
        self.dir = Path(work_dir)
        self.blocks_dir = self.dir / "blocks"
        self.marks_dir = self.dir / "marks"

    @property
    def labels_path(self) -> Path:
        """Where the labels.zarr under construction lives."""
        return self.dir / "labels.zarr"

    def start(self, plan: dict) -> bool:
        """Open the ledger for ``plan``; returns True when resuming earlier work.

        Earlier work is discarded when its plan differs (another model, option,
        input file, version). A finished run removes its ledger, so one that is
        here is an interrupted run's, resumed even under ``--force`` (QA: a
        --force run killed half-way started over every time): its blocks, made
        under the same plan, would come out the same.
        """
        plan_path = self.dir / "plan.json"
        text = json.dumps(plan, sort_keys=True, indent=1)
        if self.dir.exists():
            old = plan_path.read_text() if plan_path.exists() else None
            if old != text or not self.labels_path.exists():
                shutil.rmtree(self.dir)
            else:
                return True
        self.blocks_dir.mkdir(parents=True)
        self.marks_dir.mkdir()
        return False

    def commit_plan(self, plan: dict) -> None:
        """Record the plan (after the empty labels.zarr is created)."""
        atomic_write_bytes(self.dir / "plan.json",
                           json.dumps(plan, sort_keys=True, indent=1).encode())

    def block_path(self, index: int) -> Path:
        return self.blocks_dir / f"{index:06d}.npz"

    def features_path(self, index: int) -> Path:
        """The block's QuPath features (JSON lines), written before its record."""
        return self.blocks_dir / f"{index:06d}.features.jsonl"

    def rows_path(self, index: int) -> Path:
        """The block's cells.csv header and rows, written before its record."""
        return self.blocks_dir / f"{index:06d}.cells.csv"

    def done(self, index: int) -> bool:
        """Whether block ``index`` is finished."""
        return self.block_path(index).exists()

    def save_block(self, index: int, cells: dict[str, np.ndarray], spill: np.ndarray,
                   meta: dict) -> None:
        """Record a finished block: its cells (columns), spill (N, 3) int64 (y, x, id), meta."""
        arrays = {f"cell_{k}": np.asarray(v) for k, v in cells.items()}
        arrays["spill"] = np.asarray(spill, np.int64).reshape(-1, 3)
        arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
        atomic_save_npz(self.block_path(index), **arrays)

    def load_block(self, index: int, spill: bool = False) -> tuple[dict[str, np.ndarray], dict, np.ndarray | None]:
        """(cells columns, meta, spill or None) of a finished block."""
        with np.load(self.block_path(index), allow_pickle=False) as z:
            cells = {k[5:]: z[k] for k in z.files if k.startswith("cell_")}
            meta = json.loads(z["meta"].tobytes().decode())
            sp = z["spill"] if spill else None
        return cells, meta, sp

    def load_spill(self, index: int) -> np.ndarray:
        """Only the spill (N, 3) int64 of a finished block (the stitching step needs
        nothing else; an npz member is read and decompressed only when asked for)."""
        with np.load(self.block_path(index), allow_pickle=False) as z:
            return z["spill"]

    def marked(self, name: str) -> bool:
        """Whether a later-stage step (e.g. "seam-12", "level-2") is finished."""
        return (self.marks_dir / name).exists()

    def mark(self, name: str) -> None:
        """Record a later-stage step as finished."""
        atomic_write_bytes(self.marks_dir / name, b"")
