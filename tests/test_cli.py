"""The command line's contract: verbs, one-line errors, exit codes."""

import subprocess
import sys

import pytest

from her2kit import cli
from her2kit.errors import Her2kitError, InputError


def test_every_design_verb_is_wired():
    parser = cli.build_parser()
    for argv in (["plugins", "--json"], ["synth", "images", "o", "--n", "1", "--size", "8", "--seed", "0"],
                 ["synth", "slide", "o.zarr", "--size", "8x8", "--score", "0", "--seed", "0"],
                 ["train", "--data", "d", "--model", "her2net", "--out", "o"],
                 ["evaluate", "--data", "d", "--model", "her2net", "--out", "o"],
                 ["score", "a.png", "--out", "o", "--mpp", "0.5", "--workers", "2", "--roi", "r.geojson"],
                 ["segment", "a.png", "--out", "o", "--scheduler", "tcp://x:1"],
                 ["bench", "--quick", "--out", "b.json"], ["demo"]):
        args = parser.parse_args(argv)
        verb = args.verb if args.verb != "synth" else f"synth {args.synth_verb}"
        assert verb in cli.COMMANDS


def test_expected_error_is_one_line_and_status_1(monkeypatch, capsys):
    def boom(args):
        raise InputError("/data/slide.svs", "truncated file")

    monkeypatch.setattr(cli, "_resolve", lambda verb: boom)
    assert cli.main(["demo"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "her2kit: error: /data/slide.svs: truncated file"


def test_a_stopped_run_message_starts_its_own_line(monkeypatch, capsys):
    """QA: `her2kit: terminated` was printed on the end of the progress bar's line."""
    from tqdm import tqdm

    def stopped(args):
        bar = tqdm(total=10, desc="synth slide")
        bar.update(3)
        raise cli.Terminated()

    monkeypatch.setattr(cli, "_resolve", lambda verb: stopped)
    assert cli.main(["demo"]) == 143
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert "synth slide" in "".join(lines) and lines[-1] == "her2kit: terminated"


def test_unexpected_error_has_no_traceback(monkeypatch, capsys):
    def boom(args):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(cli, "_resolve", lambda verb: boom)
    monkeypatch.delenv("HER2KIT_DEBUG", raising=False)
    assert cli.main(["demo"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and "ZeroDivisionError" in err


def test_missing_module_names_the_issue(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "demo", "her2kit.not_a_module_yet:demo")
    with pytest.raises(Her2kitError, match="issue 6"):
        cli._resolve("demo")


def test_usage_error_exits_2():
    r = subprocess.run([sys.executable, "-m", "her2kit", "score"], capture_output=True, text=True)
    assert r.returncode == 2 and "--out" in r.stderr


def test_demo_end_to_end(tmp_path):
    """The README's main command: a synthetic 2+ case scored with the shipped model."""
    import json

    r = subprocess.run([sys.executable, "-m", "her2kit", "demo", "--out", str(tmp_path / "d")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (case,) = [p for p in (tmp_path / "d").iterdir() if p.is_dir()]
    for name in ("score.json", "cells.csv", "cells.geojson", "labels.zarr", "overlay.png", "report.html"):
        assert (case / name).exists(), name
    score = json.loads((case / "score.json").read_text())
    assert score["score"] == "2+" and score["model"] == "her2net" and score["cells_total"] > 100
    assert abs(sum(score["percent"].values()) - 100) < 1e-6


def test_bad_out_paths_are_refused_before_the_work(tmp_path):
    """QA: `bench --out FOLDER` failed after minutes of measuring; `demo --out FILE`
    was an internal error; `synth` without WHAT exited 0."""
    def cli_run(*argv):
        return subprocess.run([sys.executable, "-m", "her2kit", *map(str, argv)], capture_output=True,
                              text=True, timeout=60)

    p = cli_run("bench", "--quick", "--out", tmp_path)
    assert p.returncode == 1 and p.stderr.startswith("her2kit: error: --out") and "is a folder" in p.stderr
    f = tmp_path / "file"
    f.write_text("x")
    p = cli_run("demo", "--out", f)
    assert p.returncode == 1 and "is a file, not a folder" in p.stderr and "Traceback" not in p.stderr
    assert f.read_text() == "x"
    assert cli_run("synth").returncode == 2


def test_bench_json_is_readable_by_others(tmp_path):
    import os

    from her2kit.bench import write_json

    old = os.umask(0o022)
    try:
        write_json([{"name": "x"}], str(tmp_path / "b.json"))
    finally:
        os.umask(old)
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o644


def test_score_device_and_out_checked_before_the_work(tmp_path):
    """QA: --device cuda on a machine without one, or bogus, was an internal
    error after the model loaded; --out "" wrote into the working directory."""
    import torch

    def score(*argv):
        return subprocess.run([sys.executable, "-m", "her2kit", "score", str(tmp_path / "none.png"), *argv],
                              capture_output=True, text=True, timeout=120)

    bad = ["bogus"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in bad:
        p = score("--out", str(tmp_path / "o"), "--device", device)
        assert p.returncode == 1 and p.stderr.startswith(f"her2kit: error: --device '{device}'"), p.stderr
        assert "internal error" not in p.stderr
    p = score("--out", "")
    assert p.returncode == 1 and "--out: give a folder name" in p.stderr
