"""The threshold tools, `python -m her2kit.scoring.validate` and `...calibrate`:
bad input is one line before any work, and a check on fitting data says so."""

from __future__ import annotations

import json

import pytest

from her2kit.cli import guarded, main
from her2kit.scoring import calibrate, validate


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("v") / "syn"
    assert main(["synth", "images", str(d), "--n", "2", "--size", "96", "--seed", "3"]) == 0
    return d


def _run(capsys, module, *argv):
    rc = guarded(lambda: module.main(list(argv)))
    return rc, capsys.readouterr()


@pytest.mark.parametrize("content,said", [
    ("{bad", "not a CellParams JSON"), ('{"stain_odd": 0.01}', "unknown CellParams fields ['stain_odd']"),
    ('{"stain_od": -5}', "cannot be negative: ['stain_od']"),
])
def test_bad_params_files_are_one_line(folder, tmp_path, capsys, content, said):
    (tmp_path / "p.json").write_text(content)
    rc, out = _run(capsys, validate, "--data", str(folder), "--params", str(tmp_path / "p.json"))
    assert rc == 1 and said in out.err and "Traceback" not in out.err and out.out == ""


def test_folders_limits_and_out_are_checked_before_any_work(folder, tmp_path, capsys):
    # QA: tracebacks, or an --out in a missing folder failing after all the work
    for module, argv, said in (
            (validate, ["--data", str(tmp_path / "none")], "not a folder"),
            (validate, ["--data", str(tmp_path)], "holds no index.csv"),
            (validate, ["--data", str(folder), "--limit", "0"], "--limit 0: give 1 or more"),
            (calibrate, ["--data", str(folder), "--out", str(tmp_path / "no" / "p.json")], "its folder does not exist"),
            (calibrate, ["--data", str(folder), "--check", str(tmp_path / "none")], "not a folder")):
        rc, out = _run(capsys, module, *argv)
        assert rc == 1 and said in out.err and out.out == "", (argv, out.err)


def test_a_check_on_the_fitting_folder_is_flagged(folder, capsys):
    rc, out = _run(capsys, calibrate, "--data", str(folder), "--check", str(folder), "--limit", "1")
    assert rc == 0, out.err
    assert "is one of the --data folders the thresholds are fitted on" in out.err
    decoder, docs, i = json.JSONDecoder(), [], 0
    while i < len(out.out.rstrip()):  # the fit, then the check's summary
        doc, i = decoder.raw_decode(out.out, i)
        docs.append(doc)
        i += 1
    check = docs[-1]
    assert check["check_is_fitting_data"] is True
