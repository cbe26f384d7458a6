"""Run a trained segmentation network on an RGB image of any size.

:func:`load_segmenter` finds the network (the shipped default, a model
plugin's shipped weights, or a checkpoint path) and wraps it in a
:class:`Segmenter`, which pads small inputs and tiles large ones with
overlapping, Gaussian-weighted tiles (as MONAI's sliding-window inference)
so memory stays bounded and tiles leave no seams.

Resampling the input to the model's resolution is the caller's job:
:attr:`Segmenter.mpp` says which microns-per-pixel the model was trained at.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from her2kit.errors import Her2kitError, InputError, SetupError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = "her2net"
# uint8 RGB -> network input: (rgb / 255 - mean) / std, per channel.
DEFAULT_NORMALISATION = {"scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
DEFAULT_MPP = 0.5


def _no_grad():
    import torch

    return torch.inference_mode()


def shipped_weights(name: str = DEFAULT_MODEL) -> Path:
    """Path (.json) of the shipped weights of model plugin ``name`` (may not exist)."""
    return WEIGHTS_DIR / f"{name}-default.json"


def default_device() -> str:
    """"cuda" when a GPU is visible to torch, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str | None) -> str:
    """The torch device to use (default: cuda if available); Her2kitError if unusable here."""
    import torch

    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise Her2kitError(f"--device {device!r}: not a torch device (cpu, cuda, cuda:N, mps, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise Her2kitError(f"--device {device!r}: CUDA is not available on this machine (use --device cpu)")
    try:  # also catches cuda:7 on a one-GPU machine, mps without Metal, ...
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Her2kitError(f"--device {device!r}: not usable on this machine ({first})") from None
    return str(dev)


def normalise(batch: Any, normalisation: dict[str, Any] | None = None) -> Any:
    """uint8-valued (B, 3, H, W) tensor -> float network input (see DEFAULT_NORMALISATION)."""
    import torch

    norm = normalisation or DEFAULT_NORMALISATION
    mean = torch.tensor(norm["mean"], dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
    std = torch.tensor(norm["std"], dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
    return (batch.float() * float(norm["scale"]) - mean) / std


def gaussian_weight(size: tuple[int, int], sigma_scale: float = 0.125) -> np.ndarray:
    """Separable Gaussian importance map for a tile (h, w), peak 1, floor 1e-3."""
    axes = []
    for n in size:
        c = (n - 1) / 2
        sigma = max(n * sigma_scale, 1.0)
        axes.append(np.exp(-((np.arange(n) - c) ** 2) / (2 * sigma**2)))
    return np.maximum(np.outer(axes[0], axes[1]), 1e-3).astype(np.float32)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering [0, length) with tiles of ``tile`` px overlapping by >= ``overlap``."""
    if length <= tile:
        return [0]
    stride = max(tile - overlap, 1)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


class Segmenter:
    """A network ready to segment RGB images into background/membrane/nucleus.

    Attributes: ``name`` (model name or checkpoint stem), ``mpp`` (microns per
    pixel it was trained at), ``device`` (torch device string), ``metadata``
    (the checkpoint JSON), ``model`` (the torch module, eval mode).
    """

    def __init__(self, model: Any, metadata: dict[str, Any], name: str, device: str,
                 tile: int = 512, overlap: int = 128, batch: int = 4):
        self.model = model
        self.metadata = metadata
        self.name = name
        self.device = device
        self.mpp = float(metadata.get("mpp") or DEFAULT_MPP)
        self.normalisation = metadata.get("normalisation") or DEFAULT_NORMALISATION
        self.classes = tuple(metadata.get("classes") or ("background", "membrane", "nucleus"))
        self.tile = int(tile)
        self.overlap = int(overlap)
        self.batch = int(batch)
        self._fingerprint: str | None = None  # see fingerprint (reset it after changing the weights)

    def __repr__(self) -> str:
        return f"Segmenter({self.name!r}, mpp={self.mpp}, device={self.device!r})"

    @property
    def fingerprint(self) -> str:
        """A digest of the weights and of what shapes the output (tiling,
        normalisation, mpp): two checkpoints with one name but other weights
        differ, so a run never resumes or skips with another model's blocks."""
        if self._fingerprint is None:
            import hashlib
            import json

            import torch

            digest = hashlib.sha256(json.dumps(
                [self.mpp, self.tile, self.overlap, self.normalisation, list(self.classes)],
                sort_keys=True).encode())
            for key, value in sorted(self.model.state_dict().items()):
                t = value.detach().cpu().contiguous()
                digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
                digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    @staticmethod
    def _check(rgb: np.ndarray) -> np.ndarray:
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise Her2kitError(f"expected an RGB image (H, W, 3), got shape {rgb.shape}")
        if rgb.dtype != np.uint8:
            raise Her2kitError(f"expected uint8 RGB, got {rgb.dtype}")
        if rgb.shape[0] < 1 or rgb.shape[1] < 1:
            raise Her2kitError(f"empty image of shape {rgb.shape}")
        return rgb

    def _tensor(self, tiles: list[np.ndarray]) -> Any:
        import torch

        batch = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).to(self.device)
        return normalise(batch, self.normalisation)

    def _sliding(self, rgb: np.ndarray, fn: Any, channels: int) -> np.ndarray:
        """Apply ``fn`` (normalised batch -> (B, channels, h, w) tensor) over tiles, blended.

        On a GPU the blending runs there too: only the blended image comes
        back, and the thread feeding the GPU leaves the CPU's cores and memory
        bandwidth to cell finding. On a CPU numpy blends (torch's CPU ops:
        2.7x the CPU time on a 2176^2 block, the same values).
        """
        import torch

        rgb = self._check(rgb)
        h, w = rgb.shape[:2]
        th, tw = min(self.tile, h), min(self.tile, w)
        ys, xs = tile_starts(h, th, self.overlap), tile_starts(w, tw, self.overlap)
        if len(ys) == 1 and len(xs) == 1:
            with _no_grad():
                return fn(self._tensor([rgb]))[0].float().cpu().numpy()
        weight = gaussian_weight((th, tw))
        if self._blends_with_numpy():
            out, norm = np.zeros((channels, h, w), np.float32), np.zeros((h, w), np.float32)
            tiles_back, image_back = (lambda t: t.cpu().numpy()), (lambda a: a)
        else:
            weight = torch.from_numpy(weight).to(self.device)
            out = torch.zeros((channels, h, w), dtype=torch.float32, device=self.device)
            norm = torch.zeros((h, w), dtype=torch.float32, device=self.device)
            tiles_back, image_back = (lambda t: t), (lambda a: a.cpu().numpy())
        boxes = [(y, x) for y in ys for x in xs]
        with _no_grad():
            for i in range(0, len(boxes), self.batch):
                chunk = boxes[i:i + self.batch]
                result = tiles_back(fn(self._tensor([rgb[y:y + th, x:x + tw] for y, x in chunk])).float())
                for (y, x), r in zip(chunk, result, strict=True):
                    out[:, y:y + th, x:x + tw] += r * weight
                    norm[y:y + th, x:x + tw] += weight
            return image_back(out / norm)

    def _blends_with_numpy(self) -> bool:
        return str(self.device).startswith("cpu")

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """Softmax probabilities (3, H, W) float32 (background, membrane, nucleus) for uint8 RGB (H, W, 3)."""
        import torch

        def fn(x):
            return torch.softmax(self._pixel_logits(x), dim=1)

        return self._sliding(rgb, fn, 3)

    def _pixel_logits(self, x: Any) -> Any:
        """The network's pixel logits for batch ``x``, checked: a plugin's model that
        returns something else stops the run with one line naming the model."""
        import torch

        try:
            out = self.model(x)
        except (MemoryError, torch.OutOfMemoryError):
            raise  # the caller may retry with a smaller batch
        except Exception as exc:  # a plugin's network that fails: one line naming it
            from her2kit.readers.pixels import one_line

            raise SetupError(f"model {self.name!r} failed on a batch of shape {tuple(x.shape)}: "
                             f"{one_line(exc)}") from None
        logits = checked_output(out, x, self.name)
        if not bool(torch.isfinite(logits).all()):
            raise SetupError(f"model {self.name!r} returned NaN or infinite pixel logits for a batch of "
                             f"shape {tuple(x.shape)}; its weights may be broken")
        return logits

    def predict_pattern(self, rgb: np.ndarray) -> np.ndarray:
        """Staining-pattern probabilities (4,) float32 for ("0", "1+", "2+", "3+"), Her2Net only.

        Large images are cut into tiles whose probabilities are averaged,
        weighted by tile area.
        """
        import torch

        if not self._has_pattern_head():
            raise Her2kitError(f"model {self.name!r} has no staining-pattern head (only Her2Net has one)")
        rgb = self._check(rgb)
        h, w = rgb.shape[:2]
        th, tw = min(self.tile, h), min(self.tile, w)
        boxes = [(y, x) for y in tile_starts(h, th, 0) for x in tile_starts(w, tw, 0)]
        total = np.zeros(4, np.float64)
        with _no_grad():
            for i in range(0, len(boxes), self.batch):
                chunk = boxes[i:i + self.batch]
                out = self.model(self._tensor([rgb[y:y + th, x:x + tw] for y, x in chunk]))
                if "pattern" not in out:
                    raise Her2kitError(f"model {self.name!r} has no staining-pattern head")
                total += torch.softmax(out["pattern"].float(), dim=1).sum(0).cpu().numpy()
        return (total / len(boxes)).astype(np.float32)

    def _has_pattern_head(self) -> bool:
        return hasattr(self.model, "pattern")

    def predict_mc(self, rgb: np.ndarray, samples: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Bayesian SegNet only: mean probabilities (3, H, W) and predictive entropy (H, W), nats."""
        import torch

        if not hasattr(self.model, "predict_mc"):
            raise Her2kitError(f"model {self.name!r} has no Monte-Carlo dropout (use bayesian-segnet)")

        def fn(x):
            mean, entropy = self.model.predict_mc(x, samples)
            return torch.cat([mean, entropy[:, None]], dim=1)

        out = self._sliding(rgb, fn, 4)
        return out[:3], out[3]


def model_fingerprint(segmenter: Any) -> str:
    """The segmenter's ``fingerprint`` (a model plugin may give one), else its class."""
    fingerprint = getattr(segmenter, "fingerprint", None)
    if fingerprint:
        return str(fingerprint)
    cls = type(segmenter)
    return f"{cls.__module__}.{cls.__qualname__}"


def is_model_name(model: str | os.PathLike) -> bool:
    """Whether ``--model`` names a model plugin rather than a checkpoint path: a
    registered name (even with a dot, as "qa.net") unless such a file exists;
    otherwise anything that does not look like a path. An unknown name fails
    here with the known ones listed, before any work."""
    from her2kit.plugins import registry

    text = os.fspath(model)
    path = Path(text)
    if path.exists():
        return False
    if text in {e.name for e in registry().list("model")}:
        return True
    if path.suffix or os.sep in text or "/" in text:
        return False
    registry().get("model", text)  # PluginError listing the known names
    return True


def checked_output(out: Any, x: Any, name: str) -> Any:
    """The pixel logits of a network's output ``out`` for batch ``x``: a
    SetupError naming model ``name`` unless ``out`` is ``{"pixel": floating
    point (B, 3, H, W)}`` (the model plugin contract)."""
    import torch

    logits = out.get("pixel") if isinstance(out, dict) else None
    want = (x.shape[0], 3, x.shape[2], x.shape[3])
    if isinstance(logits, torch.Tensor) and tuple(logits.shape) == want:
        if not logits.is_floating_point():
            raise SetupError(f"model {name!r} returned {logits.dtype} pixel logits; expected floating point")
        return logits
    if isinstance(logits, torch.Tensor):
        got = f"pixel logits of shape {tuple(logits.shape)}"
    elif isinstance(out, dict):
        got = f"a dict without a 'pixel' tensor (keys {sorted(map(str, out))})"
    else:
        got = f"a {type(out).__name__}"
    raise SetupError(f"model {name!r} returned {got} for a batch of shape {tuple(x.shape)}; "
                     f"expected {{'pixel': logits of shape {want}}}")


def load_segmenter(model: str | os.PathLike | None = None, device: str | None = None) -> Segmenter:
    """The segmenter for ``model``.

    ``None``: the shipped default (Her2Net, her2kit/weights/her2net-default.*).
    A model plugin name: that model's shipped weights (its ``ModelSpec.weights``,
    else her2kit/weights/NAME-default.*; an untrained network is
    useless, so a name without shipped weights is an error saying how to
    train it). Otherwise a checkpoint path (NAME.safetensors with NAME.json
    beside it, or the .json). ``device`` defaults to cuda when available.
    """
    from her2kit.checkpoint import load_checkpoint

    device = device or default_device()
    if model is None:
        model = DEFAULT_MODEL
    text = os.fspath(model)
    path = Path(text)
    if is_model_name(text):
        from her2kit.plugins import registry

        record = registry().get("model", text)  # unknown names: PluginError listing the known ones
        meta = Path(record.weights) if getattr(record, "weights", None) else shipped_weights(text)
        if not meta.is_file():
            raise Her2kitError(
                f"no shipped weights at {meta.with_suffix('.*')}; make them with: "
                f"her2kit train --data DIR --model {text} --out RUN (then use --model RUN/best.json)"
            )
        net, metadata = load_checkpoint(meta, device=device)
        return Segmenter(net, metadata, name=text, device=device)
    if path.is_dir():
        for candidate in ("best.json", "last.json"):
            if (path / candidate).is_file():
                path = path / candidate
                break
        else:
            raise InputError(path, "folder holds no checkpoint (best.json or last.json)")
    net, metadata = load_checkpoint(path, device=device)
    stem = path.name.rsplit(".", 1)[0] if path.suffix in (".json", ".safetensors") else path.name
    return Segmenter(net, metadata, name=str(metadata.get("name") or stem), device=device)
