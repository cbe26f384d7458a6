"""Plain-PyTorch TLSTM and SPP: the oracle the native kernels are tested against.

Weight layout (shared with the native op, see ``her2kit.ops.tlstm``): sweeps
in the order down, up, right, left; gates in the order i, f, g, o.

- ``w_x`` (4, 4K, C): 1x1 input projection of each sweep.
- ``b_x`` (4, 4K): its bias.
- ``w_h`` (4, 4K, K, 3): width-3 recurrent convolution along the row (a
  ``conv1d`` weight; tap 0 reads the previous state at index n-1, tap 2 at
  n+1, in increasing image row/column index whatever the sweep's direction).
- ``peep`` (4, 3, K): peephole vectors p_i, p_f, p_o.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["tlstm_reference", "spp_reference", "SWEEPS"]

SWEEPS = ("down", "up", "right", "left")


def _to_sweep(x: torch.Tensor, s: int) -> torch.Tensor:
    """View x (B, C, H, W) so that the sweep walks dim 2 from index 0."""
    if s >= 2:
        x = x.transpose(2, 3)
    if s % 2 == 1:
        x = x.flip(2)
    return x


def _from_sweep(h: torch.Tensor, s: int) -> torch.Tensor:
    if s % 2 == 1:
        h = h.flip(2)
    if s >= 2:
        h = h.transpose(2, 3)
    return h


def _down_sweep(
    x: torch.Tensor, w_x: torch.Tensor, b_x: torch.Tensor, w_h: torch.Tensor, peep: torch.Tensor
) -> torch.Tensor:
    """One top-to-bottom sweep; x (B, C, L, N) -> hidden (B, K, L, N)."""
    B, _, L, N = x.shape
    K = w_h.shape[1]
    gx = torch.einsum("oc,bcln->blon", w_x, x) + b_x[:, None]
    h = x.new_zeros(B, K, N)
    c = x.new_zeros(B, K, N)
    p_i, p_f, p_o = (p[:, None] for p in peep)
    out = []
    for t in range(L):
        g = gx[:, t] + F.conv1d(h, w_h, padding=1)
        g_i, g_f, g_g, g_o = g.split(K, 1)
        i = torch.sigmoid(g_i + p_i * c)
        f = torch.sigmoid(g_f + p_f * c)
        c = f * c + i * torch.tanh(g_g)
        o = torch.sigmoid(g_o + p_o * c)
        h = o * torch.tanh(c)
        out.append(h)
    return torch.stack(out, 2)


def tlstm_reference(
    x: torch.Tensor, w_x: torch.Tensor, b_x: torch.Tensor, w_h: torch.Tensor, peep: torch.Tensor
) -> torch.Tensor:
    """Four TLSTM sweeps over x (B, C, H, W) with a Python loop over steps.

    Returns the hidden maps (B, 4K, H, W), channels ordered down, up, right,
    left (K each). Weight layout: see the module docstring.
    """
    outs = [
        _from_sweep(_down_sweep(_to_sweep(x, s), w_x[s], b_x[s], w_h[s], peep[s]), s)
        for s in range(4)
    ]
    return torch.cat(outs, 1)


def spp_reference(x: torch.Tensor, levels: Sequence[int] = (1, 2, 3, 6)) -> torch.Tensor:
    """Spatial pyramid max pooling of x (B, C, H, W) into (B, C, sum n^2).

    Bins use PyTorch's adaptive bounds; levels are concatenated in order,
    row-major within a level.
    """
    return torch.cat([F.adaptive_max_pool2d(x, int(n)).flatten(2) for n in levels], 2)
