"""Her2Net and the baselines: shapes, training signal, checkpoints, inference."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from her2kit.checkpoint import load_checkpoint, save_checkpoint
from her2kit.errors import Her2kitError, InputError
from her2kit.plugins import registry

MODEL_NAMES = ["her2net", "her2net-no-tlstm", "her2net-no-spp", "unet", "segnet", "bayesian-segnet"]


def make(name: str, width: int = 4):
    torch.manual_seed(0)
    return registry().get("model", name).factory(width=width)


def test_models_package_does_not_import_torch():
    code = "import sys, her2kit.models, her2kit.models.plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("shape", [(1, 251, 251), (2, 37, 53)])
def test_output_shapes_for_odd_sizes(name, shape):
    model = make(name).eval()
    b, h, w = shape
    with torch.no_grad():
        out = model(torch.randn(b, 3, h, w))
    assert out["pixel"].shape == (b, 3, h, w)
    assert torch.isfinite(out["pixel"]).all()
    if name.startswith("her2net"):
        assert out["pattern"].shape == (b, 4)
    else:
        assert "pattern" not in out


def test_her2net_structure_matches_the_paper():
    from torch import nn

    from her2kit.models.her2net import Her2Net
    from her2kit.ops import TLSTM

    net = Her2Net(width=4)
    enc = [m for m in net.encoder.modules() if isinstance(m, nn.Conv2d)]
    dec = [m for m in net.decoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(enc) == 16 and len(dec) == 16
    assert len(net.encoder) == 4  # 4 stages -> 3 pools / 3 unpools
    assert sum(isinstance(m, TLSTM) for m in net.modules()) == 2
    assert len(net.context) == 2
    ablated = Her2Net(width=4, tlstm=False, spp=False)
    assert not any(isinstance(m, TLSTM) for m in ablated.modules())
    assert len(ablated.context) == 0


def test_her2net_trains_on_a_batch_of_one_and_skips_are_optional():
    from her2kit.models.her2net import Her2Net

    torch.manual_seed(0)
    net = Her2Net(width=4).train()
    out = net(torch.randn(1, 3, 40, 56))  # batch norm in train mode, one image
    out["pixel"].sum().backward()
    plain = Her2Net(width=4, skips=False).eval()
    assert plain.options["skips"] is False
    with torch.no_grad():
        assert plain(torch.randn(1, 3, 40, 56))["pixel"].shape == (1, 3, 40, 56)


def test_adaptive_spp_matches_native_op_layout():
    from her2kit.models.blocks import adaptive_spp
    from her2kit.ops import SPP

    x = torch.randn(2, 3, 13, 17)
    torch.testing.assert_close(SPP((1, 2, 3, 6))(x), adaptive_spp(x, (1, 2, 3, 6)))


def test_tiny_her2net_loss_falls():
    from her2kit.training.loop import TrainConfig, segmentation_loss

    torch.manual_seed(0)
    model = make("her2net")
    y = torch.zeros(2, 32, 32, dtype=torch.long)
    y[:, 10:20, 6:26] = 2
    y[:, 8:10, 4:28] = 1
    y[:, 20:22, 4:28] = 1
    x = torch.randn(2, 3, 32, 32) * 0.1 + (y[:, None].float() - 1)
    pattern = torch.tensor([1, 3])
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(10):
        loss = segmentation_loss(model(x), y, pattern, torch.ones(3), TrainConfig())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_bayesian_segnet_mc_dropout():
    model = make("bayesian-segnet").eval()
    x = torch.randn(1, 3, 40, 40)
    mean, entropy = model.predict_mc(x, samples=4)
    assert mean.shape == (1, 3, 40, 40) and entropy.shape == (1, 40, 40)
    torch.testing.assert_close(mean.sum(1), torch.ones(1, 40, 40))
    assert float(entropy.min()) >= 0 and float(entropy.max()) <= math.log(3) + 1e-5
    # dropout really samples: two single-sample predictions differ; BN stays in eval
    a, _ = model.predict_mc(x, samples=1)
    b, _ = model.predict_mc(x, samples=1)
    assert not torch.allclose(a, b)
    assert not model.training


def test_checkpoint_round_trip(tmp_path):
    model = make("her2net").eval()
    meta = {"architecture": "her2net", "options": model.options, "mpp": 0.25}
    save_checkpoint(model, meta, tmp_path / "run.v2")  # a dot in the stem is kept
    assert (tmp_path / "run.v2.safetensors").is_file() and (tmp_path / "run.v2.json").is_file()
    # the weights are as readable as their JSON (safetensors alone makes 0600 files)
    assert (tmp_path / "run.v2.safetensors").stat().st_mode & 0o777 == (tmp_path / "run.v2.json").stat().st_mode & 0o777
    loaded, loaded_meta = load_checkpoint(tmp_path / "run.v2.json")
    assert loaded_meta["mpp"] == 0.25 and loaded_meta["format"] == "her2kit-checkpoint"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    torch.testing.assert_close(a["pixel"], b["pixel"])
    torch.testing.assert_close(a["pattern"], b["pattern"])
    loaded2, _ = load_checkpoint(tmp_path / "run.v2.safetensors")
    assert sum(p.numel() for p in loaded2.parameters()) == sum(p.numel() for p in model.parameters())


def test_pickle_checkpoints_are_refused(tmp_path):
    model = make("unet")
    pt = tmp_path / "model.pt"
    torch.save(model.state_dict(), pt)
    with pytest.raises(InputError, match="pickle"):
        load_checkpoint(pt)
    # a torch.save file renamed to .safetensors, with a valid JSON beside it
    disguised = tmp_path / "evil.safetensors"
    disguised.write_bytes(pt.read_bytes())
    (tmp_path / "evil.json").write_text('{"format": "her2kit-checkpoint", "architecture": "unet", "options": {}}')
    with pytest.raises(InputError, match="pickle") as err:
        load_checkpoint(tmp_path / "evil.json")
    assert "evil.safetensors" in str(err.value)
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "missing.json")


def test_mismatched_weights_are_an_input_error(tmp_path):
    save_checkpoint(make("unet", width=4), {"architecture": "unet", "options": {"width": 8}}, tmp_path / "m")
    with pytest.raises(InputError, match="do not fit"):
        load_checkpoint(tmp_path / "m.json")


def test_segmenter_pads_and_tiles(tmp_path):
    from her2kit.inference import Segmenter, gaussian_weight, load_segmenter, tile_starts

    model = make("her2net").eval()
    save_checkpoint(model, {"architecture": "her2net", "options": model.options, "mpp": 0.5}, tmp_path / "h")
    seg = load_segmenter(tmp_path / "h.json", device="cpu")
    assert seg.mpp == 0.5 and seg.device == "cpu"
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    p = seg.predict(small)
    assert p.shape == (3, 37, 53) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(0), 1, atol=1e-5)
    big = rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)
    tiled = Segmenter(seg.model, seg.metadata, "h", "cpu", tile=48, overlap=16, batch=4)
    q = tiled.predict(big)
    assert q.shape == (3, 100, 120)
    np.testing.assert_allclose(q.sum(0), 1, atol=1e-5)
    assert tiled.predict_pattern(big).shape == (4,)
    assert tile_starts(150, 64, 16) == [0, 48, 86]
    w = gaussian_weight((64, 64))
    assert w.max() == w[31:33, 31:33].max() and w.min() >= 1e-3
    with pytest.raises(Her2kitError, match="RGB"):
        seg.predict(np.zeros((10, 10), np.uint8))


def test_segmenter_pattern_only_for_her2net(tmp_path):
    from her2kit.inference import load_segmenter

    model = make("unet")
    save_checkpoint(model, {"architecture": "unet", "options": model.options}, tmp_path / "u")
    seg = load_segmenter(tmp_path / "u.json", device="cpu")
    with pytest.raises(Her2kitError, match="pattern"):
        seg.predict_pattern(np.zeros((32, 32, 3), np.uint8))


def test_load_segmenter_by_name_without_weights_says_how_to_train():
    from her2kit.inference import load_segmenter

    with pytest.raises(Her2kitError, match="her2kit train"):
        load_segmenter("segnet", device="cpu")


def test_shipped_her2net_runs_under_autocast():
    """QA: under torch.autocast (bfloat16) Her2Net stopped at its first SPP;
    its pixel classes now agree with float32's almost everywhere."""
    from her2kit.inference import load_segmenter

    model = load_segmenter(device="cpu").model
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x)["pixel"].argmax(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)["pixel"]
    assert got.dtype == torch.bfloat16 and torch.isfinite(got.float()).all()
    assert (got.float().argmax(1) == want).float().mean() > 0.9


def test_shipped_default_weights():
    import json

    from her2kit.inference import WEIGHTS_DIR, load_segmenter

    weights = WEIGHTS_DIR / "her2net-default.safetensors"
    meta = json.loads((WEIGHTS_DIR / "her2net-default.json").read_text())
    assert weights.stat().st_size <= 10 * 2**20
    assert meta["shipped"]["train_command"].startswith("her2kit train ")
    assert meta["shipped"]["synth_command"].startswith("her2kit synth images ")
    seg = load_segmenter(device="cpu")
    assert seg.name == "her2net" and seg.mpp == meta["mpp"]
    # a clean synthetic-like patch: nuclei (blue disc) inside a brown ring
    yy, xx = np.mgrid[:96, :96]
    d = np.hypot(yy - 48, xx - 48)
    rgb = np.full((96, 96, 3), 235, np.uint8)
    rgb[(d > 20) & (d < 23)] = (120, 70, 30)
    rgb[d < 8] = (90, 90, 170)
    p = seg.predict(rgb)
    assert p.shape == (3, 96, 96)
    assert p[2, 48, 48] > 0.5 and p[0, 5, 5] > 0.5
    assert seg.predict_pattern(rgb).shape == (4,)


def test_segmenter_fingerprint_follows_the_weights_not_the_name():
    import torch

    from her2kit.inference import load_segmenter, model_fingerprint

    a, b = load_segmenter(device="cpu"), load_segmenter(device="cpu")
    assert a.name == b.name and model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        next(b.model.parameters()).view(-1)[0] += 1e-3
    b._fingerprint = None
    assert model_fingerprint(b) != model_fingerprint(a)
    b.tile = a.tile // 2  # the tiling shapes the output too
    b.model.load_state_dict(a.model.state_dict())
    b._fingerprint = None
    assert model_fingerprint(b) != model_fingerprint(a)


class _BadNet(torch.nn.Module):
    """A plugin's network that returns the wrong thing (``kind``)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.conv = torch.nn.Conv2d(3, 5, 1)

    def forward(self, x):
        y = self.conv(x)
        if self.kind == "channels":
            return {"pixel": y}
        if self.kind == "half":
            return {"pixel": y[:, :3, ::2, ::2]}
        if self.kind == "key":
            return {"logits": y[:, :3]}
        if self.kind == "nan":
            return {"pixel": y[:, :3] * float("nan")}
        if self.kind == "long":
            return {"pixel": y[:, :3].long()}
        if self.kind == "raises":
            raise RuntimeError("forward exploded\nsecond line")
        return y[:, :3]  # a bare tensor


@pytest.mark.parametrize("kind,expect", [("channels", "shape (1, 5, 40, 40)"), ("half", "shape (1, 3, 20, 20)"),
                                         ("key", "without a 'pixel' tensor"), ("bare", "a Tensor")])
def test_a_model_with_the_wrong_output_is_a_setup_error_naming_it(kind, expect):
    """QA: a plugin model's wrong output was an "internal error" (images) or the
    slide's fault (blocks); now one line naming the model and what it must return."""
    from her2kit.errors import SetupError
    from her2kit.inference import Segmenter

    seg = Segmenter(_BadNet(kind), {}, name="qa-net", device="cpu")
    with pytest.raises(SetupError, match=r"model 'qa-net' returned .*expected \{'pixel'") as err:
        seg.predict(np.zeros((40, 40, 3), np.uint8))
    assert expect in str(err.value)


@pytest.mark.parametrize("kind,expect", [
    ("nan", "returned NaN or infinite pixel logits"), ("long", "returned torch.int64 pixel logits"),
    ("raises", r"failed on a batch of shape \(1, 3, 40, 40\): RuntimeError: forward exploded second line$"),
])
def test_a_model_that_fails_or_gives_nan_is_a_setup_error_naming_it(kind, expect):
    """QA: NaN logits scored "no tumour cells" with exit 0; a raising forward was an
    "internal error" naming nothing."""
    from her2kit.errors import SetupError
    from her2kit.inference import Segmenter

    seg = Segmenter(_BadNet(kind), {}, name="qa-net", device="cpu")
    with pytest.raises(SetupError, match=f"model 'qa-net' {expect}"):
        seg.predict(np.zeros((40, 40, 3), np.uint8))


def test_a_model_with_the_wrong_output_stops_a_slide_run(tmp_path):
    from her2kit.errors import SetupError
    from her2kit.inference import Segmenter
    from her2kit.synth.slide import make_slide
    from her2kit.wsi.pipeline import run_slide

    slide = str(tmp_path / "s.zarr")
    make_slide(slide, (256, 256), "2+", seed=1, chunk=128, progress=False)
    with pytest.raises(SetupError, match="model 'qa-net' returned pixel logits of shape"):
        run_slide(slide, tmp_path / "o", Segmenter(_BadNet("channels"), {}, name="qa-net", device="cpu"),
                  block=128, halo=16, progress=False)
