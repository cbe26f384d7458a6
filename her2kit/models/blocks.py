"""Building blocks shared by Her2Net and the baselines.

Every network here maps a normalised RGB batch (B, 3, H, W) of any size to a
dict ``{"pixel": logits (B, 3, H, W)}`` (plus ``"pattern": logits (B, 4)``
for networks with a staining-pattern head). Sizes that the pooling cannot
divide are padded (reflection) up to the network's multiple and the logits
cropped back, so 251 x 251 and 37 x 53 inputs work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CLASSES = ("background", "membrane", "nucleus")
# The four membrane-staining patterns, in ASCO/CAP order (DESIGN.md categories).
PATTERNS = ("0", "1+", "2+", "3+")


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU; spatial size unchanged."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def init_convs(module: nn.Module) -> None:
    """He (Kaiming) normal initialisation of the 3x3/1x1 convolutions of ``module``.

    PyTorch's default conv init shrinks the signal by about 3x per layer; over
    32 layers an untrained network's output would be constant.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Pad (B, C, H, W) at the bottom/right to a multiple of ``multiple``.

    Reflection where the image is large enough (no artificial edges), else
    replication. Returns the padded tensor and the original H, W.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, h, w
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), h, w


def adaptive_spp(x: torch.Tensor, levels: tuple[int, ...]) -> torch.Tensor:
    """Plain-PyTorch spatial pyramid pooling, (B, C, H, W) -> (B, C, sum n^2).

    Same bins and order as :class:`her2kit.ops.SPP` (adaptive max pooling,
    row-major bins, levels concatenated); used when a network is built with
    ``native_ops=False``.
    """
    b, c = x.shape[:2]
    return torch.cat([F.adaptive_max_pool2d(x, n).reshape(b, c, n * n) for n in levels], dim=2)


def make_spp(levels: tuple[int, ...], native: bool) -> nn.Module:
    """The SPP op: the native one from :mod:`her2kit.ops` or the adaptive-pool equivalent."""
    if native:
        from her2kit.ops import SPP

        return SPP(levels=levels)
    return _AdaptiveSPP(levels)


class _AdaptiveSPP(nn.Module):
    def __init__(self, levels: tuple[int, ...]):
        super().__init__()
        self.levels = tuple(levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_spp(x, self.levels)


class PyramidContext(nn.Module):
    """Pyramid context module: SPP bins per level, 1x1 conv, upsample, concatenate.

    The pooled pyramid (one SPP call for all levels) is split into its
    n x n grids; each goes through its own 1x1 conv to C/4 channels and is
    upsampled (bilinear) to the feature size; the concatenation with the input
    (2C channels) is fused back to C channels by a 1x1 conv and added to the
    input (residual). Gives every pixel context from the whole patch at
    1/1 .. 1/36 granularity.
    """

    def __init__(self, channels: int, levels: tuple[int, ...] = (1, 2, 3, 6), native: bool = True):
        super().__init__()
        self.levels = tuple(levels)
        self.spp = make_spp(self.levels, native)
        branch = max(channels // len(self.levels), 1)
        # no batch norm on the pooled grids: a 1x1 grid has one value per
        # channel and image, too few for batch statistics
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, branch, 1), nn.ReLU(inplace=True)) for _ in self.levels
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(channels + branch * len(self.levels), channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )
        nn.init.zeros_(self.fuse[1].weight)  # starts as the identity (see forward)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        pooled = self.spp(x)
        parts = [x]
        start = 0
        for n, branch in zip(self.levels, self.branches, strict=True):
            grid = pooled[:, :, start:start + n * n].reshape(b, c, n, n)
            start += n * n
            parts.append(F.interpolate(branch(grid), size=(h, w), mode="bilinear", align_corners=False))
        # residual: x + fused context, then ReLU (the module starts as the identity)
        return F.relu(x + self.fuse(torch.cat(parts, dim=1)))


class ResidualTLSTM(nn.Module):
    """A TLSTM (four trapezoidal sweeps) added to its input: x + TLSTM(x).

    The residual keeps the convolutional features flowing while the
    recurrent context is learned (the paper does not say how the TLSTM
    output is combined; a residual sum trains faster on small budgets). The
    norm's scale starts at 0, so the layer starts as the identity and the
    untrained recurrence does not scramble the features.
    """

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        from her2kit.ops import TLSTM

        self.tlstm = TLSTM(channels, hidden, channels)
        self.norm = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.norm.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.tlstm(x))


class PatternHead(nn.Module):
    """SPP over the bottleneck features, then FC layers to the 4 staining patterns.

    SPP gives a fixed-length vector (C x 50 for levels 1, 2, 3, 6) whatever
    the patch size, so the fully connected layers accept any input size.
    """

    def __init__(self, channels: int, hidden: int, patterns: int = len(PATTERNS),
                 levels: tuple[int, ...] = (1, 2, 3, 6), native: bool = True, dropout: float = 0.3):
        super().__init__()
        self.spp = make_spp(tuple(levels), native)
        features = channels * sum(n * n for n in levels)
        self.fc = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, patterns),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.spp(x).flatten(1))


class IndexedEncoderDecoder(nn.Module):
    """Conv encoder with max-pool indices kept; deconv decoder with max-unpooling.

    ``stages`` gives the number of 3x3 layers per resolution stage (encoder;
    the decoder mirrors it); channels double per stage from ``width``; one
    2x2 max-pool between consecutive stages. The decoder's last layer is the
    3-class classifier (no norm, no ReLU). With ``skips=True`` the encoder's
    features of a stage are added to the unpooled decoder features of the same
    stage (as LinkNet does): the short path from the classifier to the early
    layers lets the 32-layer network learn in hundreds rather than thousands of
    steps. The decoder's "deconvolution"
    layers are stride-1 3x3 layers: a stride-1 transposed convolution is a
    convolution with a flipped kernel (the same family of functions), and
    ``nn.Conv2d`` runs about 3x faster than ``nn.ConvTranspose2d`` on CPU;
    upsampling is done by the unpooling layers. Subclasses add context modules
    through the ``after_stage`` / ``bottleneck`` hooks.
    """

    def __init__(self, width: int, stages: tuple[int, ...], classes: int = len(CLASSES),
                 dropout: float = 0.0, dropout_stages: tuple[int, ...] = (), skips: bool = False):
        super().__init__()
        self.skips = skips
        self.width = width
        self.stage_sizes = tuple(stages)
        self.multiple = 2 ** (len(stages) - 1)
        channels = [width * 2 ** i for i in range(len(stages))]
        self.channels = channels
        self.encoder = nn.ModuleList()
        cin = 3
        for s, n in enumerate(stages):
            layers = []
            for _ in range(n):
                layers.append(conv_bn_relu(cin, channels[s]))
                cin = channels[s]
            self.encoder.append(nn.Sequential(*layers))
        self.decoder = nn.ModuleList()
        for s in reversed(range(len(stages))):
            layers = []
            n = stages[s]
            cout_last = channels[s - 1] if s > 0 else None
            for i in range(n):
                last = i == n - 1
                if last and s == 0:
                    layers.append(nn.Conv2d(channels[0], classes, 3, padding=1))
                else:
                    layers.append(conv_bn_relu(channels[s], cout_last if last else channels[s]))
            self.decoder.append(nn.Sequential(*layers))
        # Monte-Carlo dropout sites (Bayesian SegNet): after these encoder
        # stages and before the mirrored decoder stages.
        self.dropout_stages = tuple(dropout_stages)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 and dropout_stages else None
        init_convs(self)

    def after_stage(self, s: int, x: torch.Tensor) -> torch.Tensor:
        return x

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decoder_start(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def head(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x, h, w = pad_to_multiple(x, self.multiple)
        indices, sizes, features = [], [], []
        last = len(self.encoder) - 1
        for s, stage in enumerate(self.encoder):
            x = self.after_stage(s, stage(x))
            if self.dropout is not None and s in self.dropout_stages:
                x = self.dropout(x)
            if s < last:
                sizes.append(x.shape[-2:])
                features.append(x)
                x, idx = F.max_pool2d(x, 2, 2, return_indices=True)
                indices.append(idx)
        x = self.bottleneck(x)
        out = self.head(x)
        x = self.decoder_start(x)
        for d, stage in enumerate(self.decoder):
            s = last - d
            if self.dropout is not None and s in self.dropout_stages:
                x = self.dropout(x)
            x = stage(x)
            if s > 0:
                x = F.max_unpool2d(x, indices[s - 1], 2, 2, output_size=sizes[s - 1])
                if self.skips:
                    x = x + features[s - 1]
        out["pixel"] = x[..., :h, :w]
        return out
