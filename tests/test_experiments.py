"""`python -m her2kit.evaluation.experiments`: the same budget for every model,
and no reuse of runs made under other settings."""

from __future__ import annotations

import json

import pytest

from her2kit.cli import guarded, main
from her2kit.evaluation import experiments


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    for name, seed in (("train", 1), ("test", 2)):
        assert main(["synth", "images", str(root / name), "--n", "3", "--size", "96", "--seed", str(seed)]) == 0
    return root


def _run(capsys, *argv):
    rc = guarded(lambda: experiments.main(list(argv)))
    return rc, capsys.readouterr().err


def test_runs_are_reused_only_under_the_same_settings(data, tmp_path, capsys):
    out = tmp_path / "e"
    budget = ["--epochs", "1", "--width", "4", "--patch", "48", "--batch", "2"]
    args = ["--train", str(data / "train"), "--test", str(data / "test"), "--out", str(out), "--models", "unet"]
    rc, err = _run(capsys, *args, *budget)
    assert rc == 0, err
    metrics = json.loads((out / "eval-test" / "metrics.json").read_text())
    assert len(metrics["models"]) == 1
    # QA: another width reused the width-4 run and reported it, exit 0
    rc, err = _run(capsys, *args, "--epochs", "1", "--width", "8", "--patch", "48", "--batch", "2")
    assert rc == 1 and "other settings (width)" in err, err
    # QA: an added model was trained but the old table kept
    rc, err = _run(capsys, *args[:-1], "unet", "segnet", *budget)
    assert rc == 0, err
    assert len(json.loads((out / "eval-test" / "metrics.json").read_text())["models"]) == 2


@pytest.mark.parametrize("extra,said", [
    (["--models", "no-such-net"], "unknown model 'no-such-net'"),
    (["--fractions", "0"], "--fractions 0.0: give fractions between 0 and 1"),
    (["--test", "{other}/test"], "--test folders with one name"),
])
def test_bad_settings_fail_before_any_training(data, tmp_path, capsys, extra, said):
    (tmp_path / "other" / "test").mkdir(parents=True)
    extra = [e.format(other=tmp_path / "other") for e in extra]
    rc, err = _run(capsys, "--train", str(data / "train"), "--test", str(data / "test"),
                   "--out", str(tmp_path / "e"), "--epochs", "1", *extra)
    assert rc == 1 and said in err and "Traceback" not in err, err
    assert not (tmp_path / "e" / "runs").exists()


def test_an_evaluation_folder_is_redone_for_another_test_folder_of_its_name(data, tmp_path, capsys):
    """Review: a/test, then b/test, then a/test again reported b's metrics."""
    import shutil

    other = tmp_path / "b" / "test"
    shutil.copytree(data / "test", other)
    out = tmp_path / "e"
    common = ["--train", str(data / "train"), "--out", str(out), "--models", "unet",
              "--epochs", "1", "--width", "4", "--patch", "48", "--batch", "2"]
    for test in (data / "test", other, data / "test"):
        rc, err = _run(capsys, *common, "--test", str(test))
        assert rc == 0, err
        metrics = json.loads((out / "eval-test" / "metrics.json").read_text())
        assert metrics["data"] == str(test), (metrics["data"], test)

