"""One Slide interface over every image and whole-slide format.

Readers are plugins (hook ``her2kit_readers``); :func:`open_slide` picks the
one that accepts a path. This module stays light: numpy only at import.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from her2kit.errors import InputError


class Slide(ABC):
    """An RGB image pyramid with a known (or unknown) resolution.

    Level 0 is full resolution. Coordinates are pixels of the level asked for,
    rows (y) before columns (x). Pixel data are always uint8 RGB, (h, w, 3).
    """

    path: str

    @property
    @abstractmethod
    def level_count(self) -> int:
        """Number of pyramid levels (1 for a plain image)."""

    @abstractmethod
    def level_shape(self, level: int = 0) -> tuple[int, int]:
        """(height, width) of a level, in pixels."""

    @property
    @abstractmethod
    def mpp(self) -> float | None:
        """Microns per pixel at level 0, or None when the file does not say."""

    @abstractmethod
    def read_region(self, y: int, x: int, h: int, w: int, level: int = 0) -> np.ndarray:
        """Pixels [y, y+h) x [x, x+w) of a level as uint8 (h, w, 3).

        Parts outside the image are filled with white (255), as glass.
        """

    @abstractmethod
    def to_dask(self, level: int = 0) -> Any:
        """A level as a lazy dask array, uint8 (H, W, 3)."""

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of level 0."""
        return self.level_shape(0)

    def level_downsample(self, level: int) -> float:
        """Level-0 pixels per pixel of ``level`` (along the height)."""
        return self.level_shape(0)[0] / self.level_shape(level)[0]

    def level_mpp(self, level: int) -> float | None:
        """Microns per pixel of ``level``, or None."""
        return None if self.mpp is None else self.mpp * self.level_downsample(level)

    def best_level_for_mpp(self, target_mpp: float) -> int:
        """The coarsest level whose resolution is at least as fine as ``target_mpp``."""
        if self.mpp is None:
            return 0
        best = 0
        for level in range(self.level_count):
            lm = self.level_mpp(level)
            if lm is not None and lm <= target_mpp * 1.001:
                best = level
        return best

    def close(self) -> None:  # noqa: B027 - optional for readers holding handles
        """Release file handles."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, shape={self.shape}, levels={self.level_count}, mpp={self.mpp})"


def _suffix_match(path: str, suffixes: tuple[str, ...] | list[str]) -> int:
    lower = path.lower().rstrip("/")
    return max((len(s) for s in suffixes if lower.endswith(s.lower())), default=0)


def open_slide(path: str | os.PathLike, reader: str | None = None) -> Slide:
    """Open ``path`` with the named reader, or with the best one that accepts it.

    Raises InputError (naming the file) when the path is missing or no reader
    accepts it.
    """
    from her2kit.plugins import registry

    path = os.fspath(path)
    is_url = "://" in path
    if not is_url and not os.path.exists(path):
        raise InputError(path, "no such file or directory")
    if reader is not None:
        return _open_with(registry().get("reader", reader), path)
    candidates = []
    for entry in registry().list("reader"):
        spec = entry.record
        match = _suffix_match(path, tuple(spec.suffixes))
        if spec.can_open is not None:
            try:
                accepted = spec.can_open(path)
            except Exception:
                accepted = False
            if not accepted:
                continue
            match = max(match, 1)
        if match:
            candidates.append((spec.priority, match, spec))
    if not candidates:
        if not is_url and os.path.isdir(path):
            raise InputError(path, "is a directory, not an image or a Zarr store")
        raise InputError(path, "no reader for this kind of file")
    candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
    from her2kit.errors import PluginError

    unloadable = None
    for _, _, spec in candidates:
        try:
            slide = _open_with(spec, path)
        except PluginError as exc:  # its library is missing: the next reader that claims the file
            unloadable = unloadable or exc
            continue
        if unloadable is not None:
            import warnings

            from her2kit.plugins import PluginWarning

            warnings.warn(f"{unloadable}; {path} read with the {spec.name!r} reader instead", PluginWarning,
                          stacklevel=2)
        return slide
    raise unloadable


def _open_with(spec: Any, path: str) -> Slide:
    """Call a reader's factory; what a reader lets escape still ends as one line naming the file."""
    from her2kit.errors import Her2kitError, PluginError

    try:
        return spec.factory(path)
    except Her2kitError:
        raise
    except ImportError as exc:
        raise PluginError(f"reader {spec.name!r} cannot load: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        text = " ".join(str(exc).split())
        raise InputError(path, f"{spec.name} reader cannot read it: {type(exc).__name__}: {text}") from exc


def missing_chunks_note(slide: Any) -> str | None:
    """A note when level 0 of ``slide`` lacks stored chunks (a reader that can tell,
    such as Zarr's, has ``missing_chunks()``): they read as the fill value, so
    a lost chunk would pass for an empty region without it."""
    count = getattr(slide, "missing_chunks", None)
    missing = count() if callable(count) else None
    if not missing or not missing[0]:
        return None
    return f"{missing[0]} of {missing[1]} chunks of level 0 are missing from the store (read as its fill value)"
