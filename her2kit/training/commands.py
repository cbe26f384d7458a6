"""``her2kit train``: train a model plugin on a labelled folder."""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

from her2kit.errors import Her2kitError, InputError

CHECKPOINT_CLASSES = ["background", "membrane", "nucleus"]
CHECKPOINT_PATTERNS = ["0", "1+", "2+", "3+"]


def _command_line() -> str:
    argv = sys.argv[1:] if sys.argv and Path(sys.argv[0]).name in ("her2kit", "__main__.py", "cli.py") else None
    return shlex.join(["her2kit", *argv]) if argv else ""


def _synth_manifest(folder: Path) -> dict | None:
    import json

    for name in ("synth.json", "meta.json", "manifest.json"):
        p = folder / name
        if p.is_file():
            try:
                return json.loads(p.read_text())
            except ValueError:
                return None
    return None


def train(args: argparse.Namespace) -> int:
    """Train ``args.model`` on ``args.data``; checkpoints go to ``args.out`` (best.*, last.*)."""
    import torch

    from her2kit import __version__
    from her2kit.checkpoint import (
        build_model,
        checkpoint_paths,
        load_tensors,
        read_metadata,
        unflatten_optimizer_state,
    )
    from her2kit.inference import DEFAULT_MPP, DEFAULT_NORMALISATION, default_device
    from her2kit.training.augment import AugmentConfig
    from her2kit.training.dataset import index_rows, load_folder, split, subset
    from her2kit.training.loop import config_for, describe, train_model

    data = Path(args.data)
    out = Path(args.out)
    device = args.device or default_device()
    if not 0 < args.fraction <= 1:
        raise Her2kitError(f"--fraction must be in (0, 1], got {args.fraction}")
    if args.patch < 16:
        raise Her2kitError(f"--patch must be at least 16 pixels, got {args.patch}")
    config = config_for(args.preset, epochs=args.epochs, width=args.width, batch=args.batch, lr=args.lr,
                        patch=args.patch, seed=args.seed)

    rows = index_rows(data)
    if args.val_data:
        train_idx, val_rows = list(range(len(rows))), index_rows(args.val_data)
        val_names = [Path(r["image"]).stem for r in val_rows]
    else:
        train_idx, val_idx = split(len(rows), args.seed)
        val_rows = [rows[i] for i in val_idx]
        val_names = [Path(r["image"]).stem for r in val_rows]
    train_idx = subset(train_idx, args.fraction, args.seed)
    train_rows = [rows[i] for i in train_idx]
    print(f"her2kit train: {args.model} width {config.width} on {len(train_rows)} training and "
          f"{len(val_rows)} validation images ({data}); preset {args.preset}, device {device}",
          file=sys.stderr)
    train_images = load_folder(data, train_rows)
    val_images = load_folder(args.val_data or data, val_rows)
    mpps = {im.mpp for im in train_images if im.mpp}
    if len(mpps) > 1:
        raise InputError(data, f"images at several resolutions ({sorted(mpps)} um/px); resample them to one")
    mpp = mpps.pop() if mpps else DEFAULT_MPP

    options = {"width": config.width}
    resume_state = None
    if args.resume:
        last = out / "last.json"
        if not last.is_file():
            raise InputError(last, "nothing to resume (no last checkpoint in --out)")
        meta = read_metadata(last)
        if meta["architecture"] != args.model:
            raise InputError(last, f"checkpoint is {meta['architecture']!r}, not {args.model!r}")
        options = meta["options"]
        weights, _ = checkpoint_paths(last)
        optim_file = out / "last.optim.safetensors"
        if not optim_file.is_file():
            raise InputError(optim_file, "optimizer state missing; cannot resume")
        model = build_model(args.model, options)
        model.load_state_dict(load_tensors(weights))
        resume_state = {
            "epoch": int(meta["epoch"]) - 1,
            "optimizer": unflatten_optimizer_state(load_tensors(optim_file), meta["optimizer"]),
            "best": meta.get("best", -1.0),
            "history": meta.get("history", []),
        }
        if resume_state["epoch"] + 1 >= config.epochs:
            print(f"her2kit train: {last} already has {meta['epoch']} of {config.epochs} epochs; nothing to do",
                  file=sys.stderr)
            return 0
    else:
        torch.manual_seed(args.seed)
        model = build_model(args.model, options)
    aug = AugmentConfig()
    metadata = {
        "name": args.model,
        "architecture": args.model,
        "options": dict(getattr(model, "options", options)),
        "classes": CHECKPOINT_CLASSES,
        "patterns": CHECKPOINT_PATTERNS if hasattr(model, "pattern") else None,
        "mpp": mpp,
        "normalisation": DEFAULT_NORMALISATION,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "train": {**describe(config), "preset": args.preset, "fraction": args.fraction,
                  "loss": (f"cross-entropy (class weights = frequency ** -{config.class_weight_power}) "
                           f"+ {config.dice_weight} x soft Dice (+ {config.pattern_weight} x pattern cross-entropy)"),
                  "augment": aug.describe()},
        "data": {
            "train": str(data), "val": str(args.val_data) if args.val_data else "seeded split of --data",
            "seed": args.seed, "n_train": len(train_images), "n_val": len(val_images),
            "train_images": [im.name for im in train_images], "val_images": val_names,
            "synth": _synth_manifest(data),
        },
        "command": _command_line(),
        "her2kit_version": __version__,
        "torch_version": torch.__version__,
        "host": platform.machine(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    meta = train_model(model, train_images, val_images, config, out, metadata, device=device,
                       resume=resume_state, aug=aug)
    val = meta.get("metrics", {}).get("dice", {})
    print(f"her2kit train: done; best mean Dice {meta.get('best', float('nan')):.4f}; last epoch Dice "
          f"membrane {val.get('membrane')}, nucleus {val.get('nucleus')}; checkpoints in {out}/best.json, "
          f"{out}/last.json", file=sys.stderr)
    return 0
