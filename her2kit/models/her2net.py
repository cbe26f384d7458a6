"""Her2Net (Saha & Chakraborty, IEEE TIP 2018) as DESIGN.md describes it.

Encoder: 16 conv layers in 4 stages (3x3, batch norm, ReLU), 3 max-pools
whose indices are kept, 2 pyramid context modules (SPP) after stages 3 and
4, and a TLSTM at the bottleneck. Decoder: a TLSTM, 16 deconvolution layers
in 4 stages and 3 unpooling layers that put values back at the kept
max-pool positions (so thin membranes come back where they were). Heads: a
per-pixel 3-class classifier (background, membrane, nucleus) at the input
size, and SPP + fully connected layers over the 4 membrane-staining patterns
of the patch (any patch size).

``width`` is the first stage's channel count (doubling per stage);
``tlstm=False`` / ``spp=False`` build the ablations. ``skips`` (default on;
not in the paper) adds each encoder stage's features to the unpooled decoder
features of the same stage, which makes the 32-layer network trainable on a
CPU budget; ``skips=False`` is the paper's plain conv/deconv network.
"""

from __future__ import annotations

import torch
from torch import nn

from her2kit.models.blocks import (
    CLASSES,
    PATTERNS,
    IndexedEncoderDecoder,
    PatternHead,
    PyramidContext,
    ResidualTLSTM,
)


class Her2Net(IndexedEncoderDecoder):
    """Her2Net: returns {"pixel": (B, 3, H, W) logits, "pattern": (B, 4) logits}."""

    architecture = "her2net"

    def __init__(self, width: int = 8, tlstm: bool = True, spp: bool = True,
                 dropout: float = 0.0, skips: bool = True, native_ops: bool = True):
        super().__init__(width, stages=(4, 4, 4, 4), classes=len(CLASSES),
                         dropout=dropout, dropout_stages=(3,), skips=skips)
        self.options = {"width": width, "tlstm": tlstm, "spp": spp, "dropout": dropout, "skips": skips}
        c = self.channels
        self.context_stages = (2, 3)
        self.context = nn.ModuleDict(
            {str(s): PyramidContext(c[s], native=native_ops) for s in self.context_stages} if spp else {}
        )
        hidden = max(c[-1] // 4, 4)
        self.enc_tlstm = ResidualTLSTM(c[-1], hidden) if tlstm else None
        self.dec_tlstm = ResidualTLSTM(c[-1], hidden) if tlstm else None
        self.pattern = PatternHead(c[-1], hidden=c[-1], patterns=len(PATTERNS), native=native_ops and spp)

    def after_stage(self, s: int, x: torch.Tensor) -> torch.Tensor:
        module = self.context[str(s)] if str(s) in self.context else None
        return module(x) if module is not None else x

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc_tlstm(x) if self.enc_tlstm is not None else x

    def decoder_start(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec_tlstm(x) if self.dec_tlstm is not None else x

    def head(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pattern": self.pattern(x)}
