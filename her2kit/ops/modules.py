"""nn.Modules for the Her2Net layers: TLSTM and SPP."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .functional import spp, tlstm

__all__ = ["TLSTM", "SPP"]


class TLSTM(nn.Module):
    """Trapezoidal LSTM over a feature map (B, C, H, W) -> (B, out_channels, H, W).

    Four sweeps (down, up, right, left), each with its own weights and
    hidden size ``hidden``; the 4*hidden hidden maps are concatenated and a
    1x1 convolution maps them to ``out_channels``. Forget-gate bias starts
    at 1, h and c at 0, peepholes are per channel.
    """

    def __init__(self, in_channels: int, hidden: int, out_channels: int) -> None:
        super().__init__()
        if in_channels < 1 or hidden < 1 or out_channels < 1:
            raise ValueError(
                f"TLSTM: sizes must be >= 1, got in_channels={in_channels}, "
                f"hidden={hidden}, out_channels={out_channels}"
            )
        K = hidden
        self.in_channels, self.hidden, self.out_channels = in_channels, hidden, out_channels
        self.w_x = nn.Parameter(torch.empty(4, 4 * K, in_channels))
        self.b_x = nn.Parameter(torch.empty(4, 4 * K))
        self.w_h = nn.Parameter(torch.empty(4, 4 * K, K, 3))
        self.peep = nn.Parameter(torch.empty(4, 3, K))
        self.out = nn.Conv2d(4 * K, out_channels, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        K = self.hidden
        nn.init.uniform_(
            self.w_x, -1 / math.sqrt(self.in_channels), 1 / math.sqrt(self.in_channels)
        )
        nn.init.uniform_(self.w_h, -1 / math.sqrt(3 * K), 1 / math.sqrt(3 * K))
        nn.init.uniform_(self.peep, -1 / math.sqrt(K), 1 / math.sqrt(K))
        with torch.no_grad():
            self.b_x.zero_()
            self.b_x[:, K : 2 * K] = 1.0  # forget gate
        self.out.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tlstm(x, self.w_x, self.b_x, self.w_h, self.peep, self.out.weight, self.out.bias)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, hidden={self.hidden}, out_channels={self.out_channels}"


class SPP(nn.Module):
    """Spatial pyramid max pooling: (B, C, H, W) -> (B, C, sum of n^2 over levels)."""

    def __init__(self, levels: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.levels = tuple(int(n) for n in levels)
        if not self.levels or min(self.levels) < 1:
            raise ValueError(f"SPP: levels must be integers >= 1, got {levels}")

    @property
    def bins(self) -> int:
        """Number of bins per channel (sum of n^2)."""
        return sum(n * n for n in self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spp(x, self.levels)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"
