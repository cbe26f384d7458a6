"""SegNet and Bayesian SegNet baselines (Badrinarayanan et al.; Kendall et al.).

An encoder-decoder whose decoder upsamples with the encoder's max-pool
indices. Same ``width`` convention as Her2Net (first-stage channels, doubling
per stage; 3 pools). Bayesian SegNet adds dropout around the central
stages and keeps it on at test time: :meth:`BayesianSegNet.predict_mc`
averages Monte-Carlo samples and returns a per-pixel uncertainty.
"""

from __future__ import annotations

import torch

from her2kit.models.blocks import IndexedEncoderDecoder


class SegNet(IndexedEncoderDecoder):
    """SegNet: returns {"pixel": (B, 3, H, W) logits}."""

    architecture = "segnet"

    def __init__(self, width: int = 8):
        super().__init__(width, stages=(2, 2, 3, 3))
        self.options = {"width": width}


class BayesianSegNet(IndexedEncoderDecoder):
    """Bayesian SegNet: SegNet with Monte-Carlo dropout (p=0.5) in the central stages."""

    architecture = "bayesian-segnet"

    def __init__(self, width: int = 8, dropout: float = 0.5):
        super().__init__(width, stages=(2, 2, 3, 3), dropout=dropout, dropout_stages=(2, 3))
        self.options = {"width": width, "dropout": dropout}

    @torch.no_grad()
    def predict_mc(self, x: torch.Tensor, samples: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """Monte-Carlo dropout prediction of a normalised batch (B, 3, H, W).

        Batch norm stays in eval mode; only dropout samples. Returns the mean
        softmax probabilities (B, 3, H, W) and the predictive entropy of that
        mean (B, H, W), in nats (0 = certain, ln 3 = uniform).
        """
        was_training = self.training
        self.eval()
        if self.dropout is not None:
            self.dropout.train()
        try:
            mean = None
            for _ in range(samples):
                p = torch.softmax(self(x)["pixel"], dim=1)
                mean = p if mean is None else mean + p
            mean = mean / samples
        finally:
            self.train(was_training)
        entropy = -(mean * torch.log(mean.clamp_min(1e-8))).sum(dim=1)
        return mean, entropy
