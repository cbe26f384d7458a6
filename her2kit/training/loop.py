"""The training loop: loss, optimiser presets, validation, checkpoints, resume.

Loss = cross-entropy + soft Dice over the three pixel classes (+
``pattern_weight`` x cross-entropy of the staining-pattern head where the
patch has a label). Membranes are thin: a few per cent of the pixels, most
of them next to background. The Dice term measures each class's overlap
independently of its size (which is what the evaluation reports), so thin
membranes are not drowned by the background. The cross-entropy can be
class-weighted with ``class_weight_power`` p: weights = frequency ** -p,
normalised to mean 1. Up to 2026-11-27 the default was p = 0.5 (inverse
square root); with the Dice term on top this over-weighted membranes (about
6.8x the background) and the predicted membranes came out about one pixel
too thick (recall 0.89, precision 0.69). The default is now p = 0 (plain
cross-entropy + soft Dice, as in nnU-Net).

Reproducibility: epoch ``e`` draws its patch positions, order and
augmentation from ``numpy.random.default_rng([seed, e])`` and seeds torch
with ``(seed, e)``, so a run resumed at an epoch boundary ends with the same
weights as an uninterrupted one (same machine, same thread count).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from her2kit.errors import Her2kitError
from her2kit.evaluation.metrics import CLASS_NAMES, confusion_matrix, json_safe, pixel_metrics
from her2kit.inference import checked_output, normalise
from her2kit.training.augment import DEFAULT_AUGMENT, AugmentConfig, augment
from her2kit.training.dataset import LabelledImage, PatchSampler


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; see :data:`PRESETS`."""

    optimizer: str = "adamw"  # "adamw" or "sgd"
    lr: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch: int = 8
    epochs: int = 20
    width: int = 8
    schedule: str = "cosine"  # "cosine" (to 2% of lr) or "constant"
    patch: int = 251
    pattern_weight: float = 0.3
    dice_weight: float = 1.0
    class_weight_power: float = 0.0  # cross-entropy class weights = frequency ** -power (0: unweighted)
    seed: int = 0
    max_val_images: int = 16


PRESETS: dict[str, TrainConfig] = {
    # CPU-friendly: AdamW with cosine decay, small batches, narrow network.
    "default": TrainConfig(),
    # The paper's setting (Saha & Chakraborty 2018): SGD, lr 0.01, momentum
    # 0.5, weight decay 0.046, batch 128; meant for a GPU and a wide network.
    "paper": TrainConfig(optimizer="sgd", lr=0.01, momentum=0.5, weight_decay=0.046, batch=128,
                         epochs=100, width=32, schedule="constant"),
}


def class_weights(images: list[LabelledImage], classes: int = len(CLASS_NAMES),
                  power: float = 0.5) -> torch.Tensor:
    """Class frequencies of the masks to the power ``-power``, normalised to mean 1.

    ``power`` 0.5: inverse square root; 0: all ones (unweighted).
    """
    counts = np.zeros(classes, np.float64)
    for im in images:
        counts += np.bincount(im.mask.ravel(), minlength=classes)[:classes]
    freq = np.maximum(counts / max(counts.sum(), 1), 1e-4)
    w = freq ** -power
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean over classes of the soft Dice between softmax(logits) and one-hot target."""
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * inter + 1) / (total + 1)).mean()


def segmentation_loss(out: dict[str, torch.Tensor], mask: torch.Tensor, pattern: torch.Tensor,
                      weights: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """The training loss (see the module docstring)."""
    logits = out["pixel"]
    loss = F.cross_entropy(logits, mask.long(), weight=weights.to(logits.device))
    if config.dice_weight:
        loss = loss + config.dice_weight * soft_dice_loss(logits, mask)
    if "pattern" in out and config.pattern_weight and bool((pattern >= 0).any()):
        loss = loss + config.pattern_weight * F.cross_entropy(out["pattern"], pattern.long(), ignore_index=-1)
    return loss


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (with momentum) as the config says."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """Learning rate at global ``step`` of ``total`` (cosine decay to 2%, or constant)."""
    if config.schedule == "constant" or total <= 1:
        return config.lr
    t = min(step / total, 1.0)
    return config.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def make_batch(sampler: PatchSampler, plan: list[tuple[int, int, int]], rng: np.random.Generator,
               aug: AugmentConfig | None, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised images (B, 3, P, P), labels (B, P, P), pattern labels (B,) for ``plan``."""
    rgbs, masks, patterns = [], [], []
    for i, top, left in plan:
        rgb, mask, pattern = sampler.crop(i, top, left)
        if aug is not None:
            rgb, mask = augment(rgb, mask, rng, aug)
        rgbs.append(rgb)
        masks.append(mask)
        patterns.append(pattern)
    x = torch.from_numpy(np.stack(rgbs)).permute(0, 3, 1, 2).to(device)
    return (normalise(x), torch.from_numpy(np.stack(masks)).to(device),
            torch.tensor(patterns, dtype=torch.long, device=device))


@torch.no_grad()
def validate(model: torch.nn.Module, images: list[LabelledImage], device: str) -> dict[str, Any]:
    """Pixel metrics (pooled) and pattern accuracy of ``model`` on whole images."""
    model.eval()
    cm = np.zeros((3, 3), np.int64)
    pattern_hits = pattern_n = 0
    finite = True
    for im in images:
        x = normalise(torch.from_numpy(im.rgb).permute(2, 0, 1)[None].to(device))
        out = model(x)
        checked_output(out, x, type(model).__name__)
        finite = finite and bool(torch.isfinite(out["pixel"]).all())
        pred = out["pixel"].argmax(1)[0].cpu().numpy()
        cm += confusion_matrix(im.mask, pred, 3)
        if "pattern" in out and im.score is not None:
            pattern_hits += int(out["pattern"].argmax(1).item() == im.score)
            pattern_n += 1
    metrics = pixel_metrics(cm)
    result = {
        "dice": {name: metrics[name]["dice"] for name in CLASS_NAMES},
        "pixel_accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
        "images": len(images),
        "finite": finite,  # False: the network has diverged (argmax of NaN is no prediction)
    }
    result["mean_dice"] = float(np.nanmean([result["dice"]["membrane"], result["dice"]["nucleus"]]))
    if pattern_n:
        result["pattern_accuracy"] = pattern_hits / pattern_n
    return result


def fmt_metric(value: Any) -> str:
    """4 digits, or "n/a" for a missing/undefined value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.4f}"


def _diverged(epoch: int, config: TrainConfig, what: str) -> None:
    """Stop a diverged run: its weights are meaningless, and the checkpoints of the
    epochs before (if any) stay as they were."""
    raise Her2kitError(f"training diverged in epoch {epoch + 1}: {what}; nothing saved for this epoch; "
                       f"try a lower --lr (this run: {config.lr:g})")


def _seed_epoch(seed: int, epoch: int) -> np.random.Generator:
    torch.manual_seed(seed * 1_000_003 + epoch)
    return np.random.default_rng([seed, epoch])


def train_model(model: torch.nn.Module, train_images: list[LabelledImage], val_images: list[LabelledImage],
                config: TrainConfig, out_dir: Path, metadata: dict[str, Any], device: str = "cpu",
                resume: dict[str, Any] | None = None, aug: AugmentConfig | None = DEFAULT_AUGMENT,
                progress: bool = True) -> dict[str, Any]:
    """Train ``model`` for ``config.epochs`` epochs; writes last.* and best.* into ``out_dir``.

    ``resume``: {"epoch", "optimizer" (state dict), "best", "history"} from
    the last checkpoint. Returns the final metadata (history, best metrics).
    """
    from tqdm.auto import tqdm

    from her2kit.checkpoint import save_checkpoint, write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(device)
    sampler = PatchSampler(train_images, config.patch)
    weights = class_weights(train_images, power=config.class_weight_power)
    optimizer = make_optimizer(model, config)
    steps_per_epoch = math.ceil(len(sampler) / config.batch)
    total_steps = steps_per_epoch * config.epochs
    start_epoch, best, history = 0, -1.0, []
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        start_epoch = int(resume["epoch"]) + 1
        best = float(resume.get("best", -1.0))
        history = list(resume.get("history", []))
    val_subset = val_images[: config.max_val_images]
    meta = dict(metadata)
    meta["class_weights"] = [round(float(w), 6) for w in weights]
    meta["steps_per_epoch"] = steps_per_epoch
    for epoch in range(start_epoch, config.epochs):
        rng = _seed_epoch(config.seed, epoch)
        plan = sampler.epoch_plan(rng)
        model.train()
        started = time.time()
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not progress, leave=False, dynamic_ncols=True)
        for step in bar:
            lr = learning_rate(config, epoch * steps_per_epoch + step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            chunk = plan[step * config.batch:(step + 1) * config.batch]
            if not chunk:
                break
            x, mask, pattern = make_batch(sampler, chunk, rng, aug, device)
            out = model(x)
            checked_output(out, x, type(model).__name__)  # a plugin's wrong output: one line, not torch's
            loss = segmentation_loss(out, mask, pattern, weights, config)
            if not math.isfinite(float(loss.detach())):
                _diverged(epoch, config, f"the loss is {float(loss.detach())}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{lr:.2g}")
        bar.close()
        if not all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point()):
            # the last step's update can overflow with a finite loss: never save such weights
            _diverged(epoch, config, "the weights are no longer finite")
        val = validate(model, val_subset, device) if val_subset else {}
        if not val.pop("finite", True):
            _diverged(epoch, config, "the network's outputs on the validation images are not finite")
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else None,
                  "seconds": round(time.time() - started, 1), "val": val}
        history.append(json_safe(record))
        score = val.get("mean_dice", -float(record["loss"] or 0))
        improved = score > best
        if improved:
            best = score
        meta.update({"epoch": epoch + 1, "metrics": json_safe(val), "best": best, "history": history})
        save_checkpoint(model, meta, out_dir / "last", optimizer_state=optimizer.state_dict())
        if improved:
            save_checkpoint(model, meta, out_dir / "best")
        write_json(history, out_dir / "history.json")
        if progress:
            dice = val.get("dice", {})
            tqdm.write(f"epoch {epoch + 1}/{config.epochs}: loss {fmt_metric(record['loss'])}, "
                       f"val Dice membrane {fmt_metric(dice.get('membrane'))} nucleus {fmt_metric(dice.get('nucleus'))}"
                       f"{' (best)' if improved else ''}, {record['seconds']:.0f} s")
    return meta


def config_for(preset: str, **overrides: Any) -> TrainConfig:
    """The preset with the non-None ``overrides`` applied."""
    base = PRESETS[preset]
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def describe(config: TrainConfig) -> dict[str, Any]:
    """The config as a JSON-able dict."""
    return asdict(config)
