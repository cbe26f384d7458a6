"""The threshold tools, `python -m her2kit.scoring.validate` and `...calibrate`:
bad input is one line before any work, and a check on fitting data says so."""

from __future__ import annotations

import json

import numpy as np
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


def test_tumour_rule_fit_finds_the_lymphocyte_cut_off():
    """QA: lymphocytes (small, dark nuclei) were called tumour: the cut-off
    (0.45 OD) sat above most of them as the model measures them. The fit
    recovers a separating cut-off from placed cells."""
    from her2kit.scoring.cells import CellParams

    rng = np.random.default_rng(0)
    n_t, n_l = 400, 80
    nucleus = {  # tumour: larger or paler; lymphocytes: small and dark around 0.39
        "nucleus_area_um2": np.concatenate([rng.uniform(20, 80, n_t), rng.uniform(14, 29, n_l)]),
        "nucleus_elongation": np.concatenate([rng.uniform(1.0, 1.8, n_t), rng.uniform(1.0, 1.4, n_l)]),
        "nucleus_h_od": np.concatenate([rng.uniform(0.15, 0.30, n_t), rng.uniform(0.33, 0.49, n_l)]),
    }
    on_tumour = np.arange(n_t + n_l) < n_t
    start = CellParams(lymphocyte_h_od=0.45)
    fitted, acc = calibrate.fit_tumour_rule(nucleus, on_tumour, start)
    assert acc == 1.0 and 0.30 <= fitted.lymphocyte_h_od <= 0.33
    assert fitted.lymphocyte_area_um2 >= 29
    # an already perfect start stays (ties keep it)
    again, _ = calibrate.fit_tumour_rule(nucleus, on_tumour, fitted)
    assert again == fitted


def test_tumour_calls_are_counted_by_position():
    """Each detected cell is placed on the true cell under its nucleus centroid,
    so a stromal cell called tumour counts even when no IoU match is possible."""
    records = [{
        "placed": np.array([0, 1, 2, -1]), "placed_type": np.array(["tumour", "lymphocyte", "fibroblast", ""]),
        "placed_tumour": np.array([True, False, False, False]),
        "all_tumour": np.array([True, True, False, True]),
    }]
    calls = validate.tumour_calls(records)
    assert calls["called"] == 2 and calls["called_on_stroma"] == 1 and calls["precision"] == 0.5
    assert calls["called_tumour_by_type"]["lymphocyte"] == {"cells": 1, "called_tumour": 1, "share": 1.0}
    assert calls["called_tumour_by_type"]["fibroblast"]["share"] == 0.0
    assert set(validate.tumour_calls([])) == set(calls)  # the same keys with no images
    # an image with no true cells: every detected cell unplaced (review: an IndexError)
    no_truth = np.zeros(0, dtype="<U10")
    assert validate._at(no_truth, np.array([-1, -1]), "").tolist() == ["", ""]
    assert validate._at(np.zeros(0, bool), np.array([-1]), False).tolist() == [False]


def test_validate_places_detected_cells_on_true_ones(folder):
    summary, records = validate.evaluate_folder(str(folder), progress=False)
    r = records[0]
    assert r["placed"].shape == r["all_tumour"].shape and (r["placed"] >= 0).mean() > 0.8
    kinds = set(r["placed_type"][r["placed"] >= 0].tolist())
    assert "tumour" in kinds and kinds <= {"tumour", "lymphocyte", "fibroblast"}
    calls = summary["tumour_calls"]
    assert 0.0 <= calls["precision"] <= 1.0 and calls["called"] > 0


def categorise_sectors(sectors, params):
    from her2kit.scoring.cells import categorise

    return categorise(*calibrate.staining_from_sectors(sectors, params.stain_od), params)


def test_fit_thresholds_does_not_keep_an_unordered_start():
    """Review: a start with moderate_od above intense_od (an old fit given as
    --start) was scored but never checked, so it could come back as the fit."""
    from her2kit.scoring.cells import CellParams

    def cell(n_stained: int, od: float) -> np.ndarray:
        return np.r_[np.full(n_stained, od), np.zeros(16 - n_stained)]

    # intense-looking incomplete rings whose truth is faint (1): the unordered
    # start (moderate 0.47 > intense 0.36) gets every cell right
    sectors = np.array([cell(7, 0.40)] * 20 + [cell(16, 0.6)] * 20 + [cell(16, 0.2)] * 20 + [cell(0, 0)] * 20)
    truth = np.repeat([1, 3, 2, 0], 20)
    start = CellParams(moderate_od=0.47, intense_od=0.36)
    assert (categorise_sectors(sectors, start) == truth).all()
    fitted, _ = calibrate.fit_thresholds(sectors, truth, start, rounds=1)
    assert calibrate._ordered(fitted)
