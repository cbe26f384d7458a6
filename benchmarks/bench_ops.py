"""Benchmark the native TLSTM and SPP ops against the plain-PyTorch reference.

Same as ``her2kit bench``; kept here so the benchmarks folder is self-describing:

    python benchmarks/bench_ops.py --out bench.json [--quick] [--device cuda]

Prints a table and writes the JSON records described in her2kit/bench.py
(and docs in benchmarks/README.md). Never run inside the test suite.
"""

from __future__ import annotations

import argparse
import sys

from her2kit.bench import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--out", required=True, metavar="FILE.json")
    parser.add_argument("--device", default=None, help="torch device (default cpu)")
    sys.exit(main(parser.parse_args()))
