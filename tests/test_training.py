"""her2kit train / evaluate: data folders, augmentation, determinism, resume, end to end."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from her2kit.errors import InputError
from her2kit.training.augment import AugmentConfig, augment, stain_jitter
from her2kit.training.dataset import (
    PatchSampler,
    index_rows,
    load_folder,
    pattern_of_categories,
    split,
    subset,
)

SCORES = ["0", "1+", "2+", "3+"]


def make_folder(folder: Path, n: int = 4, size: int = 64, seed: int = 0, index: bool = True) -> Path:
    """A tiny labelled folder: blue nuclei in brown rings on a pale background."""
    rng = np.random.default_rng(seed)
    for d in ("images", "masks", "cells"):
        (folder / d).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    rows = []
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        cells = []
        for c in range(6):
            cy, cx = rng.integers(8, size - 8, 2)
            r = int(rng.integers(4, 7))
            d = np.hypot(yy - cy, xx - cx)
            mask[(d < r + 1.5) & (d >= r)] = 1
            mask[d < r * 0.5] = 2
            cells.append((c + 1, int(cy), int(cx), int(rng.integers(4)), 1))
        rgb = np.full((size, size, 3), 230.0)
        rgb[mask == 1] = (150, 90, 40)
        rgb[mask == 2] = (80, 80, 160)
        rgb = np.clip(rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"images/{i:04d}.png")
        Image.fromarray(mask).save(folder / f"masks/{i:04d}.png")
        with open(folder / f"cells/{i:04d}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "y", "x", "category", "tumour"])
            w.writerows(cells)
        rows.append((f"images/{i:04d}.png", f"masks/{i:04d}.png", SCORES[i % 4], 0.5))
    if index:
        with open(folder / "index.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image", "mask", "score", "mpp"])
            w.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("tiny"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HER2KIT_DISABLE_PLUGINS": "1"}
    return subprocess.run([sys.executable, "-m", "her2kit", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_folder_reading_with_and_without_index(tiny, tmp_path):
    images = load_folder(tiny)
    assert len(images) == 4 and images[1].score == 1 and images[0].mpp == 0.5
    assert images[0].rgb.shape == (64, 64, 3) and images[0].mask.max() == 2
    assert images[0].cells.shape == (6, 3)
    bare = make_folder(tmp_path / "bare", n=2, index=False)
    rows = index_rows(bare)
    assert [Path(r["image"]).name for r in rows] == ["0000.png", "0001.png"]
    assert load_folder(bare)[0].score is None


def test_bad_folders_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no labelled images"):
        index_rows((tmp_path / "empty").mkdir() or tmp_path / "empty")
    bad = make_folder(tmp_path / "bad", n=1)
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(bad / "masks/0000.png")
    with pytest.raises(InputError, match="0, 1 or 2"):
        load_folder(bad)
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(bad / "masks/0000.png")
    with pytest.raises(InputError, match="differs"):
        load_folder(bad)


def test_split_and_fraction_are_seeded_and_nested():
    train, val = split(20, seed=3)
    assert (train, val) == split(20, seed=3)
    assert len(val) == 2 and not set(train) & set(val)
    assert split(20, seed=4) != (train, val)
    a, b, c = (set(subset(train, f, 3)) for f in (0.25, 0.5, 0.75))
    assert a < b < c and len(a) == round(len(train) * 0.25)


def test_pattern_labels_follow_asco_cap_thresholds():
    assert pattern_of_categories(np.array([0] * 9 + [3])) == 1 - 1  # 10% is not "> 10%"
    assert pattern_of_categories(np.array([0] * 8 + [3] * 2)) == 3
    assert pattern_of_categories(np.array([0] * 8 + [2, 3])) == 2
    assert pattern_of_categories(np.array([1] * 5 + [0] * 5)) == 1
    assert pattern_of_categories(np.array([3, 3])) == -1  # too few cells


def test_patch_sampler_pads_small_images_and_labels_patterns(tiny):
    images = load_folder(tiny)
    sampler = PatchSampler(images, patch=80)
    plan = sampler.epoch_plan(np.random.default_rng(0))
    assert len(plan) == len(sampler) == 4
    rgb, mask, label = sampler.crop(*plan[0])
    assert rgb.shape == (80, 80, 3) and mask.shape == (80, 80)
    assert label == pattern_of_categories(images[plan[0][0]].cells[:, 2])


def test_augment_keeps_labels_aligned_and_stain_identity():
    rng = np.random.default_rng(0)
    rgb = np.where(rng.random((32, 32, 3)) < 0.5, 40, 220).astype(np.uint8)
    mask = (rgb[..., 0] > 128).astype(np.uint8)
    geometry_only = AugmentConfig(stain_scale=(0, 0, 0), stain_shift=(0, 0, 0), stain_vector=0, brightness=0,
                                  contrast=0, blur_probability=0, noise_sigma=0)
    for _ in range(6):
        a, m = augment(rgb, mask, rng, geometry_only)
        assert np.array_equal(m, (a[..., 0] > 128).astype(np.uint8))
    x = rgb.astype(np.float64) / 255
    same = stain_jitter(x, np.ones(3), np.zeros(3))
    np.testing.assert_allclose(same[x > 1 / 255], x[x > 1 / 255], atol=1e-6)
    darker = stain_jitter(x, np.array([1.5, 1.0, 1.0]), np.zeros(3))
    assert darker.mean() < same.mean()
    a, m = augment(rgb, mask, rng)
    assert a.dtype == np.uint8 and a.shape == rgb.shape and m.shape == mask.shape


def _train_in_process(data: Path, out: Path, *extra: str) -> int:
    from her2kit.cli import main

    return main(["train", "--data", str(data), "--model", "segnet", "--out", str(out), "--width", "4",
                 "--patch", "48", "--batch", "2", "--seed", "5", *extra])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_same_seed_same_result_and_resume(tiny, tmp_path, monkeypatch):
    assert _train_in_process(tiny, tmp_path / "a", "--epochs", "2") == 0
    assert _train_in_process(tiny, tmp_path / "b", "--epochs", "2") == 0
    wa, wb = _weights(tmp_path / "a/last.safetensors"), _weights(tmp_path / "b/last.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # interrupt a 2-epoch run during epoch 2, then resume: same weights as uninterrupted
    import her2kit.training.loop as loop

    real_validate, calls = loop.validate, []

    def interrupting_validate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(loop, "validate", interrupting_validate)
    assert _train_in_process(tiny, tmp_path / "c", "--epochs", "2") == 130
    monkeypatch.setattr(loop, "validate", real_validate)
    assert json.loads((tmp_path / "c/last.json").read_text())["epoch"] == 1
    assert _train_in_process(tiny, tmp_path / "c", "--epochs", "2", "--resume") == 0
    wc = _weights(tmp_path / "c/last.safetensors")
    assert all(torch.equal(wa[k], wc[k]) for k in wa)
    meta = json.loads((tmp_path / "c/last.json").read_text())
    assert meta["epoch"] == 2 and len(meta["history"]) == 2
    assert (tmp_path / "c/last.optim.safetensors").is_file()
    # nothing left to do: a second resume is a no-op
    assert _train_in_process(tiny, tmp_path / "c", "--epochs", "2", "--resume") == 0


def test_train_and_evaluate_end_to_end(tiny, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--data", str(tiny), "--model", "her2net", "--out", str(out), "--epochs", "1",
                "--width", "4", "--patch", "48", "--batch", "2")
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "best.json").read_text())
    assert meta["architecture"] == "her2net" and meta["options"]["width"] == 4
    assert meta["classes"] == ["background", "membrane", "nucleus"] and meta["mpp"] == 0.5
    for key in ("normalisation", "data", "metrics", "epoch", "train"):
        assert key in meta
    assert (out / "best.safetensors").stat().st_size > 1000
    ev = tmp_path / "eval"
    r = run_cli("evaluate", "--data", str(tiny), "--model", str(out / "best.json"), "--out", str(ev))
    assert r.returncode == 0, r.stderr
    metrics = json.loads((ev / "metrics.json").read_text())
    model = metrics["models"]["run/best"]
    for cls in ("membrane", "nucleus", "background"):
        assert set(model["pixel"][cls]) == {"dice", "cc", "sa", "precision", "recall", "f_score", "npv",
                                             "accuracy", "fpr"}
        assert cls in model["auc"]
    assert {"accuracy", "qwk", "confusion"} <= set(model["score"])
    assert np.asarray(model["score"]["confusion"]).sum() + model["score"].get("unscored", 0) == 4
    assert np.asarray(model["pixel_confusion"]).sum() == 4 * 64 * 64
    for name in ("comparison.md", "comparison.json", "by_score.md", "roc.png", "confusion_pixels.png"):
        assert (ev / name).is_file(), name


def test_cli_errors_are_one_line(tiny, tmp_path):
    pt = tmp_path / "model.pt"
    torch.save({"x": torch.zeros(1)}, pt)
    r = run_cli("evaluate", "--data", str(tiny), "--model", str(pt), "--out", str(tmp_path / "e"))
    assert r.returncode == 1 and "pickle" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "nowhere" in r.stderr and "Traceback" not in r.stderr


def test_an_unscored_image_counts_as_wrong_not_as_an_error():
    """An image where the cell pipeline finds no tumour cell has no score: the
    metric keeps the other images (QA: SCORE_NAMES.index(None) threw the whole
    metric away)."""
    from her2kit.evaluation.commands import cell_score_metrics

    m = cell_score_metrics([0, 1, 2, 3], [0, None, 2, 2])
    assert m["accuracy"] == 0.5 and m["unscored"] == 1
    assert np.asarray(m["confusion"]).sum() == 3 and m["confusion"][3][2] == 1
    assert cell_score_metrics([1], [None])["accuracy"] == 0.0


# --- QA fixes: options, existing outputs, divergence, resume, training-set overlap ---


def _main(capsys, *argv: str) -> tuple[int, str]:
    """In-process CLI run: (exit status, stderr without progress bars)."""
    from her2kit.cli import main

    rc = main(list(argv))
    err = capsys.readouterr().err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "it/s" not in ln
             and not ln.startswith("epoch ")]
    return rc, "\n".join(lines)


TRAIN = ("--model", "segnet", "--width", "4", "--patch", "48", "--batch", "2", "--epochs", "1")


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory) -> Path:
    """A 1-epoch segnet run trained on ``tiny`` (never modified by the tests)."""
    from her2kit.cli import main

    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--data", str(tiny), "--out", str(out), *TRAIN]) == 0
    return out


def _with_force(verb: str, *argv: str) -> int:
    """``verb`` with ``force`` set: the flag is read from the namespace."""
    from her2kit.cli import build_parser
    from her2kit.evaluation.commands import evaluate
    from her2kit.training.commands import train

    args = build_parser().parse_args([verb, *argv])
    args.force = True
    return {"train": train, "evaluate": evaluate}[verb](args)


def test_train_refuses_to_overwrite_a_run_unless_forced(tiny, tmp_path, capsys):
    out = tmp_path / "r"
    assert _main(capsys, "train", "--data", str(tiny), "--out", str(out), *TRAIN)[0] == 0
    before = (out / "best.safetensors").read_bytes(), (out / "best.json").read_text()
    rc, err = _main(capsys, "train", "--data", str(tiny), "--out", str(out), *TRAIN, "--seed", "6")
    assert rc == 1 and len(err.splitlines()) == 1
    assert "already holds a run" in err and "--resume" in err and "--force" in err
    assert ((out / "best.safetensors").read_bytes(), (out / "best.json").read_text()) == before
    (out / "history.json").write_text("stale")
    assert _with_force("train", "--data", str(tiny), "--out", str(out), *TRAIN, "--seed", "6") == 0
    assert json.loads((out / "best.json").read_text())["data"]["seed"] == 6
    assert json.loads((out / "history.json").read_text())[0]["epoch"] == 1


@pytest.mark.parametrize("extra, why", [
    (("--lr", "1e30"), "the loss is nan"),  # the loss of a later step
    # one step per epoch, whose update leaves the loss finite but the network useless
    (("--lr", "1e30", "--fraction", "0.25", "--patch", "64"), "the network's outputs on the validation images are not finite"),
])
def test_diverging_training_stops_without_saving_nan_weights(tiny, tmp_path, capsys, extra, why):
    out = tmp_path / "nan"
    rc, err = _main(capsys, "train", "--data", str(tiny), "--out", str(out), *TRAIN, "--epochs", "2", *extra)
    assert rc == 1 and len(err.splitlines()) == 2, err  # the start line and the error
    assert f"diverged in epoch 1: {why}" in err and "lower --lr" in err and "Traceback" not in err
    assert not (out / "best.json").exists() and not (out / "last.json").exists()


def test_non_finite_weights_are_never_saved(tiny, tmp_path, capsys, monkeypatch):
    import her2kit.training.loop as loop

    real = loop.make_optimizer

    def poisoning(model, config):  # an update that leaves a NaN weight behind
        optimizer = real(model, config)
        step = optimizer.step

        def poisoned_step(*args, **kwargs):
            result = step(*args, **kwargs)
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("nan")
            return result

        optimizer.step = poisoned_step
        return optimizer

    monkeypatch.setattr(loop, "make_optimizer", poisoning)
    out = tmp_path / "nan"
    rc, err = _main(capsys, "train", "--data", str(tiny), "--out", str(out), *TRAIN, "--fraction", "0.25",
                    "--patch", "64")
    assert rc == 1 and "diverged in epoch 1: the weights are no longer finite" in err, err
    assert not (out / "best.json").exists() and not (out / "last.json").exists()


@pytest.mark.parametrize("option, value, words", [
    ("--epochs", "0", "--epochs must be at least 1"),
    ("--epochs", "-1", "--epochs must be at least 1"),
    ("--width", "0", "--width must be at least 1"),
    ("--width", "-4", "--width must be at least 1"),
    ("--batch", "0", "--batch must be at least 1"),
    ("--lr", "nan", "--lr must be a positive finite number"),
    ("--lr", "-1", "--lr must be a positive finite number"),
    ("--lr", "1e39", "--lr must be a positive finite number"),
    ("--patch", "100000", "--patch must be between 16 and"),
    ("--device", "bogus", "--device 'bogus': not a torch device"),
    ("--device", "cuda:99", "--device 'cuda:99'"),
])
def test_bad_train_options_are_one_line_errors_before_any_work(tiny, tmp_path, capsys, option, value, words):
    out = tmp_path / "o"
    rc, err = _main(capsys, "train", "--data", str(tiny), "--out", str(out), *TRAIN, option, value)
    assert rc == 1 and err.startswith("her2kit: error: ") and words in err, err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_out_that_is_a_file_is_a_one_line_error(tiny, run, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    for argv in (("train", "--data", str(tiny), "--out", str(afile), *TRAIN),
                 ("evaluate", "--data", str(tiny), "--model", str(run), "--out", str(afile)),
                 ("evaluate", "--data", str(tiny), "--model", str(run), "--out", str(tmp_path / "e"),
                  "--device", "bogus")):
        rc, err = _main(capsys, *argv)
        assert rc == 1 and len(err.splitlines()) == 1 and err.startswith("her2kit: error: --"), err
    assert "is a file" in _main(capsys, "evaluate", "--data", str(tiny), "--model", str(run),
                                "--out", str(afile))[1]
    assert afile.read_text() == "keep"


def test_resume_refuses_other_width_or_data(tiny, tmp_path, capsys):
    import shutil

    out = tmp_path / "r"
    assert _main(capsys, "train", "--data", str(tiny), "--out", str(out), *TRAIN)[0] == 0
    last = (out / "last.json").read_text()
    rc, err = _main(capsys, "train", "--data", str(tiny), "--out", str(out), *TRAIN, "--epochs", "2",
                    "--width", "8", "--resume")
    assert rc == 1 and "--width 8" in err and "width 4" in err, err
    other = shutil.copytree(tiny, tmp_path / "other")
    rc, err = _main(capsys, "train", "--data", str(other), "--out", str(out), *TRAIN, "--epochs", "2", "--resume")
    assert rc == 1 and str(tiny.resolve()) in err and "--data" in err, err
    rc, err = _main(capsys, "train", "--data", str(tiny), "--out", str(out), *TRAIN, "--epochs", "2",
                    "--seed", "9", "--resume")
    assert rc == 1 and "--seed" in err, err
    for option, value in (("--lr", "0.1"), ("--patch", "32"), ("--preset", "paper")):  # QA: accepted
        rc, err = _main(capsys, "train", "--data", str(tiny), "--out", str(out), *TRAIN, "--epochs", "2",
                        "--resume", option, value)
        assert rc == 1 and f"{option} {value} differs from the run's" in err and "Traceback" not in err, err
    assert (out / "last.json").read_text() == last
    # without them, the run's own settings go on
    rc, err = _main(capsys, "train", "--data", str(tiny), "--out", str(out), "--model", "segnet",
                    "--epochs", "2", "--resume")
    assert rc == 0, err
    done = json.loads((out / "last.json").read_text())["train"]
    assert (done["patch"], done["batch"], done["epochs"]) == (48, 2, 2)


def test_folders_that_would_mix_training_and_validation_are_refused(tmp_path, capsys):
    """QA: one image was validated on itself; a row listed twice landed on both
    sides; a bad mpp was a traceback (or -1 kept); names with [ ] never paired."""
    one = make_folder(tmp_path / "one", n=1)
    rc, err = _main(capsys, "train", "--data", str(one), "--out", str(tmp_path / "o1"), *TRAIN)
    assert rc != 0 and "holds one labelled image" in err and "--val-data" in err, err
    twice = make_folder(tmp_path / "twice", n=3)
    lines = (twice / "index.csv").read_text().splitlines()
    (twice / "index.csv").write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(InputError, match="0000.png is listed twice"):
        index_rows(twice)
    for value in ("abc", "-1", "0"):
        bad = make_folder(tmp_path / f"mpp{value}", n=2)
        text = (bad / "index.csv").read_text().replace(",0.5", f",{value}", 1)
        (bad / "index.csv").write_text(text)
        with pytest.raises(InputError, match=f"mpp '{value}' is not a positive number"):
            index_rows(bad)
    odd = make_folder(tmp_path / "odd", n=3, index=False)
    for d in ("images", "masks"):
        (odd / d / "0000.png").rename(odd / d / "s[0].png")
    (odd / "masks" / "0001.png").unlink()
    with pytest.warns(UserWarning, match=r"1 image\(s\) without a mask .* 0001.png"):
        rows = index_rows(odd)
    assert sorted(Path(r["image"]).name for r in rows) == ["0002.png", "s[0].png"]


def test_training_images_are_flagged_in_evaluation_and_validation(tiny, run, tmp_path, capsys):
    import shutil

    recorded = json.loads((run / "best.json").read_text())["data"]
    # trained on, or its best epoch chosen on (the split's validation image): all seen
    n_train = len(recorded["train_images"]) + len(recorded["val_images"])
    rc, err = _main(capsys, "evaluate", "--data", str(tiny), "--model", str(run), "--out", str(tmp_path / "e"))
    assert rc == 0
    warning = [ln for ln in err.splitlines() if ln.startswith("her2kit: warning: ")]
    assert len(warning) == 1 and f"{n_train} of the 4 images" in warning[0]
    metrics = json.loads((tmp_path / "e/metrics.json").read_text())
    assert metrics["overlaps_training"] is True
    assert metrics["models"]["run"]["training_images_evaluated"] == n_train
    assert "not a held-out result" in (tmp_path / "e/comparison.md").read_text()
    # same image names in another folder: not the training images
    copy = shutil.copytree(tiny, tmp_path / "copy")
    rc, err = _main(capsys, "evaluate", "--data", str(copy), "--model", str(run), "--out", str(tmp_path / "e2"))
    assert rc == 0 and "warning" not in err
    assert json.loads((tmp_path / "e2/metrics.json").read_text())["models"]["run"]["overlaps_training"] is False
    # validating on the training folder
    rc, err = _main(capsys, "train", "--data", str(tiny), "--val-data", str(tiny), "--out", str(tmp_path / "v"),
                    *TRAIN)
    assert rc == 0 and "her2kit: warning: --val-data" in err and "4 of 4 validation images" in err
    assert json.loads((tmp_path / "v/best.json").read_text())["data"]["val_overlaps_training"] == 4


def test_evaluate_refuses_to_replace_results_unless_forced(tiny, run, tmp_path, capsys):
    ev = tmp_path / "e"
    assert _main(capsys, "evaluate", "--data", str(tiny), "--model", str(run), "--out", str(ev))[0] == 0
    first = (ev / "metrics.json").read_text()
    stale = ev / "uncertainty_old.png"
    stale.write_bytes(b"old")
    rc, err = _main(capsys, "evaluate", "--data", str(tiny), "--model", str(run), "--out", str(ev))
    assert rc == 1 and "already holds an evaluation" in err and "--force" in err
    assert (ev / "metrics.json").read_text() == first and stale.exists()
    assert _with_force("evaluate", "--data", str(tiny), "--model", str(run), "--out", str(ev)) == 0
    assert not stale.exists() and (ev / "metrics.json").is_file() and (ev / "roc.png").is_file()


def test_bad_score_in_index_names_file_row_and_value(tmp_path):
    folder = make_folder(tmp_path / "d", n=2)
    text = (folder / "index.csv").read_text().replace("images/0001.png,masks/0001.png,1+",
                                                       "images/0001.png,masks/0001.png,7+")
    (folder / "index.csv").write_text(text)
    with pytest.raises(InputError, match=r"index\.csv.*0001\.png.*'7\+'"):
        index_rows(folder)


def test_bayesian_segnet_evaluation_is_reproducible(tiny):
    from her2kit.checkpoint import build_model
    from her2kit.evaluation.commands import evaluate_model
    from her2kit.inference import Segmenter

    torch.manual_seed(0)
    net = build_model("bayesian-segnet", {"width": 4}).eval()
    segmenter = Segmenter(net, {"mpp": 0.5}, "b", "cpu")
    images = load_folder(tiny)[:2]
    a, b = (evaluate_model(segmenter, images, progress=False) for _ in range(2))
    assert a["uncertainty"]["mean_entropy_correct"] == b["uncertainty"]["mean_entropy_correct"]
    assert a["auc"] == b["auc"] and a["pixel"]["membrane"] == b["pixel"]["membrane"]


def test_nan_probabilities_stop_evaluate_with_one_line(tiny):
    """QA: one NaN probability made roc_curve raise: an internal error for every model."""
    from her2kit.errors import SetupError
    from her2kit.evaluation.commands import evaluate_model

    class NanSegmenter:
        name = "nan-model"
        mpp = 0.5
        model = torch.nn.Identity()

        def predict(self, rgb):
            p = np.full((3, *rgb.shape[:2]), 1 / 3, np.float32)
            p[:, :5, :5] = np.nan
            return p

    with pytest.raises(SetupError, match=r"model nan-model: its probabilities on .* contain NaN"):
        evaluate_model(NanSegmenter(), load_folder(tiny)[:1], progress=False)


def test_no_true_scores_is_the_reason_given_for_no_score(tmp_path, run):
    from her2kit.evaluation.commands import evaluate_model
    from her2kit.inference import load_segmenter

    bare = make_folder(tmp_path / "bare", n=2, index=False)
    result = evaluate_model(load_segmenter(str(run)), load_folder(bare), progress=False)
    assert result["score"]["accuracy"] is None and "no true scores" in result["score"]["source"]


def test_train_summary_rounds_and_says_n_a(tiny, tmp_path, capsys):
    rc, err = _main(capsys, "train", "--data", str(tiny), "--out", str(tmp_path / "s"), *TRAIN)
    done = [ln for ln in err.splitlines() if "her2kit train: done" in ln]
    assert rc == 0 and len(done) == 1
    numbers = re.findall(r"(?:Dice|membrane|nucleus) (\S+?)[;,]", done[0])
    assert len(numbers) == 3 and all(re.fullmatch(r"\d\.\d{4}|n/a", v) for v in numbers), done[0]
    assert "nan" not in done[0] and "None" not in done[0]


class _NoWidthNet(torch.nn.Module):
    """A user's own network with no ``width`` option."""

    def __init__(self, broken: bool = False):
        super().__init__()
        if broken:
            raise ImportError("No module named 'vendorlib'")
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return {"pixel": y[:, :, ::2] if x.shape[-1] == 47 else y}


def test_train_a_plugin_model_without_width(tiny, tmp_path, capsys, monkeypatch):
    """QA: train passed width= to every model factory ("unexpected keyword argument
    'width'", an internal error); a factory that fails was one too."""
    from her2kit import plugins
    from her2kit.hookspecs import ModelSpec, hookimpl

    class Mine:
        @hookimpl
        def her2kit_models(self):
            return [ModelSpec("qa-nowidth", "no width", _NoWidthNet),
                    ModelSpec("qa-broken", "fails", _NoWidthNet, options={"broken": True})]

    reg = plugins.Registry(load_entry_points=False)
    reg.register(Mine(), name="qa:0", origin="qa")
    monkeypatch.setattr(plugins, "_registry", reg)
    args = ("--patch", "48", "--batch", "2", "--epochs", "1", "--data", str(tiny))
    rc, err = _main(capsys, "train", "--model", "qa-nowidth", "--out", str(tmp_path / "a"), *args)
    assert rc == 0 and (tmp_path / "a" / "best.safetensors").is_file(), err
    assert "qa-nowidth on" in err and "width" not in err.split("qa-nowidth", 1)[1].split("\n")[0]
    rc, err = _main(capsys, "train", "--model", "qa-nowidth", "--width", "8", "--out", str(tmp_path / "b"), *args)
    assert rc != 0 and "--width: model 'qa-nowidth' takes no width option" in err and "Traceback" not in err
    rc, err = _main(capsys, "train", "--model", "qa-broken", "--out", str(tmp_path / "c"), *args)
    assert rc != 0 and "model 'qa-broken' could not be built" in err and "vendorlib" in err
    assert len(err.splitlines()) <= 2, err
    # logits of the wrong shape: one line naming the network (was torch's "weight tensor should be defined")
    rc, err = _main(capsys, "train", "--model", "qa-nowidth", "--out", str(tmp_path / "d"),
                    *[("47" if a == "48" else a) for a in args])
    assert rc != 0 and "model '_NoWidthNet' returned pixel logits of shape (2, 3, 24, 47)" in err, err


def test_resume_records_and_keeps_the_runs_preset(tiny, tmp_path, capsys):
    """Review: a --preset paper run resumed without --preset was recorded as
    'default', and resuming it again with --preset paper was then refused."""
    out = tmp_path / "p"
    base = ("train", "--data", str(tiny), "--out", str(out), "--model", "segnet", "--width", "4",
            "--patch", "48", "--batch", "2")
    assert _main(capsys, *base, "--preset", "paper", "--epochs", "1")[0] == 0
    assert _main(capsys, *base, "--epochs", "2", "--resume")[0] == 0
    assert json.loads((out / "last.json").read_text())["train"]["preset"] == "paper"
    rc, err = _main(capsys, *base, "--epochs", "3", "--resume", "--preset", "default")
    assert rc == 1 and "--preset default differs from the run's paper" in err, err
    rc, err = _main(capsys, *base, "--epochs", "3", "--resume", "--preset", "paper")
    assert rc == 0, err

