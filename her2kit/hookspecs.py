"""The four hooks of her2kit and the records they return.

Each hook returns a list of small records; a plugin implements any of them
with ``@her2kit.hookimpl``. Factories are called only on use, so a plugin
module can stay light (no torch import at discovery).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("her2kit")
hookimpl = pluggy.HookimplMarker("her2kit")


@dataclass(frozen=True)
class ReaderSpec:
    """Opens a file or URL as a :class:`her2kit.readers.Slide`.

    ``factory(path) -> Slide``; ``suffixes`` are lower-case file endings
    (".tif", ".ome.zarr"); ``can_open(path) -> bool`` may refine the choice
    (e.g. sniff a directory); higher ``priority`` wins among readers that accept.
    """

    name: str
    description: str
    factory: Callable[[str], Any]
    suffixes: Sequence[str] = ()
    can_open: Callable[[str], bool] | None = None
    priority: int = 0


@dataclass(frozen=True)
class PreprocessorSpec:
    """Image-to-image or image-to-mask step: ``factory(**options) -> callable``.

    ``stage`` says where it runs: "stain" (deconvolution), "normalise",
    "denoise" or "tissue" (tissue detection).
    """

    name: str
    description: str
    factory: Callable[..., Any]
    stage: str = "stain"


@dataclass(frozen=True)
class ModelSpec:
    """A segmentation/classification network: ``factory(**options) -> nn.Module``.

    ``weights``: the plugin's own trained checkpoint (the path of its .json, the
    .safetensors beside it), used by ``--model NAME``; without it her2kit looks
    for ``her2kit/weights/NAME-default.json``. A plugin module can point at a file
    in its package without importing torch: ``str(Path(__file__).parent / ...)``.
    """

    name: str
    description: str
    factory: Callable[..., Any]
    options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None


@dataclass(frozen=True)
class ScorerSpec:
    """Turns a per-cell table into a score: ``factory(**options) -> callable``."""

    name: str
    description: str
    factory: Callable[..., Any]


KINDS = {
    "reader": ReaderSpec,
    "preprocessor": PreprocessorSpec,
    "model": ModelSpec,
    "scorer": ScorerSpec,
}


@hookspec
def her2kit_readers() -> list[ReaderSpec]:
    """Return readers that open files or URLs as Slides."""


@hookspec
def her2kit_preprocessors() -> list[PreprocessorSpec]:
    """Return preprocessors (stain deconvolution, normalisation, denoising, tissue detection)."""


@hookspec
def her2kit_models() -> list[ModelSpec]:
    """Return segmentation and classification models."""


@hookspec
def her2kit_scorers() -> list[ScorerSpec]:
    """Return scorers that turn a per-cell table into a score."""


HOOK_OF_KIND = {
    "reader": "her2kit_readers",
    "preprocessor": "her2kit_preprocessors",
    "model": "her2kit_models",
    "scorer": "her2kit_scorers",
}


def lazy(target: str) -> Callable[..., Any]:
    """A factory that imports ``"package.module:attribute"`` only when called.

    Keeps plugin discovery free of heavy imports (torch, dask).
    """
    module_name, _, attribute = target.partition(":")

    def resolve() -> Any:
        import importlib

        return getattr(importlib.import_module(module_name), attribute)

    def factory(*args: Any, **kwargs: Any) -> Any:
        return resolve()(*args, **kwargs)

    factory.__qualname__ = factory.__name__ = f"lazy({target})"
    factory.target = target  # type: ignore[attr-defined]
    factory.resolve = resolve  # type: ignore[attr-defined]  # what it will call (signatures)
    return factory
