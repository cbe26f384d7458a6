"""The ``her2kit`` command line.

Start-up stays fast: each verb's implementation is imported only when that
verb runs. Expected failures (:class:`Her2kitError`) print one line and exit
with status 1; set ``HER2KIT_DEBUG=1`` to see tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable

from her2kit import __version__
from her2kit.errors import Her2kitError

# verb -> "module:function"; the function takes the parsed namespace and
# returns an exit status.
COMMANDS = {
    "plugins": "her2kit.cli:cmd_plugins",
    "synth images": "her2kit.synth.commands:images",
    "synth slide": "her2kit.synth.commands:slide",
    "train": "her2kit.training.commands:train",
    "evaluate": "her2kit.evaluation.commands:evaluate",
    "score": "her2kit.scoring.commands:score",
    "segment": "her2kit.scoring.commands:segment",
    "bench": "her2kit.bench:main",
    "demo": "her2kit.scoring.commands:demo",
}

# The issue that brings a verb, named when its module is not there yet.
PENDING = {
    "synth images": 3, "synth slide": 3, "train": 5, "evaluate": 5,
    "score": 6, "segment": 7, "bench": 4, "demo": 6,
}


def _add_inference_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or slide files (Zarr stores also as URLs)")
    p.add_argument("--out", required=True, help="output folder; one sub-folder per input")
    p.add_argument("--model", default=None, help="model name or checkpoint path (default: shipped Her2Net)")
    p.add_argument("--mpp", type=float, default=None,
                   help="microns per pixel of inputs that carry none (or one no scan has, e.g. a JPEG at 2540 dpi)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument("--scheduler", default=None, help="address of an existing dask.distributed scheduler")
    p.add_argument("--force", action="store_true", help="redo inputs whose outputs are complete")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="her2kit",
        description="HER2 IHC scoring: segment membranes and nuclei, classify cells, score 0/1+/2+/3+.",
    )
    parser.add_argument("--version", action="version", version=f"her2kit {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")

    p = sub.add_parser("plugins", help="list readers, preprocessors, models and scorers")
    p.add_argument("--json", action="store_true", help="machine-readable list")

    p = sub.add_parser("synth", help="make synthetic HER2 IHC data with exact ground truth")
    synth = p.add_subparsers(dest="synth_verb", metavar="WHAT")
    q = synth.add_parser("images", help="a folder of labelled image patches")
    q.add_argument("out", metavar="OUT")
    q.add_argument("--n", type=int, default=16, help="number of images")
    q.add_argument("--size", type=int, default=512, help="image side in pixels")
    q.add_argument("--seed", type=int, default=0, help="random seed (same seed, same images)")
    q.add_argument("--domain", choices=["default", "shifted"], default="default",
                   help="shifted: denser, blurrier tissue with other stain strengths (a test of robustness)")
    q.add_argument("--mpp", type=float, default=0.5, help="microns per pixel (default 0.5)")
    q.add_argument("--score", default=None, help="one score for all images (default: balanced mix)")
    q.add_argument("--jpeg", action="store_true", help="add JPEG artefacts")
    q.add_argument("--force", action="store_true", help="replace an existing data set in OUT")
    q = synth.add_parser("slide", help="an OME-Zarr whole-slide image with labels")
    q.add_argument("out", metavar="OUT.zarr")
    q.add_argument("--size", required=True, help="HxW in pixels, e.g. 8192x8192")
    q.add_argument("--score", required=True, help="0, 1+, 2+ or 3+")
    q.add_argument("--seed", type=int, default=0, help="random seed (same seed, same slide)")
    q.add_argument("--domain", choices=["default", "shifted"], default="default",
                   help="shifted: denser, blurrier tissue with other stain strengths")
    q.add_argument("--mpp", type=float, default=0.5, help="microns per pixel (default 0.5)")
    q.add_argument("--tissue", type=float, default=1.0, help="fraction of the slide covered by tissue")
    q.add_argument("--chunk", type=int, default=1024, help="block side in pixels")
    q.add_argument("--tiff", default=None, metavar="FILE.ome.tif", help="also write a tiled pyramidal OME-TIFF")
    q.add_argument("--force", action="store_true", help="replace an existing OUT.zarr (and --tiff file)")

    p = sub.add_parser("train", help="train a model on a labelled folder")
    p.add_argument("--data", required=True, help="folder laid out like `her2kit synth images` output")
    p.add_argument("--model", default="her2net", help="model plugin name (default her2net)")
    p.add_argument("--out", required=True, help="output folder for checkpoints")
    p.add_argument("--preset", choices=["default", "paper"], default=None,
                   help="hyper-parameters: default (CPU-sized, the default) or the paper's (docs/models.md)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the preset's)")
    p.add_argument("--width", type=int, default=None, help="channel width of the network")
    p.add_argument("--batch", type=int, default=None, help="patches per step (default: the preset's)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the preset's)")
    p.add_argument("--patch", type=int, default=None, help="square training patch side in pixels (default 251)")
    p.add_argument("--val-data", default=None, help="validation folder (default: a split of --data)")
    p.add_argument("--fraction", type=float, default=1.0, help="use this fraction of the training images")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, patches and weights (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    p.add_argument("--force", action="store_true", help="replace a run already in --out")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")

    p = sub.add_parser("evaluate", help="evaluate models on a labelled folder")
    p.add_argument("--data", required=True, help="labelled folder laid out like `her2kit synth images` output")
    p.add_argument("--model", required=True, action="append", help="model name or checkpoint path (repeatable)")
    p.add_argument("--out", required=True, help="folder for metrics.json, tables and ROC curves")
    p.add_argument("--force", action="store_true", help="replace an earlier evaluation in --out")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")

    p = sub.add_parser("score", help="score images or whole-slide images")
    _add_inference_options(p)
    p.add_argument("--roi", default=None, help="GeoJSON polygon(s): only cells inside count")
    p.add_argument("--scorer", default="asco-cap-2018", help="scorer plugin name")

    p = sub.add_parser("segment", help="segment images or slides; writes labels.zarr only")
    _add_inference_options(p)
    p.add_argument("--classes-only", action="store_true",
                   help="the network's membrane/nucleus classes alone: no cell finding (labels/cells "
                        "stays empty); the pipeline at the network's own speed")

    p = sub.add_parser("bench", help="benchmark the native kernels against the reference")
    p.add_argument("--quick", action="store_true", help="fewer repeats and a smaller matmul reference")
    p.add_argument("--out", required=True, metavar="FILE.json", help="where to write the records")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")

    p = sub.add_parser("demo", help="make a small synthetic case and score it")
    p.add_argument("--out", default="her2kit-demo", help="output folder (default her2kit-demo)")
    return parser


def cmd_plugins(args: argparse.Namespace) -> int:
    from her2kit.plugins import registry

    entries, conflicts = registry().list_all()  # a clash is shown, not hidden behind its error
    if args.json:
        rows = [{"kind": e.kind, "name": e.name, "origin": e.origin,
                 "description": e.record.description} for e in entries]
        print(json.dumps(rows, indent=2))
    else:
        width = max((len(e.name) for e in entries), default=4)
        for kind in ("reader", "preprocessor", "model", "scorer"):
            print(f"{kind}s:")
            for e in (e for e in entries if e.kind == kind):
                print(f"  {e.name:<{width}}  [{e.origin}]  {e.record.description}")
    for message in conflicts:
        print(f"her2kit: error: {message}", file=sys.stderr)
    return 1 if conflicts else 0


def _resolve(verb: str):
    module_name, _, function = COMMANDS[verb].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise Her2kitError(
                f"`her2kit {verb}` is not available in this build yet (issue {PENDING.get(verb, '?')})"
            ) from None
        raise
    return getattr(module, function)


def _one_line_warnings() -> None:
    """Warnings (a plugin that failed to load, a library's notice) as one line on
    stderr, without the source line Python shows under them."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        print(f"her2kit: warning: {text}" if category.__name__ == "PluginWarning"
              else f"her2kit: warning: {category.__name__}: {text}", file=file or sys.stderr)

    warnings.showwarning = show


class Terminated(KeyboardInterrupt):
    """SIGTERM, as a batch system or ``kill`` stops a run."""


def _stop_on_sigterm() -> None:
    """End on SIGTERM as on Ctrl-C: the ``finally`` blocks run (a local cluster is
    closed, finished blocks stay for the resume) and one line is printed, rather
    than Python dying with the workers' tracebacks and leaked semaphores."""
    import signal
    import threading

    def stop(signum, frame):
        raise Terminated()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def _close_progress_bars() -> None:
    """Bars a stopped run left open end their line first, so the one-line
    message that follows starts a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or ()):
        try:
            bar.close()
        except Exception:  # a bar half torn down by the stop: its line is the least of it
            pass


def _passive_openmp() -> None:
    """In-process score/segment: the network and cell finding share the cores, so
    torch's OpenMP threads should sleep, not spin, while they wait for work.

    Measured on a quiet 2-core machine (16 blocks of 512 px, shipped Her2Net):
    torch at 2 threads beside the cell-finding thread took 5.13 s with passive
    waiting against 6.1-6.2 s with torch at 1 thread (what
    :func:`her2kit.wsi.worker._spare_a_core` does otherwise) and 6.2-6.3 s at
    2 threads spinning. Must be set before torch is imported; a value the
    user set is kept.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 2
    verb = args.verb
    if verb == "synth":
        if args.synth_verb is None:  # its help, and the status of a usage error
            try:
                parser.parse_args(["synth", "--help"])
            except SystemExit:
                return 2
        verb = f"synth {args.synth_verb}"
    def run() -> int:
        if verb in ("score", "segment"):  # one local cluster / scheduler client for all inputs
            from her2kit.wsi.cluster import reuse_freed_memory, shared_executors

            if (args.workers or 1) <= 1 and not args.scheduler:
                _passive_openmp()
                reuse_freed_memory()

            with shared_executors():
                return int(_resolve(verb)(args) or 0)
        return int(_resolve(verb)(args) or 0)

    return guarded(run)


def guarded(run: Callable[[], int | None]) -> int:
    """Run a command as the CLI does: a her2kit error is one line and status 1,
    SIGTERM 143, Ctrl-C 130, anything else one "internal error" line and 3
    (the ``python -m her2kit.…`` tools use it too)."""
    _stop_on_sigterm()
    _one_line_warnings()
    try:
        return int(run() or 0)
    except Her2kitError as exc:
        _close_progress_bars()
        print(f"her2kit: error: {exc}", file=sys.stderr)
        return 1
    except Terminated:
        _close_progress_bars()
        print("her2kit: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        _close_progress_bars()
        print("her2kit: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("HER2KIT_DEBUG"):
            raise
        _close_progress_bars()
        print(f"her2kit: internal error: {type(exc).__name__}: {exc} "
              "(set HER2KIT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
