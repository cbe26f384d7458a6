"""U-Net baseline (Ronneberger et al., 2015) with the Her2Net width convention.

Four resolution stages (two 3x3 conv + batch norm + ReLU each, channels
``width`` x 1, 2, 4, 8), 3 max-pools, transposed-conv upsampling and skip
connections by concatenation.
"""

from __future__ import annotations

import torch
from torch import nn

from her2kit.models.blocks import CLASSES, conv_bn_relu, init_convs, pad_to_multiple


class UNet(nn.Module):
    """U-Net: returns {"pixel": (B, 3, H, W) logits}."""

    architecture = "unet"

    def __init__(self, width: int = 8, depth: int = 4):
        super().__init__()
        self.options = {"width": width, "depth": depth}
        self.multiple = 2 ** (depth - 1)
        c = [width * 2 ** i for i in range(depth)]
        self.down = nn.ModuleList()
        cin = 3
        for ch in c:
            self.down.append(nn.Sequential(conv_bn_relu(cin, ch), conv_bn_relu(ch, ch)))
            cin = ch
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for i in reversed(range(depth - 1)):
            self.up.append(nn.ConvTranspose2d(c[i + 1], c[i], 2, stride=2))
            self.merge.append(nn.Sequential(conv_bn_relu(2 * c[i], c[i]), conv_bn_relu(c[i], c[i])))
        self.classifier = nn.Conv2d(c[0], len(CLASSES), 1)
        init_convs(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x, h, w = pad_to_multiple(x, self.multiple)
        skips = []
        for i, stage in enumerate(self.down):
            x = stage(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = self.pool(x)
        for up, merge in zip(self.up, self.merge, strict=True):
            x = merge(torch.cat([skips.pop(), up(x)], dim=1))
        return {"pixel": self.classifier(x)[..., :h, :w]}
