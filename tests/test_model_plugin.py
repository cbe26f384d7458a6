"""The example model plugin (plugins/her2kit-tinynet): a third-party network with
its own shipped weights, used by name through every command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from her2kit.plugins import registry

WEIGHTS = Path(__file__).resolve().parents[1] / "plugins" / "her2kit-tinynet" / "her2kit_tinynet" / "weights"


def _cli(*argv):
    env = {k: v for k, v in os.environ.items() if k != "HER2KIT_DISABLE_PLUGINS"}
    return subprocess.run([sys.executable, "-m", "her2kit", *map(str, argv)], capture_output=True,
                          text=True, timeout=300, env=env)


def test_registered_from_its_package_with_its_weights():
    entries = {e.name: e for e in registry().list("model")}
    tiny = entries["tiny-unet"]
    assert tiny.origin == "her2kit-tinynet"
    assert Path(tiny.record.weights) == WEIGHTS / "tiny-unet.json"
    assert (WEIGHTS / "tiny-unet.json").is_file() and (WEIGHTS / "tiny-unet.safetensors").is_file()


def test_by_name_is_its_shipped_checkpoint_and_it_is_trained():
    """--model tiny-unet loads the plugin's weights (the same fingerprint as the
    checkpoint path), and they segment a held-out synthetic image well (seed
    900; the weights were trained on seed 11): an untrained net would not."""
    from her2kit.evaluation.metrics import confusion_matrix, pixel_metrics
    from her2kit.inference import load_segmenter
    from her2kit.synth.images import make_patch

    seg = load_segmenter("tiny-unet", device="cpu")
    assert seg.name == "tiny-unet"
    assert seg.fingerprint == load_segmenter(str(WEIGHTS / "tiny-unet.json"), device="cpu").fingerprint
    patch = make_patch(900, 384, "2+")
    pred = np.argmax(seg.predict(patch.region.rgb), axis=0)
    m = pixel_metrics(confusion_matrix(patch.region.semantic, pred, 3))
    assert m["nucleus"]["dice"] > 0.85 and m["membrane"]["dice"] > 0.6, m


def test_score_and_segment_a_slide_with_it(tmp_path):
    from her2kit.synth.slide import make_slide

    slide = tmp_path / "s.zarr"
    make_slide(str(slide), (512, 512), "3+", seed=21, chunk=256, progress=False)
    p = _cli("score", slide, "--out", tmp_path / "o", "--model", "tiny-unet")
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads((tmp_path / "o" / "s" / "score.json").read_text())
    assert summary["model"] == "tiny-unet" and summary["cells_detected"] > 50
    assert summary["score"] in ("0", "1+", "2+", "3+")
    p = _cli("segment", slide, "--out", tmp_path / "g", "--model", "tiny-unet")
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "g" / "s" / "labels.zarr").is_dir()
    assert not (tmp_path / "g" / "s" / "score.json").exists()


@pytest.mark.parametrize("width", [4, 8])
def test_any_size_keeps_its_shape(width):
    import torch
    from her2kit_tinynet.net import TinyUNet

    net = TinyUNet(width).eval()
    with torch.no_grad():
        out = net(torch.zeros(2, 3, 37, 50))["pixel"]
    assert out.shape == (2, 3, 37, 50) and net.options == {"width": width}
