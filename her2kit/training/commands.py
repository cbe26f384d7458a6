"""``her2kit train``: train a model plugin on a labelled folder."""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

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


RUN_FILES = ("best.json", "best.safetensors", "last.json", "last.safetensors", "last.optim.safetensors",
             "history.json")


def _data_path(data: dict[str, Any], key: str) -> str | None:
    """The resolved folder a checkpoint's ``data`` section names (older checkpoints
    kept only the path as given; it is resolved against the current folder)."""
    if data.get(f"{key}_path"):
        return data[f"{key}_path"]
    given = data.get(key)
    if not given or given == "seeded split of --data":
        return None
    return str(Path(given).resolve())


def _check_resume(meta: dict[str, Any], last: Path, args: argparse.Namespace, data: Path,
                  train_names: list[str]) -> None:
    """A resumed run must go on with the checkpoint's network and data: otherwise
    the weights and the recorded settings would describe different things."""
    width = meta["options"].get("width")
    if args.width is not None and width is not None and args.width != width:
        raise InputError(last, f"--width {args.width} differs from the checkpoint's width {width}; "
                               "a resumed run keeps its network (leave --width out, or start a new --out)")
    recorded = meta.get("data", {})
    ck_train = _data_path(recorded, "train")
    if ck_train is not None and ck_train != str(data.resolve()):
        raise InputError(last, f"--data {data} differs from the checkpoint's training data {ck_train}")
    ck_val = _data_path(recorded, "val")
    val = str(Path(args.val_data).resolve()) if args.val_data else None
    if "val" in recorded and ck_val != val:
        raise InputError(last, f"--val-data {args.val_data or '(none: a split of --data)'} differs from the "
                               f"checkpoint's {ck_val or 'seeded split of --data'}")
    train_meta = meta.get("train", {})
    if train_meta.get("seed") is not None and args.seed != train_meta["seed"]:
        raise InputError(last, f"--seed {args.seed} differs from the run's {train_meta['seed']}; "
                               "a resumed run keeps its seed")
    for option, key, given in (("--preset", "preset", args.preset), ("--lr", "lr", args.lr),
                               ("--batch", "batch", args.batch), ("--patch", "patch", args.patch)):
        before = train_meta.get(key)
        if given is not None and before is not None and given != before:
            raise InputError(last, f"{option} {given} differs from the run's {before}; a resumed run keeps "
                                   f"its settings (leave {option} out, or start a new --out)")
    ck_names = recorded.get("train_images")
    if ck_names is not None and list(ck_names) != train_names:
        raise InputError(last, "the training images differ from the checkpoint's: --seed and --fraction "
                               f"must stay as they were ({recorded.get('seed')} and "
                               f"{meta.get('train', {}).get('fraction')})")


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
    from her2kit.inference import DEFAULT_MPP, DEFAULT_NORMALISATION, check_device
    from her2kit.training.augment import AugmentConfig
    from her2kit.training.dataset import index_rows, load_folder, split, subset
    from her2kit.training.loop import TrainConfig, config_for, describe, fmt_metric, train_model
    from her2kit.training.options import check_out_folder, check_train_options

    # every option is checked before any work
    check_train_options(args)
    data = Path(args.data)
    out = check_out_folder(args.out)
    force = args.force
    earlier = [name for name in ("best.json", "last.json") if (out / name).is_file()]
    if earlier and not args.resume and not force:
        raise Her2kitError(f"--out {out}: already holds a run ({', '.join(earlier)}); "
                           "use --resume to continue it or --force to replace it")
    device = check_device(args.device)
    takes_width = _takes_width(args.model)  # an unknown --model fails here, before any work
    if args.width is not None and not takes_width:
        raise Her2kitError(f"--width: model {args.model!r} takes no width option")
    preset = args.preset or "default"
    config = config_for(preset, epochs=args.epochs, width=args.width, batch=args.batch, lr=args.lr,
                        patch=args.patch, seed=args.seed)

    rows = index_rows(data)
    if len(rows) == 1 and not args.val_data:
        raise InputError(data, "holds one labelled image: none is left to validate on (the same image "
                               "would be both); give --val-data with held-out images")
    if args.val_data:
        train_idx, val_rows = list(range(len(rows))), index_rows(args.val_data)
        val_names = [Path(r["image"]).stem for r in val_rows]
    else:
        train_idx, val_idx = split(len(rows), args.seed)
        val_rows = [rows[i] for i in val_idx]
        val_names = [Path(r["image"]).stem for r in val_rows]
    train_idx = subset(train_idx, args.fraction, args.seed)
    train_rows = [rows[i] for i in train_idx]
    train_names = [Path(r["image"]).stem for r in train_rows]

    meta = last = None
    if args.resume:
        last = out / "last.json"
        if not last.is_file():
            raise InputError(last, "nothing to resume (no last checkpoint in --out)")
        meta = read_metadata(last)
        if meta["architecture"] != args.model:
            raise InputError(last, f"checkpoint is {meta['architecture']!r}, not {args.model!r}")
        _check_resume(meta, last, args, data, train_names)
        # the run's own settings go on (only --epochs may grow); QA: --lr/--batch/--patch
        # given on --resume were recorded for the whole run while the old schedule ran
        recorded = {k: v for k, v in meta.get("train", {}).items() if k in TrainConfig.__dataclass_fields__}
        if args.epochs is not None:
            recorded["epochs"] = args.epochs
        config = replace(config, **recorded)
        preset = meta.get("train", {}).get("preset", preset)  # the run's, recorded again
        if "width" in meta["options"]:  # the checkpoint's width, not the preset's, is what runs
            config = replace(config, width=int(meta["options"]["width"]))
        if int(meta["epoch"]) >= config.epochs:
            print(f"her2kit train: {last} already has {meta['epoch']} of {config.epochs} epochs; nothing to do",
                  file=sys.stderr)
            return 0

    # validating on training images gives no held-out result: say so, and record it
    overlap = 0
    if args.val_data and Path(args.val_data).resolve() == data.resolve():
        overlap = len(set(val_names) & set(train_names))
        if overlap:
            print(f"her2kit: warning: --val-data {args.val_data} is the training folder: {overlap} of "
                  f"{len(val_names)} validation images are training images, so the validation Dice is "
                  "not a held-out result", file=sys.stderr)

    print(f"her2kit train: {args.model}{f' width {config.width}' if takes_width else ''} on {len(train_rows)} training and "
          f"{len(val_rows)} validation images ({data}); preset {preset}, device {device}",
          file=sys.stderr)
    train_images = load_folder(data, train_rows)
    val_images = load_folder(args.val_data or data, val_rows)
    mpps = {im.mpp for im in train_images if im.mpp}
    if len(mpps) > 1:
        raise InputError(data, f"images at several resolutions ({sorted(mpps)} um/px); resample them to one")
    val_mpps = {im.mpp for im in val_images if im.mpp} - mpps
    if mpps and val_mpps:  # QA: validation images at 2 um/px were used among 0.5 um/px training ones
        raise InputError(args.val_data or data, f"validation images at {sorted(val_mpps)} um/px, training "
                                                f"images at {sorted(mpps)}; resample them to one")
    mpp = mpps.pop() if mpps else DEFAULT_MPP

    options = {"width": config.width} if takes_width else {}
    resume_state = None
    if meta is not None:
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
        "train": {**describe(config), "preset": preset, "fraction": args.fraction,
                  "loss": (f"cross-entropy (class weights = frequency ** -{config.class_weight_power}) "
                           f"+ {config.dice_weight} x soft Dice (+ {config.pattern_weight} x pattern cross-entropy)"),
                  "augment": aug.describe()},
        "data": {
            "train": str(data), "val": str(args.val_data) if args.val_data else "seeded split of --data",
            # resolved paths: image names such as 0000 repeat across data sets
            "train_path": str(data.resolve()),
            "val_path": str(Path(args.val_data).resolve()) if args.val_data else None,
            "seed": args.seed, "n_train": len(train_images), "n_val": len(val_images),
            "train_images": [im.name for im in train_images], "val_images": val_names,
            "val_overlaps_training": overlap,
            "synth": _synth_manifest(data),
        },
        "command": _command_line(),
        "her2kit_version": __version__,
        "torch_version": torch.__version__,
        "host": platform.machine(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if force and not args.resume:
        # --force: the earlier run goes only now, once the new one is ready to start,
        # so that no stale best.* outlives it
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    try:
        meta = train_model(model, train_images, val_images, config, out, metadata, device=device,
                           resume=resume_state, aug=aug)
    except (MemoryError, torch.OutOfMemoryError) as exc:
        raise Her2kitError(f"out of memory ({type(exc).__name__}) at --patch {config.patch}, --batch "
                           f"{config.batch}, --width {config.width}; use smaller values") from None
    val = meta.get("metrics", {}).get("dice", {})
    print(f"her2kit train: done; best mean Dice {fmt_metric(meta.get('best'))}; last epoch Dice "
          f"membrane {fmt_metric(val.get('membrane'))}, nucleus {fmt_metric(val.get('nucleus'))}; checkpoints in "
          f"{out}/best.json, {out}/last.json", file=sys.stderr)
    return 0


def _takes_width(model: str) -> bool:
    """Whether model plugin ``model``'s factory has a ``width`` option (a user's
    own network may have none: QA, train passed width= to it regardless)."""
    import inspect

    from her2kit.plugins import registry

    factory = registry().get("model", model).factory
    resolve = getattr(factory, "resolve", None)  # hookspecs.lazy: look at what it will call
    if callable(resolve):
        try:
            factory = resolve()
        except Exception:
            return True  # build_model will say what is wrong
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "width" or p.kind is p.VAR_KEYWORD for p in params)
