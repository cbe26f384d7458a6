"""Checkpoints as safetensors (tensors) plus JSON (everything else). Never pickle.

A checkpoint called ``NAME`` is three files in one folder:

- ``NAME.safetensors``: the model's state dict;
- ``NAME.json``: what is needed to rebuild and use it (``architecture`` = the
  model plugin name, ``options`` for its factory, ``classes``, ``patterns``,
  ``mpp``, ``normalisation``) and how it was made (data, seeds, command,
  epoch, metrics);
- ``NAME.optim.safetensors`` (optional): optimizer state and the step
  counters needed by ``her2kit train --resume``.

Pickle-based files (``torch.save``: .pt, .pth, .ckpt, .pkl, .bin) are
refused: unpickling runs arbitrary code from the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from her2kit.errors import Her2kitError, InputError, PluginError

FORMAT = "her2kit-checkpoint"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin", ".tar")
# torch.save writes a zip archive ("PK\x03\x04"); raw pickles start with 0x80 + protocol.
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
_PICKLE_WHY = "is a pickle (torch.save) checkpoint; her2kit loads only safetensors + JSON because unpickling can run arbitrary code"


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """The (weights .safetensors, metadata .json) pair that ``path`` names.

    ``path`` may be either file, or the common stem. Pickle files raise
    :class:`InputError`; so does a missing file.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise InputError(p, _PICKLE_WHY)
    stem = p.with_name(p.name[: -len(suffix)]) if suffix in (".json", ".safetensors") else p
    weights, meta = _sibling(stem, ".safetensors"), _sibling(stem, ".json")
    if stem.name.endswith(".optim"):
        raise InputError(p, "is optimizer state, not a model; give the model's .safetensors or .json")
    for f in (weights, meta):
        if not f.is_file():
            raise InputError(f, "checkpoint file not found (a checkpoint is NAME.safetensors + NAME.json)")
        _refuse_pickle(f)
    return weights, meta


def _sibling(stem: Path, ext: str) -> Path:
    # not Path.with_suffix: a stem like "run.v2" keeps its dot
    return stem.with_name(stem.name + ext)


def _refuse_pickle(f: Path) -> None:
    with open(f, "rb") as fh:
        head = fh.read(8)
    if any(head.startswith(m) for m in _PICKLE_MAGIC):
        raise InputError(f, _PICKLE_WHY)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of the checkpoint ``path`` names (see :func:`checkpoint_paths`)."""
    _, meta = checkpoint_paths(path)
    try:
        data = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(meta, f"unreadable checkpoint metadata ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(meta, f"not a her2kit checkpoint (no \"format\": \"{FORMAT}\")")
    for key in ("architecture", "options"):
        if key not in data:
            raise InputError(meta, f"checkpoint metadata lacks {key!r}")
    return data


def load_tensors(path: str | os.PathLike) -> dict[str, Any]:
    """All tensors of a safetensors file (CPU); InputError if it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    _refuse_pickle(p)
    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(p, f"not a readable safetensors file ({exc})") from None


def save_tensors(tensors: dict[str, Any], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write tensors to ``path`` through a temporary name (atomic rename)."""
    from safetensors.torch import save_file

    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    from her2kit.wsi.resume import file_mode

    os.chmod(tmp, file_mode())  # safetensors makes 0600 files; the JSON beside it gets the usual mode
    os.replace(tmp, p)


def write_json(data: Any, path: str | os.PathLike) -> None:
    """Write JSON through a temporary name (atomic rename)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, p)


def save_checkpoint(model: Any, metadata: dict[str, Any], stem: str | os.PathLike,
                    optimizer_state: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Save ``model`` as STEM.safetensors + STEM.json (+ STEM.optim.safetensors).

    ``metadata`` must hold ``architecture`` and ``options``; ``format`` is
    added. The JSON is written last, so a complete JSON means a complete
    checkpoint.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights, meta = _sibling(stem, ".safetensors"), _sibling(stem, ".json")
    state = {k: v for k, v in model.state_dict().items()}
    save_tensors(state, weights, metadata={"format": FORMAT})
    if optimizer_state is not None:
        tensors, info = flatten_optimizer_state(optimizer_state)
        save_tensors(tensors, _sibling(stem, ".optim.safetensors"), metadata={"format": FORMAT})
        metadata = {**metadata, "optimizer": info}
    write_json({"format": FORMAT, "format_version": FORMAT_VERSION, **metadata}, meta)
    return weights, meta


def flatten_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (safetensors) and JSON-able rest."""
    import torch

    tensors: dict[str, Any] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """Rebuild an ``optimizer.state_dict()`` from :func:`flatten_optimizer_state`'s parts."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, entry in info.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    return {"state": state, "param_groups": info["param_groups"]}


def build_model(architecture: str, options: dict[str, Any] | None = None) -> Any:
    """Instantiate the model plugin ``architecture`` with ``options`` (plugin defaults first)."""
    from her2kit.plugins import registry

    record = registry().get("model", architecture)
    options = {**record.options, **(options or {})}
    try:
        return record.factory(**options)
    except Her2kitError:
        raise
    except Exception as exc:  # a plugin's factory (or its missing dependency): one line naming it
        from her2kit.readers.pixels import one_line

        raise PluginError(f"model {architecture!r} could not be built with options {options}: "
                          f"{one_line(exc)}") from None


def load_checkpoint(path: str | os.PathLike, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights.

    Returns ``(model in eval mode on device, metadata)``. Any mismatch between
    the weights and the architecture is an :class:`InputError` naming the file.
    """
    weights, _ = checkpoint_paths(path)
    metadata = read_metadata(path)
    model = build_model(metadata["architecture"], metadata.get("options"))
    state = load_tensors(weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        raise InputError(weights, f"weights do not fit architecture {metadata['architecture']!r} "
                                  f"with options {metadata.get('options')} ({first})") from None
    return model.to(device).eval(), metadata


def publish_checkpoint(src: str | os.PathLike, dst_stem: str | os.PathLike, extra: dict[str, Any]) -> Path:
    """Copy checkpoint ``src`` to DST_STEM.safetensors/.json, merging ``extra`` into its JSON.

    Used to ship trained weights (e.g. her2kit/weights/her2net-default) with
    the commands that made them; optimizer state is not copied. Returns the
    new .json path.
    """
    import shutil

    weights, _ = checkpoint_paths(src)
    meta = read_metadata(src)
    meta.pop("optimizer", None)
    meta.update(extra)
    dst = Path(dst_stem)
    dst.parent.mkdir(parents=True, exist_ok=True)
    out_w = _sibling(dst, ".safetensors")
    tmp = out_w.with_name(out_w.name + ".tmp")
    shutil.copyfile(weights, tmp)
    os.replace(tmp, out_w)
    out_m = _sibling(dst, ".json")
    write_json(meta, out_m)
    return out_m
