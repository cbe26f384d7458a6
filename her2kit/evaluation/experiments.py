"""The paper's experiments under one budget: four models, ablations, training fractions.

Runs ``her2kit train`` for each requested model (same data, seed, epochs,
width, patch and batch: the same budget) and then one ``her2kit evaluate``
over all of them, so the comparison table (the paper's Table VI), the
per-score-group table (Table IV), ROC curves and Bayesian SegNet's
uncertainty come out of the same run. ``--fractions`` adds Her2Net runs on
25/50/75% of the training images (Table III), evaluated the same way.

    python -m her2kit.evaluation.experiments --train DIR --test DIR --out DIR \\
        [--models her2net unet segnet bayesian-segnet her2net-no-tlstm her2net-no-spp] \\
        [--fractions 0.25 0.5 0.75] [--epochs 3] [--width 8] [--patch 128] [--batch 8]

Each step is skipped when its output is already there, so an interrupted
run continues where it stopped. ``--out/experiments.json`` records the
settings: a rerun with other training data or budget is refused (its runs
would be mixed with the old ones; use another --out), added models or
fractions are trained, and an evaluation is redone when the set of models
changed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from her2kit.errors import Her2kitError

PAPER_MODELS = ("her2net", "unet", "segnet", "bayesian-segnet")
ABLATIONS = ("her2net-no-tlstm", "her2net-no-spp")


def _run(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    done = subprocess.run(cmd)
    if done.returncode != 0:  # the step has said why on stderr
        raise Her2kitError(f"step failed (exit status {done.returncode}): {' '.join(cmd[2:5])} ...")


def _check(args: argparse.Namespace) -> None:
    """Everything that can be checked before hours of training."""
    from her2kit.plugins import registry

    if args.epochs < 1 or args.width < 1 or args.batch < 1 or args.patch < 16:
        raise Her2kitError("--epochs, --width and --batch must be >= 1 and --patch >= 16")
    for f in args.fractions:
        if not 0 < f < 1:
            raise Her2kitError(f"--fractions {f}: give fractions between 0 and 1 (1 is the full run)")
    from her2kit.training.commands import _takes_width

    for m in [*args.models, *(["her2net"] if args.fractions else [])]:
        registry().get("model", m)  # unknown: one line listing the known ones
        if not _takes_width(m):  # every run gets --width (the same budget)
            raise Her2kitError(f"--models {m}: takes no width option, and every run here is given --width")
    for d in (args.train, *args.test):
        if not Path(d).is_dir():
            raise Her2kitError(f"{d}: not a folder")
    names = [Path(t).name for t in args.test]
    if len(set(names)) != len(names):  # QA: a/test and b/test shared eval-test
        raise Her2kitError(f"--test folders with one name ({', '.join(names)}): their evaluations would share "
                           "a folder; rename one")


def _settings(args: argparse.Namespace) -> dict:
    return {"train": str(Path(args.train).resolve()), "epochs": args.epochs, "width": args.width,
            "patch": args.patch, "batch": args.batch, "seed": args.seed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True, action="append", help="evaluation folder (repeatable)")
    p.add_argument("--out", required=True)
    p.add_argument("--models", nargs="*", default=[*PAPER_MODELS, *ABLATIONS])
    p.add_argument("--fractions", nargs="*", type=float, default=[])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    _check(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "experiments.json"
    settings = _settings(args)
    earlier = json.loads(manifest.read_text()) if manifest.is_file() else None
    if earlier is None and (out / "runs").is_dir():
        raise Her2kitError(f"--out {out}: holds runs without experiments.json (settings unknown); use another --out")
    if earlier is not None and earlier.get("settings") != settings:
        differ = [k for k in settings if earlier.get("settings", {}).get(k) != settings[k]]
        raise Her2kitError(f"--out {out}: its runs were made with other settings ({', '.join(differ)}); "
                           "use another --out (QA: they were reused as if the same)")
    evaluated = (earlier or {}).get("evaluated", {})
    her2kit = [sys.executable, "-m", "her2kit"]
    budget = ["--epochs", str(args.epochs), "--width", str(args.width), "--patch", str(args.patch),
              "--batch", str(args.batch), "--seed", str(args.seed)]
    runs: dict[str, tuple[str, float, Path]] = {}  # name -> (model plugin, fraction, run folder)
    for model in args.models:
        runs[model] = (model, 1.0, out / "runs" / model)
    for f in args.fractions:
        name = f"her2net-{f * 100:g}pct"  # 25 and 25.1 apart
        runs[name] = ("her2net", f, out / "runs" / name)

    def record() -> None:
        manifest.write_text(json.dumps({"settings": settings, "evaluated": evaluated}, indent=1) + "\n")

    record()
    for model, fraction, run in runs.values():
        last = run / "last.json"
        if last.is_file() and json.loads(last.read_text()).get("epoch") == args.epochs:
            continue
        resume = ["--resume"] if last.is_file() else []
        _run([*her2kit, "train", "--data", args.train, "--model", model, "--out", str(run), *budget,
              "--fraction", str(fraction), *resume])
    for test in args.test:
        ev = out / f"eval-{Path(test).name}"
        models = [str(run / "last.json") for _, _, run in runs.values()]
        what = {"test": str(Path(test).resolve()), "models": models}
        if (ev / "metrics.json").is_file() and evaluated.get(ev.name) == what:
            continue  # (keyed by the folder: another --test of that name is redone, not taken for it)
        cmd = [*her2kit, "evaluate", "--data", test, "--out", str(ev)]
        for m in models:
            cmd += ["--model", m]
        if (ev / "metrics.json").is_file():
            cmd.append("--force")  # the set of models changed (QA: the old table was kept)
        _run(cmd)
        evaluated[ev.name] = what
        record()
    return 0


if __name__ == "__main__":
    from her2kit.cli import guarded

    sys.exit(guarded(main))
