"""A two-level U-Net small enough to train in minutes on a CPU.

The contract a her2kit model keeps: ``forward(x)`` takes a normalised batch
(B, 3, H, W) of any size and returns ``{"pixel": logits (B, 3, H, W)}`` for
background, membrane and nucleus; ``options`` holds the constructor arguments
(saved in checkpoints, so her2kit can rebuild the network).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _pair(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyUNet(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.options = {"width": int(width)}
        w = int(width)
        self.down = _pair(3, w)
        self.bottom = _pair(w, 2 * w)
        self.up = _pair(3 * w, w)
        self.head = nn.Conv2d(w, 3, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        skip = self.down(x)
        deep = self.bottom(F.max_pool2d(skip, 2, ceil_mode=True))
        # back to the skip's size exactly: odd sides stay odd
        deep = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return {"pixel": self.head(self.up(torch.cat([skip, deep], dim=1)))}
