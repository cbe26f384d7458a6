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
run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PAPER_MODELS = ("her2net", "unet", "segnet", "bayesian-segnet")
ABLATIONS = ("her2net-no-tlstm", "her2net-no-spp")


def _run(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


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
    out = Path(args.out)
    her2kit = [sys.executable, "-m", "her2kit"]
    budget = ["--epochs", str(args.epochs), "--width", str(args.width), "--patch", str(args.patch),
              "--batch", str(args.batch), "--seed", str(args.seed)]
    runs: dict[str, tuple[str, float, Path]] = {}  # name -> (model plugin, fraction, run folder)
    for model in args.models:
        runs[model] = (model, 1.0, out / "runs" / model)
    for f in args.fractions:
        name = f"her2net-{round(f * 100)}pct"
        runs[name] = ("her2net", f, out / "runs" / name)
    for model, fraction, run in runs.values():
        last = run / "last.json"
        if last.is_file() and json.loads(last.read_text()).get("epoch") == args.epochs:
            continue
        resume = ["--resume"] if last.is_file() else []
        _run([*her2kit, "train", "--data", args.train, "--model", model, "--out", str(run), *budget,
              "--fraction", str(fraction), *resume])
    for test in args.test:
        ev = out / f"eval-{Path(test).name}"
        if (ev / "metrics.json").is_file():
            continue
        cmd = [*her2kit, "evaluate", "--data", test, "--out", str(ev)]
        for _, _, run in runs.values():
            cmd += ["--model", str(run / "last.json")]
        _run(cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
