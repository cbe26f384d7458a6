"""Her2Net's staining-pattern head as a scorer, for comparison with the cell-level score.

The paper's network ends in a fully connected softmax over four membrane
staining patterns of the whole patch ("0", "1+", "2+", "3+"). It looks at
the image, not at cells, so this scorer needs the image (at the model's
resolution) and the segmenter; given only a cell table it says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from her2kit.errors import Her2kitError
from her2kit.scoring.rules import SCORES


class PatternScorer:
    """Scorer plugin "her2net-pattern": image -> {"score", "probabilities"} from the pattern head."""

    name = "her2net-pattern"

    def __init__(self, segmenter: Any = None):
        self.segmenter = segmenter

    def __call__(self, cells: Any = None, *, image: np.ndarray | None = None,
                 segmenter: Any = None) -> dict:
        seg = segmenter or self.segmenter
        if image is None or seg is None:
            raise Her2kitError("her2net-pattern scores the image with Her2Net's pattern head; "
                               "it needs image= and segmenter= (a cell table is not enough)")
        probs = np.asarray(seg.predict_pattern(image), dtype=np.float64)
        return {"score": SCORES[int(np.argmax(probs))],
                "probabilities": {s: float(p) for s, p in zip(SCORES, probs, strict=True)}}
